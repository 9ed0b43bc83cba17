"""The champion/challenger gate, alias moves, and rollback.

:func:`promotion_decision` is pure: two :class:`Evaluation` on the same frozen test split and the
policy in, a :class:`Decision` out. A challenger wins only on a significant gain: the
paired bootstrap interval of the primary metric's delta
(:func:`~visionloop.registry.significance.paired_bootstrap`) must lie above
``min_improvement``, and no class's recall may drop significantly too far (its own paired
interval, :func:`~visionloop.registry.significance.recall_drop_lows`).

:func:`promote` evaluates both registered models on the test split of the run's lake
snapshot (a version whose run logged its per-image test predictions on that very snapshot
is read back instead of scored again), decides, records the decision, its interval and the
paired per-image predictions on the challenger version and its run, then moves the aliases
(``champion`` to the challenger, ``previous-champion`` to the old champion).
:func:`rollback` undoes the last promotion.

Promotions and rollbacks of one registered model are serialised by a lock under the data
home, and idempotent: a version's recorded decision is final. A retry after the aliases
moved returns that decision (finishing an interrupted alias move if nothing changed since),
and a version that was rolled back or rejected is never promoted by a later run.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionloop import locks
from visionloop.alerts import emit_rollback
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.served_model import predict_proba_fn
from visionloop.registry.significance import PairedDelta, paired_bootstrap, recall_drop_lows
from visionloop.registry.tracking import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Tracking,
    now_iso,
)
from visionloop.settings import PromotionSettings, Settings
from visionloop.training.evaluate import (
    SUPPORTED_METRICS,
    EvalReport,
    Evaluation,
    ImagePredictions,
    evaluate_images,
)

# Float noise tolerance: a delta of 0.00999999 still "meets" min_improvement = 0.01.
EPSILON = 1e-9


class PromotionError(RuntimeError):
    """Promotion could not be carried out; the message says why."""


class NoPreviousChampionError(PromotionError):
    """Rollback asked for, but there is no ``previous-champion`` to restore."""


@dataclass(frozen=True)
class Decision:
    """Whether the challenger becomes champion, why, and the numbers behind it."""

    promoted: bool
    reason: str
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def rows(self) -> list[dict[str, Any]]:
        """One row per check, for a Prefect table artifact."""
        numbers = self.numbers
        metric = numbers.get("metric", "?")
        rows: list[dict[str, Any]] = []
        if numbers.get("champion") is None:
            floor = numbers.get("first_model_floor")
            rows.append(
                {
                    "check": f"{metric} >= first-model floor",
                    "challenger": numbers.get("challenger"),
                    "champion": None,
                    "threshold": floor,
                    "passed": self.promoted,
                }
            )
            return rows
        rows.append(
            {
                "check": _metric_check(numbers),
                "challenger": numbers["challenger"],
                "champion": numbers["champion"],
                "threshold": numbers["min_improvement"],
                "passed": numbers["metric_passed"],
            }
        )
        limit, failed = numbers["max_recall_drop"], numbers.get("recall_drops_over_limit", {})
        for label, pair in numbers.get("recalls", {}).items():
            challenger, champion = pair
            rows.append(
                {
                    "check": f"recall[{label}] drop not significantly above max_recall_drop",
                    "challenger": challenger,
                    "champion": champion,
                    "threshold": limit,
                    "passed": label not in failed,
                }
            )
        return rows


def _metric_check(numbers: dict[str, Any]) -> str:
    """The primary-metric row's check, naming the interval (decisions recorded before the
    paired bootstrap have none)."""
    metric, interval = numbers.get("metric", "?"), numbers.get("delta_ci")
    if interval is None:
        return f"{metric} improves by >= min_improvement"
    return (
        f"{metric} delta {numbers['delta']:+.4f}, {numbers['confidence']:.0%} CI "
        f"[{interval[0]:+.4f}, {interval[1]:+.4f}] ({numbers['bootstrap_resamples']} paired "
        f"resamples of {numbers['paired_images']} images, seed {numbers['bootstrap_seed']}) "
        "lies above min_improvement"
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(float(value), 6)


def _decide_first_model(metric: str, value: float, n: int, floor: float) -> Decision:
    promoted = value + EPSILON >= floor
    numbers = {
        "metric": metric,
        "challenger": _round(value),
        "champion": None,
        "first_model_floor": floor,
        "n": n,
    }
    verdict = "clears" if promoted else "is below"
    return Decision(
        promoted, f"first model: {metric} {value:.4f} {verdict} the floor {floor:.4f}", numbers
    )


def _recall_drops(
    challenger: EvalReport, champion: EvalReport
) -> tuple[dict[str, list[float | None]], dict[str, float]]:
    """Per class: [new, old] recall (JSON-native), and the drop where both are defined."""
    recalls: dict[str, list[float | None]] = {}
    drops: dict[str, float] = {}
    for label in champion.labels:
        old = champion.recall(label)
        new = challenger.recall(label) if label in challenger.per_class else 0.0
        recalls[label] = [_round(new), _round(old)]
        if old is not None and new is not None:
            drops[label] = old - new
    return recalls, drops


def promotion_decision(
    challenger: Evaluation, champion: Evaluation | None, policy: PromotionSettings
) -> Decision:
    """Promote when the ``policy.confidence`` paired bootstrap interval of the primary
    metric's delta (challenger - champion, on the same test images) lies above
    ``min_improvement`` and no class's recall drops significantly beyond ``max_recall_drop``
    (the lower end of its per-class paired interval lies above it); with no champion,
    promote when the metric clears ``first_model_floor``.

    Classes without true examples in either report are not compared.
    """
    metric = policy.primary_metric
    if metric not in SUPPORTED_METRICS:
        raise ValueError(
            f"unsupported primary_metric {metric!r}; set VISIONLOOP_PROMOTION__PRIMARY_METRIC "
            f"to one of {list(SUPPORTED_METRICS)}"
        )
    value = challenger.report.metric(metric)
    if champion is None:
        return _decide_first_model(metric, value, challenger.report.n, policy.first_model_floor)
    interval = paired_bootstrap(
        challenger.predictions,
        champion.predictions,
        metric,
        resamples=policy.bootstrap_resamples,
        confidence=policy.confidence,
        seed=policy.bootstrap_seed,
    )
    lows = recall_drop_lows(
        challenger.predictions,
        champion.predictions,
        resamples=policy.bootstrap_resamples,
        confidence=policy.confidence,
        seed=policy.bootstrap_seed,
    )
    return _decide_against(challenger.report, champion.report, interval, lows, policy)


def _significant(interval: PairedDelta, min_improvement: float) -> bool:
    """The whole interval lies above ``min_improvement`` (and the delta is a gain)."""
    return interval.delta > EPSILON and interval.low > min_improvement + EPSILON


def _interval_numbers(interval: PairedDelta) -> dict[str, Any]:
    return {
        "delta_ci": [_round(interval.low), _round(interval.high)],
        "confidence": interval.confidence,
        "bootstrap_resamples": interval.resamples,
        "bootstrap_seed": interval.seed,
        "paired_images": interval.images,
    }


def _decide_against(
    challenger: EvalReport,
    champion: EvalReport,
    interval: PairedDelta,
    drop_lows: dict[str, float],
    policy: PromotionSettings,
) -> Decision:
    metric, delta = interval.metric, interval.delta
    value, baseline = challenger.metric(metric), champion.metric(metric)
    metric_passed = _significant(interval, policy.min_improvement)
    recalls, drops = _recall_drops(challenger, champion)
    limit = policy.max_recall_drop + EPSILON
    too_large = {
        label: drop
        for label, drop in drops.items()
        if drop > limit and drop_lows.get(label, drop) > limit
    }
    worst = max(drops, key=lambda label: drops[label]) if drops else None
    numbers = {
        "metric": metric,
        "challenger": _round(value),
        "champion": _round(baseline),
        "delta": _round(delta),
        **_interval_numbers(interval),
        "min_improvement": policy.min_improvement,
        "metric_passed": metric_passed,
        "max_recall_drop": policy.max_recall_drop,
        "worst_recall_drop": _round(drops[worst]) if worst else None,
        "worst_recall_class": worst,
        "recall_drops_over_limit": {label: _round(drop) for label, drop in too_large.items()},
        "recall_drop_lows": {label: _round(low) for label, low in drop_lows.items()},
        "recalls": recalls,
        "n_challenger": challenger.n,
        "n_champion": champion.n,
    }
    ci = (
        f"{interval.confidence:.0%} CI [{interval.low:+.4f}, {interval.high:+.4f}] over "
        f"{interval.resamples} paired resamples of {interval.images} test images"
    )
    if not metric_passed:
        reason = (
            f"{metric} {value:.4f} vs champion {baseline:.4f} (delta {delta:+.4f}, {ci}) does "
            f"not beat it significantly: the interval does not lie above "
            f"{policy.min_improvement:.4f}"
        )
        return Decision(False, reason, numbers)
    if too_large:
        listed = ", ".join(f"{label} -{drop:.4f}" for label, drop in sorted(too_large.items()))
        reason = (
            f"{metric} improves by {delta:+.4f} ({ci}) but recall drops significantly "
            f"beyond {policy.max_recall_drop:.4f}: {listed}"
        )
        return Decision(False, reason, numbers)
    reason = (
        f"{metric} {value:.4f} beats champion {baseline:.4f} by {delta:+.4f} ({ci}, above "
        f"{policy.min_improvement:.4f}); worst recall drop "
        f"{(drops[worst] if worst else 0.0):+.4f} within {policy.max_recall_drop:.4f}"
    )
    return Decision(True, reason, numbers)


# --------------------------------------------------------------------------- registry side

DECISION_TAG = "promotion.decision"
ROLLED_BACK_TAG = "rolled_back"
LOCK_TIMEOUT_S = 600
#: A run's test evaluation (``Tracking.log_evaluation``), its per-image predictions (an
#: MLflow table keyed by image_id) and the snapshot both were made on.
TEST_REPORT = "eval/test_report.json"
TEST_PREDICTIONS = "eval/test_predictions.json"
TEST_SNAPSHOT_TAG = "eval.test.snapshot_id"
#: On the challenger's run: both models' per-image predictions the decision paired.
PAIRED_PREDICTIONS = "eval/promotion_predictions.json"
#: Decision numbers also recorded as tags of their own (``promotion.<key>``).
INTERVAL_TAGS = ("delta", "confidence", "bootstrap_resamples", "bootstrap_seed", "paired_images")


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` decided (now, or when the version was first decided)."""

    decision: Decision
    name: str
    challenger_version: str
    champion_version: str | None  # the champion the decision was made against
    challenger_report: EvalReport | None = None  # None when the decision was recorded earlier
    champion_report: EvalReport | None = None
    replayed: bool = False  # True: returned the version's recorded decision

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.decision.rows()

    @property
    def champion_after(self) -> str | None:
        return self.challenger_version if self.decision.promoted else self.champion_version


