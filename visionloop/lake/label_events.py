"""Label events: the append-only history of what each image is labelled.

Ingest records the label a file came with (``seed``); label sync records annotators' labels
(``annotator``); an exclusion has no label (``excluded``). An image's label is its latest
event (:func:`latest_labels`, which every reader of labels uses, e.g.
:meth:`visionloop.lake.snapshot.LakeSnapshot.labels`); images are never rewritten.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.lake.contract import LABEL_EVENTS_SCHEMA

SEED, ANNOTATOR = "seed", "annotator"
#: What :func:`latest_labels` reads of each event, and the order that makes one the latest.
_LATEST_COLUMNS = ["image_id", "label", "label_source", "recorded_at", "event_id"]
_ORDER = [("image_id", "ascending"), ("recorded_at", "ascending"), ("event_id", "ascending")]
LATEST_SCHEMA = pa.schema(
    [(name, LABEL_EVENTS_SCHEMA.field(name).type) for name in ("image_id", "label", "label_source")]
)


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


def latest_labels(paths: Sequence[str | Path], image_ids: pa.Array | None = None) -> pa.Table:
    """Each image's latest label event: one row of ``image_id``, ``label``, ``label_source``.

    Latest is the greatest ``(recorded_at, event_id)``. Reads only the five columns it needs,
    one row group at a time; with ``image_ids``, keeps only the events of those images.
    Rows are in no particular order.
    """
    parts = list(_event_groups(paths, image_ids))
    events = pa.concat_tables(parts) if parts else LATEST_SCHEMA.empty_table()
    if not events.num_rows:
        return LATEST_SCHEMA.empty_table()
    counts = pc.value_counts(events["image_id"])
    repeated = pc.is_in(
        events["image_id"], counts.field("values").filter(pc.greater(counts.field("counts"), 1))
    )
    several = _last_of_each(events.filter(repeated))  # only images with several events
    latest = pa.concat_tables([events.filter(pc.invert(repeated)), several])
    return latest.select(LATEST_SCHEMA.names).cast(LATEST_SCHEMA)


def _last_of_each(events: pa.Table) -> pa.Table:
    """The latest event of each image in ``events``."""
    if not events.num_rows:
        return events
    ordered = events.sort_by(_ORDER)
    ids = ordered["image_id"].combine_chunks()
    return ordered.filter(pa.concat_arrays([pc.not_equal(ids[:-1], ids[1:]), pa.array([True])]))


def _event_groups(paths: Sequence[str | Path], image_ids: pa.Array | None) -> Iterable[pa.Table]:
    for path in paths:
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            part = parquet.read_row_group(group, columns=_LATEST_COLUMNS)
            if image_ids is not None:
                part = part.filter(pc.is_in(part["image_id"], image_ids))
            yield part
