"""The data contract: the lake's tables, the quarantine reasons, and the split rule.

All tables are plain Parquet datasets partitioned hive-style by ``batch_id``
(``images/batch_id=<id>/part-*.parquet``), so Spark, pyarrow and petastorm's
``make_batch_reader`` read them as they are; ``batch_id`` is the partition column.
"""

from __future__ import annotations

import hashlib
from enum import StrEnum

import pyarrow as pa

from visionloop.settings import SplitFractions

SPLITS = ("train", "val", "test")

IMAGE_COLUMNS: dict[str, pa.DataType] = {
    "image_id": pa.string(),  # sha256 hex of the original file bytes
    "image": pa.binary(),  # preprocessed image, encoded (PNG or JPEG)
    "image_format": pa.string(),  # encoding of ``image``
    "label": pa.string(),  # class name, null for the unlabelled pool
    "label_source": pa.string(),  # seed | annotator
    "annotator": pa.string(),  # who labelled it (annotator labels only)
    "labelled_at": pa.timestamp("us", tz="UTC"),
    "split": pa.string(),  # train | val | test
    "width": pa.int32(),  # of the original
    "height": pa.int32(),
    "mode": pa.string(),  # PIL mode of the original
    "source_format": pa.string(),  # format detected from the original bytes
    "source_uri": pa.string(),
    "ingested_at": pa.timestamp("us", tz="UTC"),
}
IMAGES_SCHEMA = pa.schema(list(IMAGE_COLUMNS.items()))

QUARANTINE_COLUMNS: dict[str, pa.DataType] = {
    "uri": pa.string(),
    "reason": pa.string(),
    "detail": pa.string(),
    "label": pa.string(),
    "image_id": pa.string(),  # when the bytes could be read
    "quarantined_at": pa.timestamp("us", tz="UTC"),
}
QUARANTINE_SCHEMA = pa.schema(list(QUARANTINE_COLUMNS.items()))

TIMESTAMP = pa.timestamp("us", tz="UTC")

#: Label events: append-only; the label an image has is its latest event (``recorded_at``).
#: Ingest records the label a file came with (``seed``), label sync the annotators' labels.
LABEL_EVENT_COLUMNS: dict[str, pa.DataType] = {
    "event_id": pa.string(),  # sha256 of what makes the event unique
    "image_id": pa.string(),
    "label": pa.string(),
    "label_source": pa.string(),  # seed | annotator
    "annotator": pa.string(),  # who (annotator events)
    "labelled_at": TIMESTAMP,  # when the label was given
    "recorded_at": TIMESTAMP,  # when the lake learned it (the point-in-time clock)
    "task_id": pa.int64(),  # Label Studio task and annotation (annotator events)
    "annotation_id": pa.int64(),
}
LABEL_EVENTS_SCHEMA = pa.schema(list(LABEL_EVENT_COLUMNS.items()))

#: Annotations that did not become a label: skipped tasks, ties, too little agreement, or a
#: disagreement with a confident prediction. Kept for review, never used for training.
LABEL_REVIEW_COLUMNS: dict[str, pa.DataType] = {
    "review_id": pa.string(),  # sha256 of the task and the annotations reviewed
    "image_id": pa.string(),
    "task_id": pa.int64(),
    "reason": pa.string(),  # skipped | tie | low_agreement | disagrees_with_confident_model
    "votes": pa.string(),  # JSON: {label: count}
    "annotators": pa.string(),
    "annotation_ids": pa.string(),
    "predicted": pa.string(),
    "confidence": pa.float64(),
    "recorded_at": TIMESTAMP,
}
LABEL_REVIEWS_SCHEMA = pa.schema(list(LABEL_REVIEW_COLUMNS.items()))

#: Model outputs per image, for one model version; ``probabilities`` in the model's label order.
PREDICTION_COLUMNS: dict[str, pa.DataType] = {
    "image_id": pa.string(),
    "model_name": pa.string(),
    "model_version": pa.string(),
    "label": pa.string(),
    "probabilities": pa.list_(pa.float64()),
    "confidence": pa.float64(),  # top probability
    "margin": pa.float64(),  # top minus second probability
    "entropy": pa.float64(),  # of the probabilities, in nats
    "scored_at": TIMESTAMP,
}
PREDICTIONS_SCHEMA = pa.schema(list(PREDICTION_COLUMNS.items()))


def embeddings_schema(dimensions: int, fingerprint: int) -> pa.Schema:
    """One vector per (image, embedder version); never two versions in one vector space.

    ``fingerprint`` is the image's pixel search key (a shift-invariant spectrum that proposes
    near-duplicate candidates, see :mod:`visionloop.embeddings.fingerprints`), whose version
    is part of the embedder's.
    """
    return pa.schema(
        [
            ("image_id", pa.string()),
            ("embedder_version", pa.string()),
            ("vector", pa.list_(pa.float32(), dimensions)),
            ("fingerprint", pa.list_(pa.float32(), fingerprint)),
            ("created_at", TIMESTAMP),
        ]
    )


#: The arrival ledger: one row per landing file an ingest placed (written, duplicate or
#: quarantined), with the size and mtime it had. A later ingest skips a file whose path,
#: size, mtime and label are in the ledger without opening it.
ARRIVAL_COLUMNS: dict[str, pa.DataType] = {
    "source_uri": pa.string(),
    "size": pa.int64(),  # -1: the file could not be stat'ed
    "mtime_ns": pa.int64(),
    "label": pa.string(),  # the label it came with
    "outcome": pa.string(),  # new | duplicate | quarantine
    "image_id": pa.string(),
    "reason": pa.string(),  # quarantine reason
    "placed_at": TIMESTAMP,
}
ARRIVALS_SCHEMA = pa.schema(list(ARRIVAL_COLUMNS.items()))

DUPLICATES_SCHEMA = pa.schema(
    [("uri", pa.string()), ("image_id", pa.string()), ("duplicate_of", pa.string())]
)

PARTITION_COLUMN = "batch_id"


class Reason(StrEnum):
    """Why a file went to quarantine. Every value names a distinct, fixable problem."""

    EMPTY_FILE = "empty_file"
    FILE_TOO_LARGE = "file_too_large"
    UNREADABLE = "unreadable"
    MISSING = "missing_file"
    NOT_A_FILE = "not_a_regular_file"
    SYMLINK_LOOP = "symlink_loop"
    OUTSIDE_ROOT = "outside_landing_root"
    NOT_AN_IMAGE = "not_an_image"
    UNSUPPORTED_FORMAT = "unsupported_format"
    CORRUPT = "corrupt_image"
    DECOMPRESSION_BOMB = "decompression_bomb"
    LABEL_CONFLICT = "label_conflict"
    LABEL_FOR_EXISTING = "label_for_existing_image"


def split_for(image_id: str, fractions: SplitFractions) -> str:
    """Assign a split from the image id alone, so it never changes as the lake grows."""
    digest = hashlib.sha256(f"split:{image_id}".encode()).digest()
    position = int.from_bytes(digest[:8], "big") / 2**64
    if position < fractions.train:
        return "train"
    if position < fractions.train + fractions.val:
        return "val"
    return "test"