@dataclass(frozen=True)
class RollbackResult:
    name: str
    champion_version: str  # restored
    demoted_version: str | None


@contextmanager
def registry_lock(settings: Settings, holder: str) -> Iterator[None]:
    """One promotion or rollback of a registered model at a time (a flock under the data
    home: promotions against a shared tracking server must start from one machine)."""
    path = settings.data_home / "registry" / f"{settings.registered_model_name}.lock"
    with locks.exclusive(path, holder, timeout_s=LOCK_TIMEOUT_S):
        yield


def evaluate_version(
    tracking: Tracking, version: str, snapshot: LakeSnapshot, split: str = "test"
) -> Evaluation:
    """Evaluate a registered version on a snapshot split, through its stock pyfunc."""
    labels, predict_proba = predict_proba_fn(tracking.load_model(version))
    return evaluate_images(predict_proba, snapshot, labels, split)


def log_test_evaluation(
    tracking: Tracking, run_id: str, predictions: ImagePredictions, snapshot: LakeSnapshot
) -> None:
    """Log a run's per-image test predictions (keyed by image_id) and the snapshot they are on.

    Call once per run: MLflow appends to an existing table of the same name.
    """
    tracking.client.log_table(run_id, predictions.to_table(), TEST_PREDICTIONS)
    tracking.client.set_tag(run_id, TEST_SNAPSHOT_TAG, snapshot.id)


