"""The train flow's rules, end to end: real Prefect (ephemeral API), torchrun, MLflow on SQLite.

force always trains a new version; a rolled-back or rejected version is never promoted
again; an unchanged training split skips with its reason; a changed recipe or code trains.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests import lakes
from visionloop.flows.train import TrainResult, train
from visionloop.parameters import TrainParameters
from visionloop.registry.promotion import rollback
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings

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
#: A learning rate that leaves the model at its random start: a reliably bad model.
FROZEN = {**TINY_TRAINING, "lr": 1e-9}


def _run(settings: Settings, tmp_path: Path, **params: object) -> TrainResult:
    config = settings.save(tmp_path / f"config-{len(list(tmp_path.glob('config-*')))}")
    return train(TrainParameters(config=str(config), **params))


def _with(settings: Settings, training: dict) -> Settings:
    return settings.model_copy(update={"training": settings.training.model_validate(training)})


def test_force_rollback_rejection_and_recipe_rules(tmp_path: Path) -> None:
    good = lakes.tiny_lake(
        tmp_path / "home",
        labelled=160,
        unlabelled=10,
        classes=(1, 8),  # trouser vs bag: learnable in a few short epochs
        # One epoch (macro-F1 ~0.5 vs the random model's ~0.35 on ~24 test images) is not a
        # significant gain for the paired bootstrap; four are.
        training={**TINY_TRAINING, "epochs": 4},
        # A random model may predict one class only: its recall there must not block v2.
        promotion={"first_model_floor": 0.0, "max_recall_drop": 1.0},
    )
    frozen = _with(good, FROZEN)
    tracking = Tracking.connect(good)

    first = _run(frozen, tmp_path)  # v1: the bad model, promoted as the first model
    assert first.trained and first.promotion.decision.promoted
    assert first.plan.reason == "no champion yet"

    unchanged = _run(frozen, tmp_path)
    assert not unchanged.trained and unchanged.plan.action == "skip"
    assert unchanged.promotion is None and unchanged.champion.version == "1"
    assert "unchanged" in unchanged.plan.reason
    assert "since champion v1" in unchanged.plan.reason

    better = _run(good, tmp_path)  # a changed recipe trains, and v2 beats v1
    assert better.plan.reason == "recipe changed since champion v1"
    assert better.promotion.decision.promoted, better.promotion.decision
    assert "95% CI" in better.promotion.decision.reason  # a significant gain, not noise
    assert better.promotion.champion_after == better.champion.version == "2"

    rollback(tracking, good)  # v2 out, v1 back
    after_rollback = _run(good, tmp_path)
    assert not after_rollback.trained
    assert "v2, which was rolled back" in after_rollback.plan.reason
    assert tracking.alias_version("champion") == "1"

    forced = _run(good, tmp_path, force=True)  # force trains a new version, never the cache
    assert forced.trained and forced.challenger.version.version == "3"
    assert forced.plan.reason == "forced: train a new version"
    assert forced.promotion.decision.promoted and tracking.alias_version("champion") == "3"

    worse = _run(_with(good, {**FROZEN, "lr": 2e-9}), tmp_path)  # a worse challenger
    assert worse.trained and not worse.promotion.decision.promoted
    assert "does not beat" in worse.promotion.decision.reason
    assert tracking.alias_version("champion") == "3"
    again = _run(_with(good, {**FROZEN, "lr": 2e-9}), tmp_path)
    assert not again.trained and "(rejected:" in again.plan.reason

    # v2 and v3 as if older code had trained them: the same split and recipe train again.
    for version in ("2", "3"):
        for tag in ("lineage.code_hash", "lineage.fingerprint"):
            tracking.client.set_model_version_tag(good.registered_model_name, version, tag, "old")
    new_code = _run(good, tmp_path, promote=False)
    assert new_code.trained and new_code.plan.reason == "code changed since champion v3"
    assert new_code.promotion is None


def test_new_labelled_images_train_a_new_challenger(tmp_path: Path) -> None:
    settings = lakes.tiny_lake(
        tmp_path / "home",
        labelled=160,
        unlabelled=10,
        classes=(1, 8),
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
    )
    first = _run(settings, tmp_path)
    assert first.trained
    rows = lakes.image_rows(20, size=32, classes=(1, 8), offset=5000)
    lakes.commit_rows(settings, rows, batch_id="b-new")
    second = _run(settings, tmp_path, promote=False)
    assert second.trained and second.challenger.version.version == "2"
    assert second.plan.reason == "training split changed since champion v1"
    assert second.snapshot_id != first.snapshot_id
