"""The pure champion/challenger gate and its paired bootstrap, on real per-image predictions."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import f1_score

from visionloop.registry.promotion import Decision, promotion_decision
from visionloop.registry.significance import (
    PairingError,
    confusions,
    metric_of,
    paired_bootstrap,
)
from visionloop.settings import PromotionSettings
from visionloop.training.evaluate import Evaluation, ImagePredictions, report_from_predictions

LABELS = ["cat", "dog"]
POLICY = PromotionSettings(
    primary_metric="macro_f1", min_improvement=0.0, max_recall_drop=0.05, first_model_floor=0.5
)


def _evaluation(true: list[str], predicted: list[str], ids: list[str] | None = None) -> Evaluation:
    ids = ids or [f"img-{i:04d}" for i in range(len(true))]
    labels = sorted(set(LABELS) | set(true) | set(predicted))
    report = report_from_predictions(true, [labels.index(p) for p in predicted], labels)
    predictions = ImagePredictions(tuple(ids), tuple(true), tuple(predicted), (1.0,) * len(ids))
    return Evaluation(report, predictions)


def _model(true: list[str], wrong: set[int]) -> list[str]:
    """Predictions that are right except on the images at the ``wrong`` positions."""
    other = {"cat": "dog", "dog": "cat"}
    return [other[label] if i in wrong else label for i, label in enumerate(true)]


TRUE = ["cat"] * 100 + ["dog"] * 100
#: The champion misses 20 cats and 20 dogs: 0.8 accuracy and macro-F1.
CHAMPION_WRONG = set(range(20)) | set(range(100, 120))
CHAMPION = _evaluation(TRUE, _model(TRUE, CHAMPION_WRONG))


def test_a_challenger_one_image_better_is_not_promoted() -> None:
    challenger = _evaluation(TRUE, _model(TRUE, CHAMPION_WRONG - {0}))
    assert challenger.report.macro_f1 > CHAMPION.report.macro_f1  # today's rule promoted it
    decision = promotion_decision(challenger, CHAMPION, POLICY)
    assert not decision.promoted
    assert "does not beat it significantly" in decision.reason
    low, high = decision.numbers["delta_ci"]
    assert low <= 0 < decision.numbers["delta"] <= high
    assert not decision.numbers["metric_passed"]


def test_a_flapping_challenger_better_on_some_worse_on_others_is_not_promoted() -> None:
    # Fixes 12 of the champion's errors, makes 9 new ones: +3 images, noise.
    wrong = (CHAMPION_WRONG - set(range(6)) - set(range(100, 106))) | set(range(40, 49))
    decision = promotion_decision(_evaluation(TRUE, _model(TRUE, wrong)), CHAMPION, POLICY)
    assert not decision.promoted and decision.numbers["delta"] > 0


def test_a_clearly_better_challenger_is_promoted() -> None:
    wrong = set(range(5)) | set(range(100, 104)) | {60, 150}  # 11 errors, 2 of them new
    decision = promotion_decision(_evaluation(TRUE, _model(TRUE, wrong)), CHAMPION, POLICY)
    assert decision.promoted, decision.reason
    numbers = decision.numbers
    assert numbers["delta"] == pytest.approx(0.945 - 0.8, abs=1e-3)
    assert 0 < numbers["delta_ci"][0] < numbers["delta"] < numbers["delta_ci"][1]
    assert numbers["confidence"] == 0.95 and numbers["bootstrap_resamples"] == 1000
    assert numbers["bootstrap_seed"] == 0 and numbers["paired_images"] == 200
    rows = decision.rows()
    assert all(row["passed"] for row in rows)
    assert (
        "95% CI" in rows[0]["check"] and "1000 paired resamples of 200 images" in rows[0]["check"]
    )
    assert {row["check"] for row in rows[1:]} == {
        "recall[cat] drop not significantly above max_recall_drop",
        "recall[dog] drop not significantly above max_recall_drop",
    }


def test_min_improvement_is_a_bar_for_the_whole_interval() -> None:
    wrong = set(range(5)) | set(range(100, 104)) | {60, 150}
    challenger = _evaluation(TRUE, _model(TRUE, wrong))
    low = promotion_decision(challenger, CHAMPION, POLICY).numbers["delta_ci"][0]
    below = POLICY.model_copy(update={"min_improvement": low - 0.01})
    above = POLICY.model_copy(update={"min_improvement": low + 0.01})
    assert promotion_decision(challenger, CHAMPION, below).promoted
    assert not promotion_decision(challenger, CHAMPION, above).promoted


def test_the_interval_is_deterministic_with_the_seed_and_pairs_by_image_id() -> None:
    challenger = _evaluation(TRUE, _model(TRUE, CHAMPION_WRONG - {0, 1, 100}))
    first = paired_bootstrap(challenger.predictions, CHAMPION.predictions, "macro_f1", seed=7)
    again = paired_bootstrap(challenger.predictions, CHAMPION.predictions, "macro_f1", seed=7)
    other = paired_bootstrap(challenger.predictions, CHAMPION.predictions, "macro_f1", seed=8)
    assert first == again
    assert (other.low, other.high) != (first.low, first.high)
    # The same images in another order: paired by image_id, the same interval.
    order = np.random.default_rng(0).permutation(len(TRUE))
    shuffled = ImagePredictions(
        *(tuple(column[i] for i in order) for column in _columns(challenger.predictions))
    )
    assert paired_bootstrap(shuffled, CHAMPION.predictions, "macro_f1", seed=7) == first


def _columns(predictions: ImagePredictions) -> tuple[tuple, ...]:
    p = predictions
    return p.image_ids, p.true_labels, p.predicted, p.confidence


def test_the_full_split_delta_is_the_reports_delta() -> None:
    rng = np.random.default_rng(3)
    labels = ["a", "b", "c", "d"]
    true = [labels[i] for i in rng.integers(0, 3, 150)]  # "d" never true
    new = [labels[i] for i in rng.integers(0, 4, 150)]
    old = [labels[i] for i in rng.integers(0, 3, 150)]
    for metric in ("macro_f1", "accuracy"):
        ours, theirs = _evaluation(true, new), _evaluation(true, old)
        delta = paired_bootstrap(ours.predictions, theirs.predictions, metric, resamples=100)
        expected = ours.report.metric(metric) - theirs.report.metric(metric)
        assert delta.delta == pytest.approx(expected, abs=1e-12)


def test_resampled_macro_f1_is_sklearns_on_the_resample() -> None:
    rng = np.random.default_rng(5)
    true, predicted = rng.integers(0, 4, 60), rng.integers(0, 4, 60)
    draws = rng.integers(0, 60, size=(20, 60))
    values = metric_of(confusions(true * 4 + predicted, draws, 4), "macro_f1")
    for draw, value in zip(draws, values, strict=True):
        y, p = true[draw], predicted[draw]
        present = sorted(set(y) | set(p))
        assert value == pytest.approx(f1_score(y, p, labels=present, average="macro"))


def test_predictions_of_other_images_cannot_be_paired() -> None:
    other = _evaluation(TRUE, TRUE, ids=[f"other-{i}" for i in range(200)])
    with pytest.raises(PairingError, match="200 only in the challenger's"):
        promotion_decision(other, CHAMPION, POLICY)
    relabelled = _evaluation(["dog", *TRUE[1:]], TRUE)
    with pytest.raises(PairingError, match="1 images have different true labels"):
        promotion_decision(relabelled, CHAMPION, POLICY)


def test_rejects_when_a_class_recall_drops_significantly_too_much() -> None:
    # Champion: cat recall 0.9, dog 0.5. Challenger: cat 0.7, dog 0.99: better, but cat drops.
    champion = _evaluation(TRUE, _model(TRUE, set(range(10)) | set(range(100, 150))))
    challenger = _evaluation(TRUE, _model(TRUE, set(range(30)) | {100}))
    decision = promotion_decision(challenger, champion, POLICY)
    assert not decision.promoted and decision.numbers["metric_passed"]
    assert "recall drops significantly beyond" in decision.reason and "cat" in decision.reason
    assert decision.numbers["recall_drops_over_limit"] == {"cat": pytest.approx(0.2)}
    assert decision.numbers["recall_drop_lows"]["cat"] > POLICY.max_recall_drop
    failed = [row["check"] for row in decision.rows() if not row["passed"]]
    assert failed == ["recall[cat] drop not significantly above max_recall_drop"]
    # a drop of 0.1 on 100 cats is within the noise of its interval; one at the tolerance too
    noisy = _evaluation(TRUE, _model(TRUE, set(range(20)) | {100}))
    assert promotion_decision(noisy, champion, POLICY).promoted
    at_limit = _evaluation(TRUE, _model(TRUE, set(range(15)) | {100}))
    assert promotion_decision(at_limit, champion, POLICY).promoted


def test_one_image_of_a_rare_class_does_not_block_a_significant_gain() -> None:
    # 12 cats, 188 dogs: the challenger fixes 40 dogs and misses one more cat (recall -0.083).
    true = ["cat"] * 12 + ["dog"] * 188
    champion = _evaluation(true, _model(true, {0} | set(range(12, 62))))
    challenger = _evaluation(true, _model(true, {0, 1} | set(range(12, 22))))
    decision = promotion_decision(challenger, champion, POLICY)
    assert decision.numbers["recalls"]["cat"] == [pytest.approx(10 / 12), pytest.approx(11 / 12)]
    assert decision.promoted, decision.reason


def test_first_model_against_the_floor() -> None:
    above = promotion_decision(_evaluation(TRUE, _model(TRUE, set(range(0, 200, 3)))), None, POLICY)
    assert above.promoted and "first model" in above.reason
    assert above.numbers == {
        "metric": "macro_f1",
        "challenger": pytest.approx(0.665, abs=1e-3),
        "champion": None,
        "first_model_floor": 0.5,
        "n": 200,
    }
    assert above.rows() == [
        {
            "check": "macro_f1 >= first-model floor",
            "challenger": above.numbers["challenger"],
            "champion": None,
            "threshold": 0.5,
            "passed": True,
        }
    ]
    below = promotion_decision(_evaluation(TRUE, _model(TRUE, set(range(120)))), None, POLICY)
    assert not below.promoted and "below the floor" in below.reason
    at_floor = promotion_decision(
        _evaluation(TRUE, _model(TRUE, set(range(0, 200, 2)))), None, POLICY
    )
    assert at_floor.promoted and at_floor.numbers["challenger"] == 0.5


def test_accuracy_as_primary_metric() -> None:
    policy = POLICY.model_copy(update={"primary_metric": "accuracy"})
    wrong = set(range(5)) | set(range(100, 104))
    decision = promotion_decision(_evaluation(TRUE, _model(TRUE, wrong)), CHAMPION, policy)
    assert decision.promoted and decision.numbers["metric"] == "accuracy"
    assert decision.numbers["delta"] == pytest.approx((40 - 9) / 200)


def test_unknown_metric_is_a_clear_error() -> None:
    policy = POLICY.model_copy(update={"primary_metric": "auc"})
    with pytest.raises(ValueError, match="unsupported primary_metric 'auc'"):
        promotion_decision(CHAMPION, None, policy)


def test_decision_is_plain_data_that_replays_from_its_tag() -> None:
    challenger = _evaluation(TRUE, _model(TRUE, set(range(3))))
    decision = promotion_decision(challenger, CHAMPION, POLICY)
    assert isinstance(decision, Decision)
    assert decision.to_dict()["promoted"] is True
    replayed = Decision(
        decision.promoted, decision.reason, json.loads(json.dumps(decision.numbers))
    )
    assert replayed == decision and replayed.rows() == decision.rows()
