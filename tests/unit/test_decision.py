"""The nightly decision table: new labels train, drift alone flags, nothing new skips."""

from __future__ import annotations

from visionloop.monitoring.decision import decide_night


def test_new_labels_train_whatever_the_drift() -> None:
    for drift in (True, False, None):
        decision = decide_night("train", "training split changed since champion v1", drift, "x")
        assert decision.action == "train" and decision.new_labels


def test_drift_without_new_labels_flags_and_does_not_retrain() -> None:
    decision = decide_night(
        "skip", "training split unchanged since champion v2", True, "3 of 3 failed"
    )
    assert decision.action == "flag" and not decision.new_labels
    assert "annotators first" in decision.reason and "no retraining" in decision.reason


def test_nothing_new_skips_and_says_why() -> None:
    quiet = decide_night("skip", "unchanged since champion v2", False, "no drift")
    assert (quiet.action, quiet.drift) == ("skip", "no drift")
    unjudged = decide_night("skip", "unchanged", None, "12 new images: too few to judge")
    assert unjudged.action == "skip" and unjudged.drift.startswith("not judged: 12 new images")
