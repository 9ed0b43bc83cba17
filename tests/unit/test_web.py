"""The addresses people open: reports under the published folder, the MLflow UI, and what
``scripts/serve`` binds."""

from __future__ import annotations

from pathlib import Path

import pytest

from visionloop.settings import SettingsError, load_settings
from visionloop.web import mlflow_ui_url, report_url, serve_plan


def test_a_report_is_linked_on_the_reports_server_never_as_a_file(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, web={"reports_url": "http://reports.lan:9000/"})
    page = settings.data_docs_dir / "validations" / "images batch" / "b1.html"
    assert report_url(settings, page) == (
        "http://reports.lan:9000/data-docs/validations/images%20batch/b1.html"
    )
    assert report_url(settings, settings.reports_dir / "drift" / "x.html").startswith("http://")


def test_a_file_outside_the_published_folder_is_refused(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    with pytest.raises(ValueError, match="not under the published reports folder"):
        report_url(settings, settings.secrets_dir / "label-studio-token")
    with pytest.raises(ValueError, match="not under the published reports folder"):
        report_url(settings, settings.reports_dir / ".." / "secrets" / "token")


def test_serve_binds_each_urls_host_and_port_and_the_settings_store(tmp_path: Path) -> None:
    plan = serve_plan(load_settings(data_home=tmp_path))
    assert plan == {
        "REPORTS_DIR": str(tmp_path / "reports"),
        "REPORTS_HOST": "127.0.0.1",
        "REPORTS_PORT": "8090",
        "REPORTS_URL": "http://127.0.0.1:8090",
        "MLFLOW_STORE": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "MLFLOW_HOST": "127.0.0.1",
        "MLFLOW_PORT": "5000",
        "MLFLOW_UI_URL": "http://127.0.0.1:5000",
    }


def test_a_tracking_server_is_its_own_ui_and_none_is_started(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, mlflow_tracking_uri="http://mlflow.lan:5000/")
    assert mlflow_ui_url(settings) == "http://mlflow.lan:5000"
    assert serve_plan(settings)["MLFLOW_STORE"] == ""


def test_a_reports_url_must_be_http() -> None:
    with pytest.raises(SettingsError, match="reports_url"):
        load_settings(web={"reports_url": "file:///srv/reports"})
