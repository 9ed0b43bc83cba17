"""The nightly flow in-process: Spark ingest → GX gate → torchrun training → promotion."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.nightly import nightly
from tests.integration.test_train_flow import TINY_TRAINING
from visionloop.landing import LandingSource
from visionloop.parameters import SAMPLE_DIR, NightlyParameters
from visionloop.settings import load_settings
from visionloop.training.pipeline import champion_tags

pytestmark = pytest.mark.slow


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    for name in ("trouser", "bag"):
        (landing / name).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / "labelled" / name).glob("*.png"))[:60]:
            shutil.copy(image, landing / name)
    return landing


def test_nightly_ingests_trains_promotes_then_skips(tmp_path: Path) -> None:
    settings = load_settings(
        data_home=tmp_path / "home",
        spark_master="local[2]",
        image_size=32,
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
    )
    config = settings.save(tmp_path / "config")
    source = LandingSource(path=str(_landing(tmp_path)), layout="imagefolder")
    params = NightlyParameters(sources=[source], config=str(config))

    first = nightly(params)
    assert first["ingest"]["batch"]["written"] == 120
    assert first["ingest"]["gate"]["passed"]
    assert first["train"]["promotion"]["promoted"]
    version, tags = champion_tags(settings)
    assert version == first["train"]["challenger"]["version"]
    assert tags["lineage.expectations.passed"] == "true"
    assert first["ingest"]["batch"]["batch_id"] in tags["lineage.batch_ids"]

    second = nightly(params)
    assert second["ingest"]["batch"]["duplicates"] == 120
    assert not second["train"]["trained"]
    assert "unchanged since champion" in second["train"]["skip_reason"]
