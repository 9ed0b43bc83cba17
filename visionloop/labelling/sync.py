"""Annotations back into the lake: agreed labels become label events, the rest is reviewed.

:func:`task_outcome` is pure. A task's label is the majority of its (not cancelled) annotations
when that majority holds more than ``labelling.min_agreement`` of the votes; a tie, too
little agreement, or an agreed label against a prediction at least ``labelling.confident``
sure goes to the review table instead, and so do skipped tasks. An edited annotation makes
a new event (its id hashes the annotations and their edit times); the latest event is the
image's label, so the edit wins, and a rerun recognises events it already recorded.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.labelling.client import LabelStudio, Task
from visionloop.lake import commit as lake
from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.contract import LABEL_REVIEWS_SCHEMA
from visionloop.lake.label_events import ANNOTATOR, event_id, events_table
from visionloop.lake.snapshot import list_table, row_groups
from visionloop.settings import Settings

SKIPPED, TIE, LOW_AGREEMENT, DISAGREES = (
    "skipped",
    "tie",
    "low_agreement",
    "disagrees_with_confident_model",
)


@dataclass(frozen=True)
class Outcome:
    """What one task's annotations amount to: a label event, or a review (not both)."""

    event: dict[str, Any] | None = None
    review: dict[str, Any] | None = None


def task_outcome(task: Task, min_agreement: float, confident: float, now: datetime) -> Outcome:
    """The label event or review of one task (an empty Outcome: nothing annotated yet)."""
    votes = [a for a in task.annotations if not a.cancelled and a.label]
    if not task.annotations:
        return Outcome()
    counts = Counter(a.label for a in votes)
    ids = sorted((a.id, a.updated_at.isoformat()) for a in task.annotations)
    if not votes:
        return Outcome(review=_review(task, SKIPPED, counts, ids, now))
    (top, top_count), *rest = counts.most_common()
    if rest and rest[0][1] == top_count:
        return Outcome(review=_review(task, TIE, counts, ids, now))
    if top_count / len(votes) <= min_agreement and len(votes) > 1:
        return Outcome(review=_review(task, LOW_AGREEMENT, counts, ids, now))
    sure = task.confidence is not None and task.confidence >= confident
    if sure and task.predicted and top != task.predicted:
        return Outcome(review=_review(task, DISAGREES, counts, ids, now))
    agreeing = [a for a in votes if a.label == top]
    return Outcome(
        event={
            "event_id": event_id(ANNOTATOR, task.id, ids),
            "image_id": task.image_id,
            "label": top,
            "label_source": ANNOTATOR,
            "annotator": ",".join(sorted({a.annotator for a in agreeing})),
            "labelled_at": max(a.updated_at for a in agreeing),
            "recorded_at": now,
            "task_id": task.id,
            "annotation_id": max(a.id for a in agreeing),
        }
    )


def _review(
    task: Task, reason: str, counts: Counter, ids: list[tuple[int, str]], now: datetime
) -> dict[str, Any]:
    return {
        "review_id": event_id("review", task.id, reason, ids),
        "image_id": task.image_id,
        "task_id": task.id,
        "reason": reason,
        "votes": json.dumps(dict(counts), sort_keys=True),
        "annotators": ",".join(sorted({a.annotator for a in task.annotations})),
        "annotation_ids": ",".join(str(i) for i, _ in ids),
        "predicted": task.predicted,
        "confidence": task.confidence,
        "recorded_at": now,
    }


@dataclass
class SyncResult:
    """The events and reviews new to the lake, and what was read."""

    events: list[dict[str, Any]] = field(default_factory=list)
    reviews: list[dict[str, Any]] = field(default_factory=list)
    tasks_read: int = 0
    already_recorded: int = 0
    cursor: datetime | None = None
    batch_id: str | None = None  # the committed label batch, if there was anything new
    skipped: str = ""  # why no sync ran (no Label Studio, no labelling project yet)

    def counts(self) -> dict[str, int]:
        reasons = Counter(review["reason"] for review in self.reviews)
        return {
            "tasks read": self.tasks_read,
            "labels synced": len(self.events),
            "already recorded": self.already_recorded,
            **{f"held: {reason}": count for reason, count in sorted(reasons.items())},
        }

    def tables(self) -> dict[str, pa.Table]:
        tables = {}
        if self.events:
            tables["label_events"] = events_table(self.events)
        if self.reviews:
            tables["label_reviews"] = pa.Table.from_pylist(self.reviews, LABEL_REVIEWS_SCHEMA)
        return tables


