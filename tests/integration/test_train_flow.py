"""The train flow end to end: real Prefect (ephemeral API), torchrun, MLflow on SQLite."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.train import train
from tests import lakes
from visionloop.parameters import TrainParameters
from visionloop.training.pipeline import champion_tags

pytestmark = pytest.mark.slow

TINY_TRAINING = {
    "model_name": "resnet10t",
    "pretrained": "none",
    "input_size": 32,
    "epochs": 1,
    "batch_size": 16,
    "num_workers": 0,
    "nproc_per_node": 1,
    "rand_augment": None,
}


def test_trains_promotes_then_skips_unchanged_data(tmp_path: Path) -> None:
    settings = lakes.tiny_lake(
        tmp_path / "home",
        labelled=160,
        unlabelled=10,
        classes=(1, 8),  # trouser vs bag: learnable in one short epoch
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
    )
    config = settings.save(tmp_path / "config")
    params = TrainParameters(config=str(config))

    first = train(params)
    assert first["trained"]
    assert first["promotion"]["promoted"]
    version, tags = champion_tags(settings)
    assert version == first["challenger"]["version"]
    assert tags["lineage.train_hash"]

    second = train(params)
    assert second == {"trained": False, "skip_reason": second["skip_reason"]}
    assert "unchanged since champion" in second["skip_reason"]

    rows = lakes.image_rows(20, size=32, classes=(1, 8), offset=5000)
    lakes.write_images_table(settings.images_dir, rows, batch_id="b-new")
    third = train(TrainParameters(config=str(config), promote=False))
    assert third["trained"]
    assert third["challenger"]["version"] != version
