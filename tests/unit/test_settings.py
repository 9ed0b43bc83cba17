"""Settings: sources, precedence, validation, saving, and secrets kept out of what is saved."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from visionloop.labelling.server import admin_password, server_environment, token
from visionloop.settings import SettingsError, load_settings


def test_defaults_resolve_under_data_home(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    assert settings.spark_master == "local[*]"
    assert settings.images_dir == tmp_path / "lake" / "images"
    assert settings.resolved_mlflow_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"


def test_environment_overrides_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text(
        yaml.safe_dump({"image_size": 32, "split": {"train": 0.6, "val": 0.2, "test": 0.2}})
    )
    monkeypatch.setenv("VISIONLOOP_IMAGE_SIZE", "48")
    settings = load_settings(config)
    assert settings.image_size == 48
    assert settings.split.train == 0.6


def test_bad_split_names_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VISIONLOOP_SPLIT__TRAIN", "0.5")
    with pytest.raises(SettingsError, match="must sum to 1"):
        load_settings()


def test_unknown_key_and_missing_file_are_errors(tmp_path: Path) -> None:
    config = tmp_path / "settings.yaml"
    config.write_text("imagesize: 32\n")
    with pytest.raises(SettingsError, match="imagesize"):
        load_settings(config)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.yaml")


def test_saved_settings_round_trip(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, image_size=40)
    saved = settings.save(tmp_path / "run")
    assert load_settings(saved) == settings


def _visionloop_settings(config: Path, env: dict[str, str]) -> str:
    """``visionloop settings`` in a process of its own; its standard output."""
    result = subprocess.run(
        [sys.executable, "-m", "visionloop.cli", "settings", "--config", str(config)],
        capture_output=True,
        text=True,
        env={key: value for key, value in os.environ.items() if not key.startswith("VISIONLOOP_")}
        | env,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_tracking_password_is_neither_printed_nor_saved(tmp_path: Path) -> None:
    uri = "https://alice:s3cret@mlflow.example:5000/path"
    config = tmp_path / "settings.yaml"
    config.write_text(yaml.safe_dump({"data_home": str(tmp_path), "mlflow_tracking_uri": uri}))
    printed = _visionloop_settings(config, {})
    settings = load_settings(config)
    saved = settings.save(tmp_path / "run")
    for text in (printed, saved.read_text()):
        assert "s3cret" not in text
        data = yaml.safe_load(text)
        assert data["mlflow_tracking_uri"] == "https://alice@mlflow.example:5000/path"
        assert data["mlflow_tracking_password"] == {"env": "VISIONLOOP_MLFLOW_TRACKING_PASSWORD"}
    assert settings.resolved_mlflow_uri == uri  # clients still authenticate
    assert "s3cret" not in repr(settings) and "s3cret" not in str(settings.model_dump())

    with pytest.raises(SettingsError, match="VISIONLOOP_MLFLOW_TRACKING_PASSWORD, which is unset"):
        load_settings(saved)


def test_saved_secrets_reload_from_the_environment_never_as_asterisks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "settings.yaml"
    labelling = {"token": "tok-123", "admin_password": {"env": "TEAM_LS_PASSWORD"}}
    config.write_text(yaml.safe_dump({"data_home": str(tmp_path), "labelling": labelling}))
    monkeypatch.setenv("TEAM_LS_PASSWORD", "pw-456")
    settings = load_settings(config)
    assert settings.secret_environment() == {
        "VISIONLOOP_LABELLING__TOKEN": "tok-123",
        "TEAM_LS_PASSWORD": "pw-456",
    }
    saved = settings.save(tmp_path / "run").read_text()
    assert "tok-123" not in saved and "pw-456" not in saved and "***" not in saved
    assert yaml.safe_load(saved)["labelling"]["token"] == {"env": "VISIONLOOP_LABELLING__TOKEN"}

    # Where the environment supplies them (a training rank, another node), the saved file works.
    monkeypatch.setenv("VISIONLOOP_LABELLING__TOKEN", "tok-123")
    reloaded = load_settings(tmp_path / "run" / "settings.yaml")
    assert reloaded.labelling.token.get_secret_value() == "tok-123"
    assert reloaded.labelling.admin_password.get_secret_value() == "pw-456"
    assert reloaded == settings

    monkeypatch.delenv("TEAM_LS_PASSWORD")
    with pytest.raises(SettingsError, match="TEAM_LS_PASSWORD, which is unset; set TEAM_LS"):
        load_settings(tmp_path / "run" / "settings.yaml")


def test_label_studio_admin_password_is_its_own_secret(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    api_token, password = token(settings), admin_password(settings)
    assert api_token != password and len(password) == 40
    assert (token(settings), admin_password(settings)) == (api_token, password)  # kept
    for name in ("label-studio-token", "label-studio-password"):
        assert (settings.secrets_dir / name).stat().st_mode & 0o777 == 0o600
    environment = server_environment(settings)
    assert environment["LABEL_STUDIO_PASSWORD"] == password
    assert environment["LABEL_STUDIO_USER_TOKEN"] == api_token
    configured = load_settings(data_home=tmp_path, labelling={"admin_password": "chosen"})
    assert server_environment(configured)["LABEL_STUDIO_PASSWORD"] == "chosen"
