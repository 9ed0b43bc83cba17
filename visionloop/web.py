"""The pages people open in a browser: reports served over HTTP, never ``file://`` links.

Everything a run writes for people to read (Great Expectations Data Docs, Evidently drift
reports, the leakage pairs) lives under ``settings.reports_dir``; ``make serve`` publishes
that folder at ``web.reports_url`` and the MLflow UI at ``web.mlflow_ui_url``, and Prefect
artifacts and alerts link there (:func:`report_url`). ``python -m visionloop.web`` prints
what ``scripts/serve`` starts, as shell assignments.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from urllib.parse import quote, urlsplit

from visionloop.settings import Settings, load_settings


def report_url(settings: Settings, path: Path) -> str:
    """The address of ``path`` (a file under ``settings.reports_dir``) on the reports server."""
    root = settings.reports_dir.resolve()
    try:
        relative = Path(path).resolve().relative_to(root)
    except ValueError:
        raise ValueError(
            f"{path} is not under the published reports folder {root}; write reports there "
            "so that web.reports_url serves them"
        ) from None
    return f"{settings.web.reports_url.rstrip('/')}/{quote(relative.as_posix())}"


def mlflow_ui_url(settings: Settings) -> str:
    """The MLflow UI: the tracking server itself, or the UI ``make serve`` starts on the
    local store."""
    uri = settings.resolved_mlflow_uri
    return uri.rstrip("/") if _is_http(uri) else settings.web.mlflow_ui_url.rstrip("/")


def serve_plan(settings: Settings) -> dict[str, str]:
    """What ``scripts/serve`` starts: the reports folder and the MLflow store, and the host and
    port each server binds (those of its URL). ``MLFLOW_STORE`` is empty when the tracking
    store is a server of its own, whose UI is already there."""
    reports, ui = urlsplit(settings.web.reports_url), urlsplit(settings.web.mlflow_ui_url)
    store = settings.resolved_mlflow_uri
    return {
        "REPORTS_DIR": str(settings.reports_dir),
        "REPORTS_HOST": reports.hostname or "127.0.0.1",
        "REPORTS_PORT": str(reports.port or 80),
        "REPORTS_URL": settings.web.reports_url,
        "MLFLOW_STORE": "" if _is_http(store) else store,
        "MLFLOW_HOST": ui.hostname or "127.0.0.1",
        "MLFLOW_PORT": str(ui.port or 80),
        "MLFLOW_UI_URL": mlflow_ui_url(settings),
    }


def _is_http(uri: str) -> bool:
    return uri.startswith(("http://", "https://"))


if __name__ == "__main__":
    for key, value in serve_plan(load_settings()).items():
        sys.stdout.write(f"{key}={shlex.quote(value)}\n")
