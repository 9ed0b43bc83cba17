"""Train → calibrate → evaluate → register: one challenger from the lake, no Prefect inside.

The Prefect tasks in ``tasks/train.py`` wrap these functions with retries and logging.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow.exceptions import MlflowException

from visionloop.settings import Settings
from visionloop.training.calibration import CalibrationReport, calibrate
from visionloop.training.evaluate import EvalReport, collect_logits, evaluate_split
from visionloop.training.launch import TrainingOutcome, run_training
from visionloop.training.lineage import lake_snapshot
from visionloop.training.predict import ImageClassifier
from visionloop.training.promotion import CHAMPION, alias_version
from visionloop.training.registry import (
    RegisteredVersion,
    client_for,
    end_run,
    ensure_reachable,
    log_and_register,
    start_training_run,
)

TRAIN_HASH_TAG = "lineage.train_hash"


@dataclass(frozen=True)
class Challenger:
    """A trained, calibrated, registered model and how it scored."""

    version: RegisteredVersion
    outcome: TrainingOutcome
    calibration: CalibrationReport
    test: EvalReport

    def summary(self) -> dict[str, Any]:
        return {
            "version": self.version.version,
            "run_id": self.version.run_id,
            "test_accuracy": round(self.test.accuracy, 4),
            "test_macro_f1": round(self.test.macro_f1, 4),
            "temperature": round(self.calibration.temperature, 4),
            "ece_before": round(self.calibration.ece_before, 4),
            "ece_after": round(self.calibration.ece_after, 4),
            "epochs": len(self.outcome.history),
            "stopped_early": self.outcome.stopped_early,
        }


def champion_tags(settings: Settings) -> tuple[str | None, dict[str, str]]:
    """The champion's version and its tags (lineage, test metrics), or ``(None, {})``."""
    ensure_reachable(settings.resolved_mlflow_uri)
    client = client_for(settings)
    name = settings.registered_model_name
    with contextlib.suppress(MlflowException):
        client.get_registered_model(name)
        version = alias_version(client, name, CHAMPION)
        if version is not None:
            return version, dict(client.get_model_version(name, version).tags)
    return None, {}


def champion_train_hash(settings: Settings) -> tuple[str | None, str | None]:
    """The champion's version and the training-split hash it was trained on (or Nones)."""
    version, tags = champion_tags(settings)
    return version, tags.get(TRAIN_HASH_TAG)


def skip_reason(settings: Settings, snapshot: dict[str, Any]) -> str | None:
    """Why training should not run now, or None when it should."""
    if not snapshot.get("train_rows"):
        return "the lake has no labelled training images"
    version, trained_on = champion_train_hash(settings)
    if trained_on and trained_on == snapshot["train_hash"]:
        return (
            f"training split unchanged since champion v{version} was trained "
            f"(content hash {trained_on[:12]})"
        )
    return None


def train_challenger(
    settings: Settings,
    output_dir: Path,
    snapshot: dict[str, Any],
    expectations: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Challenger:
    """Fine-tune on the lake, fit the temperature on val, evaluate on test, register."""
    run_id = start_training_run(settings, snapshot, expectations)
    try:
        outcome = run_training(settings, output_dir, mlflow_run_id=run_id, log=log)
        calibration, test = calibrate_and_test(settings.images_dir, outcome.model_path)
    except BaseException:
        with contextlib.suppress(Exception):
            end_run(settings, run_id, "FAILED")
        raise
    version = log_and_register(
        settings, run_id, outcome.model_path, calibration=calibration, test_report=test
    )
    return Challenger(version, outcome, calibration, test)


def calibrate_and_test(images_dir: Path, model_path: Path) -> tuple[CalibrationReport, EvalReport]:
    """Fit the temperature on the val split, then score the test split with it."""
    classifier = ImageClassifier.load(model_path)
    logits, targets, _ = collect_logits(classifier.logits, images_dir, classifier.labels, "val")
    calibration = calibrate(logits, targets)
    classifier.temperature = calibration.temperature
    test = evaluate_split(classifier.predict_proba, images_dir, classifier.labels)
    return calibration, test


def snapshot_lake(settings: Settings) -> dict[str, Any]:
    """The lake's lineage snapshot (batch ids, row counts, training-split hash)."""
    return lake_snapshot(settings.images_dir)
