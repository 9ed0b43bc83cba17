"""The champion/challenger gate, alias moves, and rollback.

:func:`decide` is pure: two :class:`EvalReport` on the same frozen test split and the
policy in, a :class:`Decision` out. :func:`promote` evaluates both registered models on the
test split of the run's lake snapshot, decides, records the decision as tags on the
challenger version and its run, then moves the aliases (``champion`` to the challenger,
``previous-champion`` to the old champion). :func:`rollback` undoes the last promotion.

Promotions and rollbacks of one registered model are serialised by a lock under the data
home, and idempotent: a version's recorded decision is final. A retry after the aliases
moved returns that decision (finishing an interrupted alias move if nothing changed since),
and a version that was rolled back or rejected is never promoted by a later run.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from visionloop import locks
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.served_model import predict_proba_fn
from visionloop.registry.tracking import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    Tracking,
    now_iso,
)
from visionloop.settings import PromotionSettings, Settings
from visionloop.training.evaluate import SUPPORTED_METRICS, EvalReport, evaluate_snapshot

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
                "check": f"{metric} improves by >= min_improvement",
                "challenger": numbers["challenger"],
                "champion": numbers["champion"],
                "threshold": numbers["min_improvement"],
                "passed": numbers["metric_passed"],
            }
        )
        limit = numbers["max_recall_drop"]
        for label, pair in numbers.get("recalls", {}).items():
            challenger, champion = pair
            drop = None if challenger is None or champion is None else champion - challenger
            rows.append(
                {
                    "check": f"recall[{label}] drop <= max_recall_drop",
                    "challenger": challenger,
                    "champion": champion,
                    "threshold": limit,
                    "passed": drop is None or drop <= limit + EPSILON,
                }
            )
        return rows


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


def decide(
    challenger: EvalReport, champion: EvalReport | None, policy: PromotionSettings
) -> Decision:
    """Promote when the primary metric beats the champion's by at least ``min_improvement``
    (and strictly beats it) and no class's recall drops by more than ``max_recall_drop``;
    with no champion, promote when the metric clears ``first_model_floor``.

    Classes without true examples in either report are not compared.
    """
    metric = policy.primary_metric
    if metric not in SUPPORTED_METRICS:
        raise ValueError(
            f"unsupported primary_metric {metric!r}; set VISIONLOOP_PROMOTION__PRIMARY_METRIC "
            f"to one of {list(SUPPORTED_METRICS)}"
        )
    value = challenger.metric(metric)
    if champion is None:
        return _decide_first_model(metric, value, challenger.n, policy.first_model_floor)

    baseline = champion.metric(metric)
    delta = value - baseline
    metric_passed = delta > EPSILON and delta + EPSILON >= policy.min_improvement
    recalls, drops = _recall_drops(challenger, champion)
    too_large = {
        label: drop for label, drop in drops.items() if drop > policy.max_recall_drop + EPSILON
    }
    worst = max(drops, key=lambda label: drops[label]) if drops else None
    numbers = {
        "metric": metric,
        "challenger": _round(value),
        "champion": _round(baseline),
        "delta": _round(delta),
        "min_improvement": policy.min_improvement,
        "metric_passed": metric_passed,
        "max_recall_drop": policy.max_recall_drop,
        "worst_recall_drop": _round(drops[worst]) if worst else None,
        "worst_recall_class": worst,
        "recall_drops_over_limit": {label: _round(drop) for label, drop in too_large.items()},
        "recalls": recalls,
        "n_challenger": challenger.n,
        "n_champion": champion.n,
    }
    if not metric_passed:
        reason = (
            f"{metric} {value:.4f} vs champion {baseline:.4f} (delta {delta:+.4f}) does not "
            f"beat it by at least {policy.min_improvement:.4f}"
        )
        return Decision(False, reason, numbers)
    if too_large:
        listed = ", ".join(f"{label} -{drop:.4f}" for label, drop in sorted(too_large.items()))
        reason = (
            f"{metric} improves by {delta:+.4f} but recall drops beyond "
            f"{policy.max_recall_drop:.4f}: {listed}"
        )
        return Decision(False, reason, numbers)
    reason = (
        f"{metric} {value:.4f} beats champion {baseline:.4f} by {delta:+.4f} "
        f"(>= {policy.min_improvement:.4f}); worst recall drop "
        f"{(drops[worst] if worst else 0.0):+.4f} within {policy.max_recall_drop:.4f}"
    )
    return Decision(True, reason, numbers)


# --------------------------------------------------------------------------- registry side

DECISION_TAG = "promotion.decision"
ROLLED_BACK_TAG = "rolled_back"
LOCK_TIMEOUT_S = 600


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
) -> EvalReport:
    """Evaluate a registered version on a snapshot split, through its stock pyfunc."""
    labels, predict_proba = predict_proba_fn(tracking.load_model(version))
    return evaluate_snapshot(predict_proba, snapshot, labels, split)


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
    challenger_report: EvalReport | None = None,
) -> PromotionResult:
    """Decide on ``version`` (default: the ``challenger`` alias) against the champion.

    Both are evaluated on ``snapshot``'s test split (``challenger_report``, when given, must
    come from it). Serialised and idempotent: see the module docstring.
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
        return _decide_now(tracking, settings, snapshot, version, challenger_report)


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
    challenger_report: EvalReport | None,
) -> PromotionResult:
    champion_version = tracking.alias_version(CHAMPION)
    if champion_version == version:
        raise PromotionError(
            f"v{version} of {tracking.model_name} is the champion but has no recorded "
            "decision; it was set by hand"
        )
    challenger_report = challenger_report or evaluate_version(tracking, version, snapshot)
    champion_report = (
        evaluate_version(tracking, champion_version, snapshot) if champion_version else None
    )
    decision = decide(challenger_report, champion_report, settings.promotion)
    record_decision(tracking, version, decision, champion_version)
    if decision.promoted:
        _move_aliases(tracking, version, champion_version)
    return PromotionResult(
        decision,
        tracking.model_name,
        version,
        champion_version,
        challenger_report,
        champion_report,
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
    return RollbackResult(name=name, champion_version=previous, demoted_version=current)
