"""Compaction and retention of the lake's append-only side tables, safe beside readers.

Every night adds small files to ``arrivals``, ``predictions``, ``embeddings``,
``duplicates`` and ``quarantine``; a new champion or embedder leaves the previous version's
rows behind. :func:`compact` rewrites a table's partitions (one group per version) into one
new partition; :func:`retire_versions` hides the partitions of versions nobody reads.

Neither deletes at once. ``<table>/_superseded.json`` lists which partitions a newer one
replaced (or retention retired), and :func:`visionloop.lake.snapshot.list_table` leaves those
out. The entry is written first and the new partition committed by one rename, so a reader
lists either the old partitions or the new one, never both; files a reader listed before
stay on disk for ``grace_hours`` and are removed by a later run. The images table and the
label events are never compacted: registered models' snapshots name their exact files.
"""

from __future__ import annotations

import json
import os
import shutil
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow.parquet as pq

from visionloop.lake import commit as lake
from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.contract import PARTITION_COLUMN
from visionloop.lake.snapshot import (
    IMAGES,
    LABEL_EVENTS,
    MANIFEST,
    in_effect,
    list_table,
    superseded,
    superseded_path,
    write_manifest,
)
from visionloop.lake.versions import version_key
from visionloop.settings import Settings

COMPACTED_TABLES = ("arrivals", "duplicates", "quarantine", "embeddings", "predictions")
VERSIONED_TABLES = ("embeddings", "predictions")
SNAPSHOT_TABLES = (IMAGES, LABEL_EVENTS)


@dataclass(frozen=True)
class Compacted:
    """What one table's maintenance did."""

    table: str
    partitions_before: int
    partitions_after: int
    retired: int  # partitions of versions no longer kept
    removed: int  # superseded partitions deleted after their grace period

    def row(self) -> dict[str, int | str]:
        return self.__dict__.copy()


def _save_entries(table_dir: Path, entries: list[dict]) -> None:
    path = superseded_path(table_dir)
    if not entries and not path.exists():
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(entries, indent=1))
    os.replace(temporary, path)


def _partitions(settings: Settings, table: str) -> dict[str, list[Path]]:
    """Visible partitions of ``table`` and their files."""
    files: dict[str, list[Path]] = defaultdict(list)
    for path in list_table(settings.lake_dir, table):
        files[path.parent.name.removeprefix(f"{PARTITION_COLUMN}=")].append(path)
    return dict(files)


def _version_of(table: str, batch_id: str) -> str | None:
    marker = f"-{table}-v"
    if marker not in batch_id:
        return None
    return "v" + batch_id.split(marker, 1)[1].split("-", 1)[0]


def _committed_at(batch_id: str) -> datetime:
    return datetime.strptime(batch_id[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)


def remove_superseded(settings: Settings, table: str, grace: timedelta, now: datetime) -> int:
    """Delete partitions superseded longer than ``grace`` ago; returns how many.

    Run after :func:`visionloop.lake.commit.recover`: an entry whose new partition is not
    committed by then belongs to a compaction that died, and is dropped.
    """
    table_dir = lake.table_dir(settings, table)
    keep, removed = [], 0
    for entry in superseded(table_dir):
        if not in_effect(table_dir, entry):
            continue
        if now - datetime.fromisoformat(entry["at"]) < grace:
            keep.append(entry)
            continue
        for old in entry["old"]:
            shutil.rmtree(lake.partition_dir(settings, table, old), ignore_errors=True)
            removed += 1
    _save_entries(table_dir, keep)
    return removed


def retire_versions(
    settings: Settings, table: str, keep: set[str], older_than: timedelta, now: datetime
) -> int:
    """Hide partitions of versions not in ``keep`` committed before ``older_than`` ago."""
    keys = {version_key(version) for version in keep}
    retired = [
        batch
        for batch in _partitions(settings, table)
        if (key := _version_of(table, batch)) is not None
        and key not in keys
        and now - _committed_at(batch) >= older_than
    ]
    if retired:
        table_dir = lake.table_dir(settings, table)
        entry = {"new": None, "old": retired, "at": now.isoformat(), "why": "retention"}
        _save_entries(table_dir, [*superseded(table_dir), entry])
    return len(retired)


def compact_table(settings: Settings, table: str, now: datetime) -> int:
    """Merge the small partitions of each group (one group per version) once there are
    ``lake_maintenance.min_files`` of them; returns how many partitions were merged.

    Partitions of ``target_rows`` or more are left alone, so a night rewrites its recent
    small files, not the table.
    """
    options = settings.lake_maintenance
    groups: dict[str | None, list[str]] = defaultdict(list)
    partitions = _partitions(settings, table)
    for batch, files in partitions.items():
        if sum(pq.ParquetFile(path).metadata.num_rows for path in files) < options.target_rows:
            groups[_version_of(table, batch)].append(batch)
    merged = 0
    for key, batches in groups.items():
        if len(batches) < options.min_files:
            continue
        latest = _committed_at(max(batches))  # the group keeps the age of its newest rows
        new = new_batch_id(f"{table}-{key}" if key else f"{table}-compacted", latest)
        staging = lake.stage(settings, new)
        files = [path for batch in sorted(batches) for path in partitions[batch]]
        _rewrite(files, staging.table(table) / f"part-00000-{new}.parquet", settings)
        table_dir = lake.table_dir(settings, table)
        entry = {"new": new, "old": sorted(batches), "at": now.isoformat(), "why": "compaction"}
        _save_entries(table_dir, [*superseded(table_dir), entry])
        lake.commit(settings, new, {"batch_id": new, "table": table, "compacted": sorted(batches)})
        merged += len(batches)
    return merged


def _rewrite(files: list[Path], target: Path, settings: Settings) -> None:
    target.parent.mkdir(parents=True)
    schema = pq.read_schema(files[0])
    with pq.ParquetWriter(target, schema, compression="zstd") as writer:
        for path in files:
            parquet = pq.ParquetFile(path)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group).cast(schema)
                writer.write_table(table, row_group_size=settings.parquet_row_group_rows)


def backfill_manifests(settings: Settings) -> int:
    """Give partitions committed before manifests existed theirs (once); returns how many.

    Only the tables a snapshot describes: their files are hashed once here instead of by
    every snapshot.
    """
    missing = {
        path.parent
        for table in SNAPSHOT_TABLES
        for path in list_table(settings.lake_dir, table)
        if not (path.parent / MANIFEST).exists()
    }
    for partition in sorted(missing):
        write_manifest(partition)
    return len(missing)


def maintain(
    settings: Settings, keep_versions: dict[str, set[str]], now: datetime | None = None
) -> list[Compacted]:
    """Retire unkept versions, compact, and delete what was superseded long enough ago."""
    now = now or datetime.now(UTC)
    grace = timedelta(hours=settings.lake_maintenance.grace_hours)
    retention = timedelta(days=settings.lake_maintenance.retention_days)
    results = []
    with lake.writer(settings, "lake maintenance"):
        lake.recover(settings)
        backfill_manifests(settings)
        for table in COMPACTED_TABLES:
            before = len(_partitions(settings, table))
            retired = 0
            if table in keep_versions:
                retired = retire_versions(settings, table, keep_versions[table], retention, now)
            compact_table(settings, table, now)
            removed = remove_superseded(settings, table, grace, now)
            after = len(_partitions(settings, table))
            results.append(Compacted(table, before, after, retired, removed))
    return results
