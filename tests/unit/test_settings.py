"""Settings: sources, precedence, validation and saving."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

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
