"""The pure champion/challenger gate."""

from __future__ import annotations

import pytest

from visionloop.registry.promotion import Decision, decide
from visionloop.settings import PromotionSettings
from visionloop.training.evaluate import EvalReport


def _report(macro_f1: float, recalls: dict[str, float], accuracy: float | None = None):
    per_class = {
        label: {"precision": recall, "recall": recall, "f1": recall, "support": 10}
        for label, recall in recalls.items()
    }
    labels = list(recalls)
    return EvalReport(
        accuracy=macro_f1 if accuracy is None else accuracy,
        macro_f1=macro_f1,
        per_class=per_class,
        confusion=[[0] * len(labels) for _ in labels],
        labels=labels,
        n=10 * len(labels),
    )


POLICY = PromotionSettings(
    primary_metric="macro_f1", min_improvement=0.01, max_recall_drop=0.05, first_model_floor=0.5
)


def test_promotes_a_better_challenger() -> None:
    champion = _report(0.80, {"cat": 0.80, "dog": 0.80})
    challenger = _report(0.85, {"cat": 0.78, "dog": 0.92})
    decision = decide(challenger, champion, POLICY)
    assert decision.promoted, decision.reason
    assert decision.numbers["delta"] == pytest.approx(0.05)
    assert decision.numbers["worst_recall_class"] == "cat"
    assert decision.numbers["worst_recall_drop"] == pytest.approx(0.02)
    rows = decision.rows()
    assert rows[0]["passed"] and all(row["passed"] for row in rows)
    assert {row["check"] for row in rows[1:]} == {
        "recall[cat] drop <= max_recall_drop",
        "recall[dog] drop <= max_recall_drop",
    }


def test_rejects_when_metric_not_better_enough() -> None:
    champion = _report(0.80, {"cat": 0.8, "dog": 0.8})
    for value in (0.70, 0.80, 0.805):
        decision = decide(_report(value, {"cat": 0.8, "dog": 0.8}), champion, POLICY)
        assert not decision.promoted
        assert "does not beat" in decision.reason
        assert not decision.numbers["metric_passed"]
    # exactly min_improvement (with float noise) is enough
    assert decide(_report(0.81, {"cat": 0.8, "dog": 0.8}), champion, POLICY).promoted


def test_tie_is_not_a_win_even_with_zero_min_improvement() -> None:
    policy = POLICY.model_copy(update={"min_improvement": 0.0})
    champion = _report(0.80, {"cat": 0.8})
    assert not decide(_report(0.80, {"cat": 0.8}), champion, policy).promoted
    assert decide(_report(0.8001, {"cat": 0.8}), champion, policy).promoted


def test_rejects_when_a_class_recall_drops_too_much() -> None:
    champion = _report(0.80, {"cat": 0.90, "dog": 0.70, "emu": 0.8})
    challenger = _report(0.90, {"cat": 0.80, "dog": 0.99, "emu": 0.79})
    decision = decide(challenger, champion, POLICY)
    assert not decision.promoted
    assert "cat" in decision.reason and "emu" not in decision.reason
    assert decision.numbers["recall_drops_over_limit"] == {"cat": pytest.approx(0.1)}
    failed = [row["check"] for row in decision.rows() if not row["passed"]]
    assert failed == ["recall[cat] drop <= max_recall_drop"]
    # a drop exactly at the tolerance passes
    at_limit = _report(0.90, {"cat": 0.85, "dog": 0.99, "emu": 0.8})
    assert decide(at_limit, champion, POLICY).promoted


def test_first_model_against_the_floor() -> None:
    above = decide(_report(0.62, {"cat": 0.6}), None, POLICY)
    assert above.promoted and "first model" in above.reason
    assert above.numbers == {
        "metric": "macro_f1",
        "challenger": 0.62,
        "champion": None,
        "first_model_floor": 0.5,
        "n": 10,
    }
    assert above.rows() == [
        {
            "check": "macro_f1 >= first-model floor",
            "challenger": 0.62,
            "champion": None,
            "threshold": 0.5,
            "passed": True,
        }
    ]
    below = decide(_report(0.42, {"cat": 0.4}), None, POLICY)
    assert not below.promoted and "below the floor" in below.reason
    assert decide(_report(0.5, {"cat": 0.5}), None, POLICY).promoted  # at the floor


def test_accuracy_as_primary_metric() -> None:
    policy = POLICY.model_copy(update={"primary_metric": "accuracy"})
    champion = _report(0.9, {"cat": 0.8}, accuracy=0.80)
    challenger = _report(0.5, {"cat": 0.8}, accuracy=0.85)  # worse F1, better accuracy
    decision = decide(challenger, champion, policy)
    assert decision.promoted and decision.numbers["metric"] == "accuracy"


def test_unknown_metric_is_a_clear_error() -> None:
    policy = POLICY.model_copy(update={"primary_metric": "auc"})
    with pytest.raises(ValueError, match="unsupported primary_metric 'auc'"):
        decide(_report(0.9, {"cat": 0.9}), None, policy)


def test_decision_is_plain_data() -> None:
    decision = decide(_report(0.9, {"cat": 0.9}), _report(0.8, {"cat": 0.8}), POLICY)
    assert isinstance(decision, Decision)
    assert decision.to_dict()["promoted"] is True