def collect(
    tasks: Iterable[Task],
    known: set[str],
    min_agreement: float,
    confident: float,
    now: datetime,
    cursor: datetime | None,
) -> SyncResult:
    """Decide every task; keep what the lake has not recorded (``known`` event/review ids)."""
    result = SyncResult(cursor=cursor)
    for task in tasks:
        result.tasks_read += 1
        result.cursor = max(result.cursor or task.updated_at, task.updated_at)
        outcome = task_outcome(task, min_agreement, confident, now)
        record = outcome.event or outcome.review
        if record is None:
            continue
        key = record.get("event_id") or record["review_id"]
        if key in known:
            result.already_recorded += 1
        elif outcome.event is not None:
            result.events.append(outcome.event)
        else:
            result.reviews.append(outcome.review)
        known.add(key)
    return result


OVERLAP = timedelta(seconds=5)  # re-read a little before the cursor; known records are skipped


def known_records(lake_dir: Path) -> set[str]:
    """Ids of the label events and reviews the lake holds."""
    known: set[str] = set()
    for table, column in (("label_events", "event_id"), ("label_reviews", "review_id")):
        for part in row_groups(list_table(lake_dir, table), [column]):
            known.update(part.table[column].to_pylist())
    return known


def run_sync(
    settings: Settings, studio: LabelStudio, project: int, now: datetime | None = None
) -> SyncResult:
    """Read tasks changed since the cursor, commit new events and reviews, move the cursor.

    The cursor is read and moved under the lake's writer lock, and only once the batch is
    committed: a sync that fails leaves it where it was, so the next one reads those
    annotations again. ``now`` (default: the current time) stamps the records.
    """
    cursor_file = settings.labelling_dir / f"sync-cursor-project-{project}.json"
    now = now or datetime.now(UTC)
    labelling = settings.labelling
    with lake.writer(settings, "label sync"):
        cursor = read_cursor(cursor_file)
        result = collect(
            studio.changed_tasks(project, cursor - OVERLAP if cursor else None),
            known_records(settings.lake_dir),
            labelling.min_agreement,
            labelling.confident,
            now,
            cursor,
        )
        if tables := result.tables():
            result.batch_id = commit_tables(settings, tables, result.counts(), now)
        if result.cursor is not None and result.cursor != cursor:
            write_cursor(cursor_file, result.cursor)
    return result


def commit_tables(
    settings: Settings, tables: dict[str, pa.Table], counts: dict[str, int], now: datetime
) -> str:
    """Stage and commit one label batch under a fresh batch id; returns the id."""
    batch_id = new_batch_id("labels", now)
    taken = [name for name in tables if lake.partition_dir(settings, name, batch_id).exists()]
    if taken:  # a commit would skip these partitions: the labels would be lost
        raise FileExistsError(f"label batch {batch_id} is already in the lake ({taken})")
    staging = lake.stage(settings, batch_id)
    for name, table in tables.items():
        staging.table(name).mkdir()
        pq.write_table(table, staging.table(name) / "part-00000.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id, **counts})
    return batch_id


def read_cursor(path: Path) -> datetime | None:
    """The ``updated_at`` up to which a project's tasks were synced (None: never)."""
    if not path.exists():
        return None
    return datetime.fromisoformat(json.loads(path.read_text())["updated_at"])


def write_cursor(path: Path, cursor: datetime) -> None:
    """Replace the cursor file atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"updated_at": cursor.isoformat()}))
    os.replace(temporary, path)