def logged_evaluation(
    tracking: Tracking, version: str, snapshot: LakeSnapshot
) -> Evaluation | None:
    """The test evaluation a version's run logged on this very snapshot, read back; None when
    it logged none, or on another snapshot (whose test split may hold other images)."""
    from mlflow.exceptions import MlflowException

    client = tracking.client
    run_id = client.get_model_version(tracking.model_name, version).run_id
    if not run_id or client.get_run(run_id).data.tags.get(TEST_SNAPSHOT_TAG) != snapshot.id:
        return None
    with tempfile.TemporaryDirectory(prefix="vl-eval-") as directory:
        try:
            report, table = (
                json.loads(Path(client.download_artifacts(run_id, name, directory)).read_text())
                for name in (TEST_REPORT, TEST_PREDICTIONS)
            )
        except (MlflowException, OSError, ValueError):
            return None
    try:
        evaluation = Evaluation(EvalReport.from_dict(report), ImagePredictions.from_table(table))
    except (KeyError, TypeError, ValueError):
        return None
    return evaluation if len(evaluation.predictions.image_ids) == evaluation.report.n else None


def version_evaluation(tracking: Tracking, version: str, snapshot: LakeSnapshot) -> Evaluation:
    """The version's test evaluation on ``snapshot``: read back if logged there, else scored."""
    return logged_evaluation(tracking, version, snapshot) or evaluate_version(
        tracking, version, snapshot
    )


