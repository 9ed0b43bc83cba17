"""The champion/challenger gate, alias moves, and rollback.

:func:`decide` is pure: two :class:`EvalReport` on the same frozen test split and the
policy in, a :class:`Decision` out. :func:`promote` evaluates both registered models on the
lake's test split, decides, records the decision as tags on the challenger version and run,
and moves the aliases (``champion`` to the challenger, ``previous-champion`` to the old
champion). :func:`rollback` undoes the last promotion.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from visionloop.settings import PromotionSettings, Settings
from visionloop.training.evaluate import SUPPORTED_METRICS, EvalReport, evaluate_split
from visionloop.training.registry import (
    CHALLENGER,
    CHAMPION,
    PREVIOUS_CHAMPION,
    client_for,
    ensure_reachable,
    use_tracking,
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
) -> tuple[dict[str, tuple[float | None, float | None]], dict[str, float]]:
    """Per class: (new, old) recall, and the drop where both are defined."""
    recalls: dict[str, tuple[float | None, float | None]] = {}
    drops: dict[str, float] = {}
    for label in champion.labels:
        old = champion.recall(label)
        new = challenger.recall(label) if label in challenger.per_class else 0.0
        recalls[label] = (_round(new), _round(old))
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


@dataclass(frozen=True)
class PromotionResult:
    """What :func:`promote` did."""

    decision: Decision
    name: str
    challenger_version: str
    champion_version: str | None  # before the decision
    challenger_report: EvalReport
    champion_report: EvalReport | None

    @property
    def rows(self) -> list[dict[str, Any]]:
        return self.decision.rows()

    def to_dict(self) -> dict[str, Any]:
        return {
            "decision": self.decision.to_dict(),
            "name": self.name,
            "challenger_version": self.challenger_version,
            "champion_version": self.champion_version,
            "challenger_report": self.challenger_report.to_dict(),
            "champion_report": self.champion_report and self.champion_report.to_dict(),
        }


@dataclass(frozen=True)
class RollbackResult:
    name: str
    champion_version: str  # restored
    demoted_version: str | None


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(name, alias).version)
    except MlflowException as error:
        if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error).lower():
            return None
        raise


def load_version(settings: Settings, version: str):
    """The registered pyfunc of ``version`` (stock ``mlflow.pyfunc.load_model``)."""
    import mlflow.pyfunc

    use_tracking(settings)
    return mlflow.pyfunc.load_model(f"models:/{settings.registered_model_name}/{version}")


def pyfunc_predict_proba(model) -> tuple[list[str], Any]:
    """Labels and an images -> probabilities function through the model's stock ``predict``."""
    import pandas as pd

    labels = list(model.unwrap_python_model().labels)

    def predict_proba(images: list[bytes]) -> np.ndarray:
        output = model.predict(pd.DataFrame({"image": images}))
        return np.asarray([list(row) for row in output["probabilities"]], dtype=np.float64)

    return labels, predict_proba


def evaluate_version(
    settings: Settings, version: str, split: str = "test", batch_size: int = 256
) -> EvalReport:
    """Evaluate a registered version on a lake split, through its pyfunc."""
    labels, predict_proba = pyfunc_predict_proba(load_version(settings, version))
    return evaluate_split(predict_proba, settings.images_dir, labels, split, batch_size)


def _tag_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return text[:5000]


def record_decision(
    settings: Settings,
    version: str,
    decision: Decision,
    champion_version: str | None,
) -> dict[str, str]:
    """Tags ``promotion.*`` on the challenger version and its run; returns them."""
    client = client_for(settings)
    name = settings.registered_model_name
    tags = {
        "promotion.decision": "promoted" if decision.promoted else "rejected",
        "promotion.reason": decision.reason,
        "promotion.champion_version": champion_version or "none",
        "promotion.decided_at": _now(),
    }
    for key, value in decision.numbers.items():
        tags[f"promotion.{key}"] = _tag_value(value)
    for key, value in tags.items():
        client.set_model_version_tag(name, version, key, value)
    run_id = client.get_model_version(name, version).run_id
    if run_id:
        for key, value in tags.items():
            client.set_tag(run_id, key, value)
    return tags


def promote(
    settings: Settings,
    version: str | None = None,
    *,
    challenger_report: EvalReport | None = None,
    split: str = "test",
) -> PromotionResult:
    """Evaluate challenger (default: the ``challenger`` alias) and champion, decide, record.

    When promoted, ``previous-champion`` moves to the old champion and ``champion`` to the
    challenger. ``challenger_report`` skips re-evaluating the challenger (it must come from
    the same split).
    """
    ensure_reachable(settings.resolved_mlflow_uri)
    client = client_for(settings)
    name = settings.registered_model_name
    if version is None:
        version = alias_version(client, name, CHALLENGER)
        if version is None:
            raise PromotionError(
                f"registered model {name} has no '{CHALLENGER}' version; train and register one"
            )
    version = str(version)
    champion_version = alias_version(client, name, CHAMPION)
    if champion_version == version:
        raise PromotionError(f"version {version} of {name} is already the champion")
    challenger_report = challenger_report or evaluate_version(settings, version, split)
    champion_report = (
        evaluate_version(settings, champion_version, split) if champion_version else None
    )
    decision = decide(challenger_report, champion_report, settings.promotion)
    record_decision(settings, version, decision, champion_version)
    if decision.promoted:
        if champion_version:
            client.set_registered_model_alias(name, PREVIOUS_CHAMPION, champion_version)
        client.set_registered_model_alias(name, CHAMPION, version)
        client.set_model_version_tag(name, version, "promoted_at", _now())
    return PromotionResult(
        decision=decision,
        name=name,
        challenger_version=version,
        champion_version=champion_version,
        challenger_report=challenger_report,
        champion_report=champion_report,
    )


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def rollback(settings: Settings) -> RollbackResult:
    """``champion`` <- ``previous-champion``; the demoted version is tagged ``rolled_back``.

    The ``previous-champion`` alias is removed, so a second rollback fails clearly instead
    of flip-flopping.
    """
    from mlflow.exceptions import MlflowException

    ensure_reachable(settings.resolved_mlflow_uri)
    client = client_for(settings)
    name = settings.registered_model_name
    try:
        client.get_registered_model(name)
    except MlflowException as error:
        raise NoPreviousChampionError(
            f"registered model {name} does not exist in {settings.resolved_mlflow_uri}; "
            "nothing to roll back"
        ) from error
    previous = alias_version(client, name, PREVIOUS_CHAMPION)
    if previous is None:
        raise NoPreviousChampionError(
            f"registered model {name} has no '{PREVIOUS_CHAMPION}' alias: there is no earlier "
            "champion to roll back to (rollback undoes one promotion)"
        )
    current = alias_version(client, name, CHAMPION)
    client.set_registered_model_alias(name, CHAMPION, previous)
    if current and current != previous:
        client.set_model_version_tag(name, current, "rolled_back", "true")
        client.set_model_version_tag(name, current, "rolled_back_at", _now())
        client.set_model_version_tag(name, current, "rolled_back_to", previous)
    client.delete_registered_model_alias(name, PREVIOUS_CHAMPION)
    return RollbackResult(name=name, champion_version=previous, demoted_version=current)
