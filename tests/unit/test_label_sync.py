"""Annotations to label events: majority, agreement, ties, confident disagreement, edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from visionloop.labelling.client import Annotation, Task
from visionloop.labelling.sync import DISAGREES, LOW_AGREEMENT, SKIPPED, TIE, collect, task_outcome
from visionloop.lake.batch_ids import new_batch_id

NOW = datetime(2026, 11, 27, tzinfo=UTC)


def _task(*labels: str | None, predicted: str = "cat", confidence: float = 0.5, edited: int = 0):
    annotations = [
        Annotation(
            id=10 + n,
            task_id=1,
            annotator=f"a{n}@x",
            label=label,
            cancelled=label is None,
            updated_at=NOW + timedelta(minutes=n + edited),
        )
        for n, label in enumerate(labels)
    ]
    return Task(
        1, "img", NOW + timedelta(hours=1, minutes=edited), annotations, predicted, confidence
    )


def test_one_annotation_or_a_clear_majority_is_a_label_event() -> None:
    single = task_outcome(_task("dog"), 0.5, 0.9, NOW).event
    assert single["label"] == "dog" and single["label_source"] == "annotator"
    assert (single["task_id"], single["annotation_id"]) == (1, 10)
    majority = task_outcome(_task("dog", "dog", "cat"), 0.5, 0.9, NOW).event
    assert majority["label"] == "dog" and majority["annotator"] == "a0@x,a1@x"


def test_skips_ties_weak_agreement_and_confident_disagreement_are_reviewed() -> None:
    assert task_outcome(_task(None), 0.5, 0.9, NOW).review["reason"] == SKIPPED
    assert task_outcome(_task("dog", "cat"), 0.5, 0.9, NOW).review["reason"] == TIE
    weak = task_outcome(
        _task("dog", "dog", "cat", "bird"), 0.5, 0.9, NOW
    )  # 2 of 4: not more than half
    assert weak.review["reason"] == LOW_AGREEMENT
    confident = task_outcome(_task("dog", predicted="cat", confidence=0.95), 0.5, 0.9, NOW)
    assert confident.review["reason"] == DISAGREES and confident.event is None
    assert task_outcome(Task(1, "img", NOW, [], None, None), 0.5, 0.9, NOW).event is None


def test_a_rerun_records_nothing_twice_and_an_edit_is_a_new_event() -> None:
    known: set[str] = set()
    first = collect([_task("dog")], known, 0.5, 0.9, NOW, None)
    assert len(first.events) == 1 and first.cursor == NOW + timedelta(hours=1)
    again = collect([_task("dog")], known, 0.5, 0.9, NOW, first.cursor)
    assert again.events == [] and again.already_recorded == 1
    edited = collect([_task("cat", edited=5)], known, 0.5, 0.9, NOW, again.cursor)
    assert [event["label"] for event in edited.events] == ["cat"]
    assert edited.events[0]["event_id"] != first.events[0]["event_id"]


def test_batches_started_in_the_same_second_get_distinct_sortable_ids() -> None:
    ids = {new_batch_id("labels", NOW) for _ in range(1000)}
    assert len(ids) == 1000
    assert all(batch.startswith("20261127T000000Z-labels-") for batch in ids)
    later = new_batch_id("labels", NOW + timedelta(seconds=1))
    assert max(ids) < later and new_batch_id(now=NOW).count("-") == 1
