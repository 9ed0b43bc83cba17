"""Atomic batch commits into the lake.

A batch is written whole under ``_staging/<batch_id>/`` (one folder per table), then a
``_READY`` marker holding the batch report is written, then the label map is extended with
the batch's classes and each table folder, with a manifest of its files' sizes and hashes
(:func:`~visionloop.lake.snapshot.write_manifest`), is renamed into
``<table>/batch_id=<batch_id>``.
Renames are atomic on one filesystem, and a batch interrupted between marker and renames is
rolled forward on the next start; one interrupted before its marker is discarded. Readers
never see a partial batch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow.dataset as ds

from visionloop import locks
from visionloop.lake import label_map
from visionloop.lake.snapshot import list_table, write_manifest
from visionloop.settings import Settings

#: Tables a staged batch may hold: an ingest batch its images, seed label events,
#: quarantine, duplicates, TFRecords and arrival-ledger rows; an embedding or scoring run
#: its own table; a label sync its label events and reviews.
TABLES = (
    "images",
    "file_stats",  # the gate's per-file aggregates of the images (visionloop.quality)
    "label_events",
    "label_reviews",
    "quarantine",
    "duplicates",
    "tfrecord",
    "embeddings",
    "predictions",
    "arrivals",
)
READY_MARKER = "_READY"


@dataclass(frozen=True)
class BatchStaging:
    """Where a batch is written before it is committed."""

    root: Path

    def table(self, name: str) -> Path:
        return self.root / name

    @property
    def listing(self) -> Path:
        return self.root / "listing.parquet"

    @property
    def processed(self) -> Path:
        return self.root / "processed"

    @property
    def narrow(self) -> Path:
        return self.root / "narrow"

    @property
    def decisions(self) -> Path:
        return self.root / "decisions"


@contextmanager
def writer(settings: Settings, holder: str) -> Iterator[None]:
    """Be the lake's only writer while staging, gating and committing a batch.

    Batches written at the same time would each miss the other's rows when deduplicating,
    and one's start-up recovery would discard the other's staging folder. A second writer
    waits up to ``lake_lock_timeout_s``, then fails naming the holder. ``lake_lock: file``
    is a flock on the lake (writers on one machine); ``prefect`` a global concurrency limit
    of the lake on the Prefect server (writers on any machine).
    """
    if settings.lake_lock == "prefect":
        from visionloop import shared_lock  # imports Prefect's client

        name = writer_limit(settings)
        with shared_lock.exclusive(name, holder, timeout_s=settings.lake_lock_timeout_s):
            yield
        return
    path = settings.lake_dir / ".writer.lock"
    with locks.exclusive(path, holder, timeout_s=settings.lake_lock_timeout_s):
        yield


def writer_limit(settings: Settings) -> str:
    """The Prefect concurrency limit of this lake's writer (one per lake on a server)."""
    key = hashlib.sha256(str(settings.lake_dir).encode()).hexdigest()[:12]
    return f"visionloop-lake-writer-{key}"


def table_dir(settings: Settings, name: str) -> Path:
    return settings.lake_dir / name


def partition_dir(settings: Settings, name: str, batch_id: str) -> Path:
    return table_dir(settings, name) / f"batch_id={batch_id}"


def stage(settings: Settings, batch_id: str) -> BatchStaging:
    """A fresh staging folder for ``batch_id``."""
    root = settings.staging_dir / batch_id
    if root.exists():
        shutil.rmtree(root)
    root.mkdir(parents=True)
    return BatchStaging(root)


def commit(settings: Settings, batch_id: str, report: dict[str, Any]) -> None:
    """Mark the staged batch complete, then move its tables into the lake."""
    staging = BatchStaging(settings.staging_dir / batch_id)
    marker = staging.root / READY_MARKER
    temporary = marker.with_suffix(".tmp")
    temporary.write_text(json.dumps(report, indent=2, default=str))
    temporary.rename(marker)
    _roll_forward(settings, batch_id, staging)


