"""Label events: the append-only history of what each image is labelled.

Ingest records the label a file came with (``seed``); label sync records annotators' labels
(``annotator``). An image's label is its latest event (see
:meth:`visionloop.lake.snapshot.LakeSnapshot.labels`); images are never rewritten.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from visionloop.lake.contract import LABEL_EVENTS_SCHEMA

SEED, ANNOTATOR = "seed", "annotator"


def event_id(*parts: object) -> str:
    """A deterministic id: the same event recorded twice is recognisably the same."""
    return hashlib.sha256("\t".join(str(part) for part in parts).encode()).hexdigest()


def seed_events(images: pa.RecordBatch | pa.Table, recorded_at: datetime) -> pa.Table:
    """One ``seed`` event per labelled row of an images-table batch."""
    labelled = images.filter(pc.is_valid(images["label"]))
    ids, labels = labelled["image_id"].to_pylist(), labelled["label"].to_pylist()
    return events_table(
        {
            "event_id": event_id(SEED, image_id, label),
            "image_id": image_id,
            "label": label,
            "label_source": SEED,
            "labelled_at": recorded_at,
            "recorded_at": recorded_at,
        }
        for image_id, label in zip(ids, labels, strict=True)
    )


def events_table(rows: Iterable[Mapping[str, Any]]) -> pa.Table:
    """Rows as a label-events table; columns a row leaves out are null."""
    return pa.Table.from_pylist(
        [{name: row.get(name) for name in LABEL_EVENTS_SCHEMA.names} for row in rows],
        schema=LABEL_EVENTS_SCHEMA,
    )
