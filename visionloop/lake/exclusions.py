"""Images kept out of training: leaked copies, erasure requests, an operator's call.

An exclusion is a label event (``label_source = excluded``, no label): the image's latest
event decides its label, so an excluded image drops out of every labelled split at once,
the snapshot and a model's lineage count it, and it is never handed to annotators. Nothing
is rewritten: the image stays in the lake and the event says who excluded it.
"""

from __future__ import annotations

from collections.abc import Collection
from datetime import UTC, datetime

import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.lake import commit as lake
from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.label_events import event_id, events_table
from visionloop.settings import Settings

EXCLUDED = "excluded"


def exclusion_events(image_ids: Collection[str], by: str, now: datetime) -> pa.Table:
    """One ``excluded`` event per image, recorded ``by`` someone (or a check)."""
    return events_table(
        {
            "event_id": event_id(EXCLUDED, image_id, by, now.isoformat()),
            "image_id": image_id,
            "label": None,
            "label_source": EXCLUDED,
            "annotator": by,
            "labelled_at": now,
            "recorded_at": now,
        }
        for image_id in sorted(set(image_ids))
    )


def exclude(settings: Settings, image_ids: Collection[str], by: str, reason: str) -> str | None:
    """Commit exclusion events for ``image_ids``; the batch id, or None when there are none."""
    if not image_ids:
        return None
    now = datetime.now(UTC)
    batch_id = new_batch_id(EXCLUDED, now)
    with lake.writer(settings, f"exclusions by {by}"):
        staging = lake.stage(settings, batch_id)
        folder = staging.table("label_events")
        folder.mkdir()
        pq.write_table(
            exclusion_events(image_ids, by, now), folder / f"part-00000-{batch_id}.parquet"
        )
        report = {"batch_id": batch_id, "excluded": len(set(image_ids)), "by": by, "reason": reason}
        lake.commit(settings, batch_id, report)
    return batch_id