def _roll_forward(settings: Settings, batch_id: str, staging: BatchStaging) -> None:
    classes = batch_label_map(settings, batch_labels(settings, staging, batch_id))
    if classes != label_map.read(settings.lake_dir):
        label_map.write(settings.lake_dir, classes)
    for name in TABLES:
        source = staging.table(name)
        target = partition_dir(settings, name, batch_id)
        if source.exists() and not target.exists():
            write_manifest(source)  # moves with the files: a partition never lacks it
            target.parent.mkdir(parents=True, exist_ok=True)
            source.rename(target)
    reports = settings.lake_dir / "_batches"
    reports.mkdir(parents=True, exist_ok=True)
    (staging.root / READY_MARKER).replace(reports / f"{batch_id}.json")
    shutil.rmtree(staging.root)


def batch_labels(settings: Settings, staging: BatchStaging, batch_id: str) -> set[str]:
    """The distinct labels a batch brings (images and label events), staged or moved."""
    labels: set[str] = set()
    for table in ("images", "label_events"):
        folder = staging.table(table)
        if not folder.exists():  # moved into the lake before an interruption
            folder = partition_dir(settings, table, batch_id)
        if any(folder.glob("*.parquet")):
            column = ds.dataset(folder, format="parquet").to_table(columns=["label"])["label"]
            labels.update(label for label in column.unique().to_pylist() if label is not None)
    return labels


def batch_label_map(settings: Settings, labels: set[str]) -> tuple[str, ...]:
    """The label map once a batch with ``labels`` is committed (index order, append-only)."""
    return label_map.extended(label_map.read(settings.lake_dir), settings.classes, labels)


def discard(settings: Settings, batch_id: str) -> None:
    """Drop a staged batch that turned out to hold nothing."""
    shutil.rmtree(settings.staging_dir / batch_id, ignore_errors=True)


def hold(settings: Settings, batch_id: str, report: dict[str, Any]) -> Path:
    """Keep a batch that failed its gate out of the lake, for inspection; returns where."""
    held = settings.lake_dir / "_held" / batch_id
    held.parent.mkdir(parents=True, exist_ok=True)
    (settings.staging_dir / batch_id).rename(held)
    (held / "report.json").write_text(json.dumps(report, indent=2, default=str))
    return held


def recover(settings: Settings) -> list[str]:
    """Finish batches that reached their marker and discard the rest; returns finished ids."""
    finished = []
    if not settings.staging_dir.exists():
        return finished
    for root in sorted(settings.staging_dir.iterdir()):
        if (root / READY_MARKER).exists():
            _roll_forward(settings, root.name, BatchStaging(root))
            finished.append(root.name)
        else:
            shutil.rmtree(root)
    return finished


def committed_batches(settings: Settings) -> list[dict[str, Any]]:
    """The reports of committed batches, oldest first."""
    reports = settings.lake_dir / "_batches"
    if not reports.exists():
        return []
    return [json.loads(path.read_text()) for path in sorted(reports.glob("*.json"))]


def recent_ingests(settings: Settings, days: int = 0) -> list[str]:
    """Ingest batches committed in the last ``days`` days; with 0, the latest one."""
    ingests = [report for report in committed_batches(settings) if _is_ingest(report)]
    if not days:
        return [ingests[-1]["batch_id"]] if ingests else []
    since = datetime.now(UTC) - timedelta(days=days)
    return [r["batch_id"] for r in ingests if datetime.fromisoformat(r["ingested_at"]) >= since]


def _is_ingest(report: dict[str, Any]) -> bool:
    return "read" in report or "files_in" in report  # files_in: reports before the ledger


def has_rows(settings: Settings, name: str = "images") -> bool:
    """Whether a lake table holds at least one committed Parquet file."""
    return bool(list_table(settings.lake_dir, name))