def log_paired_predictions(
    tracking: Tracking, version: str, challenger: Evaluation, champion: Evaluation
) -> None:
    """Both models' predictions per test image, on the challenger's run (rewritten whole)."""
    theirs = dict(zip(champion.predictions.image_ids, champion.predictions.predicted, strict=True))
    ours = challenger.predictions
    rows = [
        [image_id, label, predicted, theirs.get(image_id)]
        for image_id, label, predicted in zip(
            ours.image_ids, ours.true_labels, ours.predicted, strict=True
        )
    ]
    table = {"columns": ["image_id", "label", "challenger", "champion"], "data": rows}
    run_id = tracking.client.get_model_version(tracking.model_name, version).run_id
    if run_id:
        tracking.client.log_dict(run_id, table, PAIRED_PREDICTIONS)


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:5000]


def record_decision(
    tracking: Tracking, version: str, decision: Decision, champion_version: str | None
) -> None:
    """Tags ``promotion.*`` on the challenger version and its run."""
    tags = {
        DECISION_TAG: "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.champion_version": champion_version or "none",
        "promotion.decided_at": now_iso(),
        "promotion.numbers": _tag_value(decision.numbers),
    }
    numbers = decision.numbers
    if numbers.get("delta_ci") is not None:
        tags["promotion.delta_ci_low"], tags["promotion.delta_ci_high"] = (
            str(value) for value in numbers["delta_ci"]
        )
        tags.update({f"promotion.{key}": str(numbers[key]) for key in INTERVAL_TAGS})
    tracking.tag_version(version, tags)


def recorded_decision(tags: dict[str, str]) -> tuple[Decision, str | None] | None:
    """The decision recorded on a version's tags, and the champion it was made against."""
    if DECISION_TAG not in tags:
        return None
    numbers = json.loads(tags.get("promotion.numbers", "{}"))
    decision = Decision(tags[DECISION_TAG] == "promoted", tags["promotion.reason"], numbers)
    champion = tags.get("promotion.champion_version")
    return decision, None if champion in (None, "none") else champion


