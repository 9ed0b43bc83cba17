"""Plan → train → calibrate → evaluate → register: one challenger from a lake snapshot.

:func:`plan_training` states the rules for whether to train, in one place:

* no labelled training images → skip;
* ``force`` → always train a new version;
* a registered version has the same training fingerprint (training split, recipe, code):
  the champion → skip, nothing changed; rolled back or rejected → skip, training again
  would make the same model (``force`` overrides); registered but never decided (its
  promotion did not run) → reuse it as the challenger;
* otherwise → train.

The Prefect tasks in ``visionloop.tasks.train`` wrap these functions with retries.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.lineage import FINGERPRINT_TAG, Fingerprint
from visionloop.registry.promotion import DECISION_TAG, ROLLED_BACK_TAG, log_test_evaluation
from visionloop.registry.served_model import RegisteredVersion, log_and_register
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.training.calibration import CalibrationReport, calibrate
from visionloop.training.classifier import ImageClassifier
from visionloop.training.evaluate import EvalReport, Evaluation, collect_logits, evaluate_images
from visionloop.training.launch import TrainingOutcome, run_training

Action = Literal["train", "skip", "reuse"]


@dataclass(frozen=True)
class TrainingPlan:
    """What a run will do about training, why, and the fingerprint it decided on."""

    action: Action
    reason: str
    fingerprint: Fingerprint
    version: str | None = None  # the registered version the decision refers to


def plan_training(
    tracking: Tracking, settings: Settings, snapshot: LakeSnapshot, *, force: bool = False
) -> TrainingPlan:
    """Whether to train on ``snapshot`` now; the rules are in the module docstring."""
    fingerprint = Fingerprint.of(snapshot, settings)
    if not snapshot.train_rows:
        return TrainingPlan("skip", "the lake has no labelled training images", fingerprint)
    if force:
        return TrainingPlan("train", "forced: train a new version", fingerprint)
    same = tracking.versions_tagged(FINGERPRINT_TAG, fingerprint.value)
    if not same:
        return TrainingPlan("train", _what_changed(tracking, fingerprint), fingerprint)
    return _plan_for_existing(tracking, fingerprint, same)


def _plan_for_existing(
    tracking: Tracking, fingerprint: Fingerprint, versions: list[str]
) -> TrainingPlan:
    champion = tracking.alias_version(CHAMPION)
    unchanged = f"training split, recipe and code unchanged (fingerprint {fingerprint.value[:12]})"
    if champion in versions:
        return TrainingPlan(
            "skip", f"{unchanged} since champion v{champion}", fingerprint, champion
        )
    latest = versions[-1]
    tags = tracking.version_tags(latest)
    if tags.get(ROLLED_BACK_TAG) == "true":
        reason = f"{unchanged} since v{latest}, which was rolled back; --force trains anyway"
        return TrainingPlan("skip", reason, fingerprint, latest)
    if DECISION_TAG in tags:
        verdict = tags[DECISION_TAG]
        reason = f"{unchanged} since v{latest} ({verdict}: {tags.get('promotion.reason', '')})"
        return TrainingPlan("skip", reason, fingerprint, latest)
    reason = f"v{latest} was trained on the same fingerprint but never decided; promoting it"
    return TrainingPlan("reuse", reason, fingerprint, latest)


def _what_changed(tracking: Tracking, fingerprint: Fingerprint) -> str:
    champion = tracking.alias_version(CHAMPION)
    if champion is None:
        return "no champion yet"
    tags = tracking.version_tags(champion)
    parts = {"training split": "train_hash", "recipe": "recipe_hash", "code": "code_hash"}
    changed = [
        part
        for part, field in parts.items()
        if tags.get(f"lineage.{field}") != getattr(fingerprint, field)
    ]
    return f"{', '.join(changed) or 'fingerprint'} changed since champion v{champion}"


@dataclass(frozen=True)
class Challenger:
    """A trained, calibrated, registered model and how it scored."""

    outcome: TrainingOutcome
    version: RegisteredVersion
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


def train_challenger(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    plan: TrainingPlan,
    output_dir: Path,
    expectations: dict[str, Any] | None = None,
    log: Callable[[str], None] = print,
) -> Challenger:
    """Fine-tune on the snapshot, fit the temperature on val, evaluate on test, register."""
    champion = tracking.champion()
    before = champion.annotator_labels if champion else 0
    tags = {
        "visionloop.plan": plan.reason,
        "lineage.annotator_labels": str(snapshot.annotator_labels),
        "lineage.annotator_labels_since_champion": str(snapshot.annotator_labels - before),
    }
    run_id = tracking.start_training_run(settings, snapshot, plan.fingerprint, expectations, tags)
    try:
        outcome = run_training(settings, output_dir, snapshot, mlflow_run_id=run_id, log=log)
    except BaseException:
        with contextlib.suppress(Exception):
            tracking.end_run(run_id, "FAILED")
        raise
    return Challenger(outcome, *register_trained(tracking, snapshot, run_id, outcome.model_path))


def register_trained(
    tracking: Tracking, snapshot: LakeSnapshot, run_id: str, model_path: Path
) -> tuple[RegisteredVersion, CalibrationReport, EvalReport]:
    """Calibrate and test a trained ``model.pt`` on the snapshot, then log and register it.

    The per-image test predictions are logged too (keyed by image_id), for the promotion's
    paired test. The version carries its run's lineage tags; the run is marked FAILED if
    anything fails.
    """
    try:
        calibration, evaluation = calibrate_and_evaluate(snapshot, model_path)
        log_test_evaluation(tracking, run_id, evaluation.predictions, snapshot)
        test = evaluation.report
    except BaseException:
        with contextlib.suppress(Exception):
            tracking.end_run(run_id, "FAILED")
        raise
    run_tags = tracking.client.get_run(run_id).data.tags
    lineage = {
        key: value for key, value in run_tags.items() if key.startswith(("lineage.", "git."))
    }
    version = log_and_register(
        tracking,
        run_id,
        model_path,
        calibration=calibration,
        test_report=test,
        version_tags=lineage,
    )
    return version, calibration, test


def calibrate_and_test(
    snapshot: LakeSnapshot, model_path: Path
) -> tuple[CalibrationReport, EvalReport]:
    """Fit the temperature on the snapshot's val split, then score its test split with it."""
    calibration, evaluation = calibrate_and_evaluate(snapshot, model_path)
    return calibration, evaluation.report


def calibrate_and_evaluate(
    snapshot: LakeSnapshot, model_path: Path
) -> tuple[CalibrationReport, Evaluation]:
    """:func:`calibrate_and_test`, keeping the per-image test predictions."""
    classifier = ImageClassifier.load(model_path)
    logits, targets = collect_logits(classifier.logits, snapshot, classifier.labels, "val")
    calibration = calibrate(logits, targets)
    classifier.temperature = calibration.temperature
    return calibration, evaluate_images(classifier.predict_proba, snapshot, classifier.labels)