def promote(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    version: str | None = None,
    *,
    challenger_evaluation: Evaluation | None = None,
) -> PromotionResult:
    """Decide on ``version`` (default: the ``challenger`` alias) against the champion.

    Both are evaluated on ``snapshot``'s test split (``challenger_evaluation``, when given,
    must come from it). Serialised and idempotent: see the module docstring.
    """
    with registry_lock(settings, f"promoting {tracking.model_name}"):
        version = version or tracking.alias_version(CHALLENGER)
        if version is None:
            raise PromotionError(
                f"registered model {tracking.model_name} has no '{CHALLENGER}' version; "
                "train and register one"
            )
        version = str(version)
        tags = tracking.version_tags(version)
        if tags.get(ROLLED_BACK_TAG) == "true":
            return _rolled_back(tracking, version, tags)
        recorded = recorded_decision(tags)
        if recorded is not None:
            return _replay(tracking, version, *recorded)
        return _decide_now(tracking, settings, snapshot, version, challenger_evaluation)


def _rolled_back(tracking: Tracking, version: str, tags: dict[str, str]) -> PromotionResult:
    reason = (
        f"v{version} was rolled back at {tags.get('rolled_back_at', '?')}; a rolled-back "
        "version is never promoted again"
    )
    champion = tracking.alias_version(CHAMPION)
    return PromotionResult(Decision(False, reason), tracking.model_name, version, champion)


def _replay(
    tracking: Tracking, version: str, decision: Decision, against: str | None
) -> PromotionResult:
    """The recorded decision; finish its alias move if it was interrupted and nothing changed."""
    if decision.promoted and tracking.alias_version(CHAMPION) == against:
        _move_aliases(tracking, version, against)
    return PromotionResult(decision, tracking.model_name, version, against, replayed=True)


def _decide_now(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    version: str,
    challenger: Evaluation | None,
) -> PromotionResult:
    champion_version = tracking.alias_version(CHAMPION)
    if champion_version == version:
        raise PromotionError(
            f"v{version} of {tracking.model_name} is the champion but has no recorded "
            "decision; it was set by hand"
        )
    challenger = challenger or version_evaluation(tracking, version, snapshot)
    champion = (
        version_evaluation(tracking, champion_version, snapshot) if champion_version else None
    )
    decision = promotion_decision(challenger, champion, settings.promotion)
    if champion is not None:
        log_paired_predictions(tracking, version, challenger, champion)
    record_decision(tracking, version, decision, champion_version)
    if decision.promoted:
        _move_aliases(tracking, version, champion_version)
    return PromotionResult(
        decision,
        tracking.model_name,
        version,
        champion_version,
        challenger.report,
        champion.report if champion else None,
    )


def _move_aliases(tracking: Tracking, version: str, old_champion: str | None) -> None:
    client, name = tracking.client, tracking.model_name
    if old_champion:
        client.set_registered_model_alias(name, PREVIOUS_CHAMPION, old_champion)
    client.set_registered_model_alias(name, CHAMPION, version)
    client.set_model_version_tag(name, version, "promoted_at", now_iso())


def rollback(tracking: Tracking, settings: Settings) -> RollbackResult:
    """``champion`` <- ``previous-champion``; the demoted version is tagged ``rolled_back``.

    The ``previous-champion`` alias is removed, so a second rollback fails clearly instead
    of flip-flopping, and no later promotion picks the demoted version again.
    """
    with registry_lock(settings, f"rolling back {tracking.model_name}"):
        previous = tracking.alias_version(PREVIOUS_CHAMPION)
        if previous is None:
            raise NoPreviousChampionError(
                f"registered model {tracking.model_name} has no '{PREVIOUS_CHAMPION}' alias: "
                "there is no earlier champion to roll back to (rollback undoes one promotion)"
            )
        current = tracking.alias_version(CHAMPION)
        client, name = tracking.client, tracking.model_name
        client.set_registered_model_alias(name, CHAMPION, previous)
        if current and current != previous:
            tracking.tag_version(
                current,
                {ROLLED_BACK_TAG: "true", "rolled_back_at": now_iso(), "rolled_back_to": previous},
            )
        client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    result = RollbackResult(name=name, champion_version=previous, demoted_version=current)
    emit_rollback(result)
    return result
