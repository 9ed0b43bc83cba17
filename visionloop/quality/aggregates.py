"""What the gate checks, read with bounded memory and at a cost that follows the batch.

* :func:`batch_frame` — the new batch's rows (metadata and image length, never the image
  bytes) as a pandas frame: memory grows with the batch, not the lake.
* :func:`table_file_stats` — one row of column aggregates per Parquet file of the table
  the batch would make. What does not depend on the batch (rows, nulls, empty images,
  splits, sizes, schema) is aggregated once per file, when its batch is gated, and kept in
  the ``file_stats`` table beside it (``_staging/<batch>/file_stats/``, moved into
  ``file_stats/batch_id=<batch>/`` by the commit), so the gate never reads the lake's image
  bytes. Files without current aggregates (lakes from before them) are aggregated once and
  their aggregates kept, with a log line.

What depends on the batch is read from the narrow columns at gate time: ``image_id`` (no
batch id may be in another file; uniqueness across the table holds by induction, as every
batch is checked against every committed file before it commits) and each image's label,
which is its latest label event (:func:`visionloop.lake.label_events.latest_labels`), or
the label it came with when it has none.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.lake.contract import IMAGES_SCHEMA, PARTITION_COLUMN, SPLITS
from visionloop.lake.label_events import latest_labels
from visionloop.lake.snapshot import IMAGES, LABEL_EVENTS, list_table, row_groups
from visionloop.settings import Settings

NBYTES_COLUMN = "image_nbytes"
LOGGER = logging.getLogger(__name__)


def batch_schema() -> pa.Schema:
    """A batch frame's columns: the contract's, less ``image``, plus its length and batch."""
    schema = IMAGES_SCHEMA.remove(IMAGES_SCHEMA.get_field_index("image"))
    return schema.append(pa.field(NBYTES_COLUMN, pa.int64())).append(
        pa.field(PARTITION_COLUMN, pa.string())
    )


def batch_columns() -> list[str]:
    return batch_schema().names


def _with_nbytes(table: pa.Table) -> pa.Table:
    if "image" not in table.column_names:
        return table
    nbytes = pc.binary_length(table["image"]).cast(pa.int64())
    return table.drop_columns(["image"]).append_column(NBYTES_COLUMN, nbytes)


def _file_rows(path: Path, batch_id: str) -> pa.Table:
    """A file's rows with ``image`` replaced by its length (one row group in memory at once)."""
    parquet = pq.ParquetFile(path)
    parts = [_with_nbytes(parquet.read_row_group(group)) for group in range(parquet.num_row_groups)]
    table = pa.concat_tables(parts) if parts else _with_nbytes(parquet.schema_arrow.empty_table())
    return table.append_column(PARTITION_COLUMN, pa.array([batch_id] * len(table), pa.string()))


def batch_frame(files: Sequence[Path], batch_id: str) -> pd.DataFrame:
    """The batch's rows, metadata and ``image_nbytes`` only."""
    tables = [_file_rows(path, batch_id) for path in files]
    if not tables:  # typed, so an empty batch (all duplicates) passes the schema checks
        return batch_schema().empty_table().to_pandas()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def staged_or_committed(settings: Settings, batch_id: str) -> list[Path]:
    """The batch's images files: staged when it is staged, else committed."""
    staged = settings.staging_dir / batch_id / IMAGES
    if staged.is_dir():
        return sorted(staged.glob("*.parquet"))
    return sorted((settings.images_dir / f"{PARTITION_COLUMN}={batch_id}").glob("*.parquet"))


FILE_STAT_COLUMNS = [
    "file",
    PARTITION_COLUMN,
    "rows",
    "schema_matches",
    "null_image_ids",
    "ids_in_other_files",
    "empty_images",
    "unknown_splits",
    "labels_not_allowed",
    "min_width",
    "max_width",
    "min_height",
    "max_height",
]

# Stored aggregates: one row per images file, written once, read by every later gate.

STATS_TABLE = "file_stats"
STATS_FILE = "part-0.parquet"
STATS_VERSION = 1  # bump when what is aggregated changes: older rows are recomputed
STORED_COLUMNS: dict[str, pa.DataType] = {
    "file": pa.string(),  # the images file's name in its partition
    "file_size": pa.int64(),  # its size when aggregated; another size means recompute
    "version": pa.int32(),
    "rows": pa.int64(),
    "schema_matches": pa.bool_(),
    "null_image_ids": pa.int64(),
    "empty_images": pa.int64(),
    **{f"{split}_rows": pa.int64() for split in SPLITS},
    "unknown_splits": pa.int64(),  # rows whose split is null or not a known split
    "min_width": pa.int32(),
    "max_width": pa.int32(),
    "min_height": pa.int32(),
    "max_height": pa.int32(),
}
STORED_SCHEMA = pa.schema(list(STORED_COLUMNS.items()))
_CARRIED = [name for name in FILE_STAT_COLUMNS if name in STORED_COLUMNS and name != "file"]


def _schema_matches(path: Path) -> bool:
    schema = pq.read_schema(path)
    return schema.remove_metadata().equals(IMAGES_SCHEMA.remove_metadata())


def aggregate_file(path: Path) -> dict[str, object]:
    """One images file's batch-independent aggregates (reads its image lengths, so: once)."""
    row: dict[str, object] = {
        "file": path.name,
        "file_size": path.stat().st_size,
        "version": STATS_VERSION,
        "rows": 0,
        "schema_matches": _schema_matches(path),
        "null_image_ids": 0,
        "empty_images": 0,
    }
    splits: Counter[str | None] = Counter()
    extremes: dict[str, list[int]] = {"width": [], "height": []}
    for part in row_groups([path], ["image_id", "split", "width", "height", "image"]):
        table = part.table
        row["rows"] += len(table)
        row["null_image_ids"] += table["image_id"].null_count
        row["empty_images"] += _count(
            pc.equal(pc.fill_null(pc.binary_length(table["image"]), 0), 0)
        )
        splits.update(table["split"].to_pylist())
        for name, values in extremes.items():
            values += [v for v in pc.min_max(table[name]).as_py().values() if v is not None]
    row |= {f"{split}_rows": splits.pop(split, 0) for split in SPLITS}
    row["unknown_splits"] = sum(splits.values())
    for name, values in extremes.items():
        row[f"min_{name}"], row[f"max_{name}"] = (
            min(values, default=None),
            max(values, default=None),
        )
    return row


def stored_aggregates(files: Sequence[Path], folder: Path) -> list[dict[str, object]]:
    """The files' aggregates kept in ``folder``; missing or stale ones are computed and kept."""
    stored = _read_stored(folder)
    current = {p.name: stored[p.name] for p in files if _current(stored.get(p.name), p)}
    if len(current) == len(files):
        return [current[path.name] for path in files]
    LOGGER.info(
        "file_stats: aggregating %d of %d images files for %s (no current aggregates kept)",
        len(files) - len(current),
        len(files),
        folder,
    )
    rows = [current.get(path.name) or aggregate_file(path) for path in files]
    _write_stored(folder, rows)
    return rows


def _current(row: dict[str, object] | None, path: Path) -> bool:
    return (
        row is not None
        and row["version"] == STATS_VERSION
        and row["file_size"] == path.stat().st_size
    )


def _read_stored(folder: Path) -> dict[str, dict[str, object]]:
    path = folder / STATS_FILE
    if not path.is_file():
        return {}
    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowInvalid) as error:
        LOGGER.warning("file_stats: %s is unreadable (%s); recomputing it", path, error)
        return {}
    if not set(STORED_SCHEMA.names) <= set(table.column_names):
        return {}
    return {row["file"]: row for row in table.select(STORED_SCHEMA.names).to_pylist()}


def _write_stored(folder: Path, rows: list[dict[str, object]]) -> None:
    """Replace ``folder``'s aggregates atomically (write aside, then rename)."""
    if not rows:
        return
    folder.mkdir(parents=True, exist_ok=True)
    temporary = folder / f".{STATS_FILE}.tmp"
    pq.write_table(pa.Table.from_pylist(rows, schema=STORED_SCHEMA), temporary)
    temporary.replace(folder / STATS_FILE)


def stats_folder(settings: Settings, batch_id: str) -> Path:
    """Where the batch's aggregates are kept: staged with it, or in its lake partition."""
    staged = settings.staging_dir / batch_id
    if (staged / IMAGES).is_dir():
        return staged / STATS_TABLE
    return settings.lake_dir / STATS_TABLE / f"{PARTITION_COLUMN}={batch_id}"


# The table as the gate sees it.


@dataclass
class TableStats:
    """The table's aggregates: one row and one class count per file, plus split counts."""

    files: list[dict[str, object]] = field(default_factory=list)
    file_labels: list[Counter[str]] = field(default_factory=list)  # rows per effective label
    split_rows: Counter[str] = field(default_factory=Counter)
    prior_labels: set[str] = field(default_factory=set)  # labels of files outside the batch

    @property
    def rows(self) -> int:
        return sum(self.split_rows.values())

    @property
    def class_counts(self) -> Counter[str]:
        return sum(self.file_labels, Counter())

    def add(
        self,
        path: Path,
        batch_id: str,
        stored: dict[str, object],
        shared: int,
        labels: Counter[str],
    ) -> None:
        """One file: its stored aggregates, its ids shared with other files, its labels."""
        row = {"file": f"{path.parent.name}/{path.name}", PARTITION_COLUMN: batch_id}
        self.files.append(
            row | {name: stored[name] for name in _CARRIED} | {"ids_in_other_files": shared}
        )
        self.file_labels.append(labels)
        self.split_rows.update({split: int(stored[f"{split}_rows"]) for split in SPLITS})
        self.split_rows["unknown"] += int(stored["unknown_splits"])

    def frame(self, allowed: set[str] | None) -> pd.DataFrame:
        """One row per file; ``labels_not_allowed`` counts labels outside ``allowed``."""
        rows = [
            row | {"labels_not_allowed": _outside(labels, allowed)}
            for row, labels in zip(self.files, self.file_labels, strict=True)
        ]
        return pd.DataFrame(rows, columns=FILE_STAT_COLUMNS)


def _outside(labels: Counter[str], allowed: set[str] | None) -> int:
    if allowed is None:
        return 0
    return sum(count for label, count in labels.items() if label not in allowed)


def _batch_ids(files: Sequence[Path]) -> pa.Array:
    ids = [part.table["image_id"] for part in row_groups(files, ["image_id"])]
    return pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())


def batch_latest_labels(settings: Settings, batch_id: str) -> pa.Table:
    """The latest label event of each image, committed or staged with the batch."""
    staged = sorted((settings.staging_dir / batch_id / LABEL_EVENTS).glob("*.parquet"))
    return latest_labels([*list_table(settings.lake_dir, LABEL_EVENTS), *staged])


def _narrow(files: Sequence[Path]) -> pa.Table:
    """``image_id``, ``label`` and the file's number of every row of ``files``."""
    parts = [
        part.table.append_column("file", pa.array(np.full(len(part.table), part.file, np.int32)))
        for part in row_groups(files, ["image_id", "label"])
    ]
    empty = pa.schema([("image_id", pa.string()), ("label", pa.string()), ("file", pa.int32())])
    return pa.concat_tables(parts) if parts else empty.empty_table()


def resolved_labels(table: pa.Table, latest: pa.Table) -> pa.ChunkedArray:
    """Each row's label: its image's latest label event, else the ``label`` it came with."""
    index = pc.index_in(table["image_id"], value_set=latest["image_id"].combine_chunks())
    from_events = latest["label"].combine_chunks().take(index)
    return pc.if_else(pc.is_valid(index), from_events, table["label"])


@dataclass(frozen=True)
class _Scan:
    """Per file of a scan: rows per label and rows whose id is looked for; the ids found."""

    labels: list[Counter[str]]
    hits: list[int]
    found: pa.Array


def _scan(files: Sequence[Path], lookup: pa.Array, latest: pa.Table) -> _Scan:
    """Read ``image_id`` and ``label`` of ``files`` (nothing else) and count per file."""
    narrow = _narrow(files)
    labels = pa.table({"file": narrow["file"], "label": resolved_labels(narrow, latest)})
    counted = labels.filter(pc.is_valid(labels["label"])).group_by(["file", "label"])
    per_label: list[Counter[str]] = [Counter() for _ in files]
    for row in counted.aggregate([("label", "count")]).to_pylist():
        per_label[row["file"]][row["label"]] = row["label_count"]
    found = narrow.filter(pc.is_in(narrow["image_id"], lookup))
    hits = Counter(found["file"].to_pylist())  # few: ids of the batch found elsewhere
    unique = pc.unique(found["image_id"].combine_chunks()) if found.num_rows else lookup[:0]
    return _Scan(per_label, [hits[number] for number in range(len(files))], unique)


def _prior_partitions(settings: Settings, batch_id: str) -> list[tuple[Path, list[Path]]]:
    """The committed images partitions other than the batch's, each with its files."""
    files = list_table(settings.lake_dir, IMAGES)
    own = f"{PARTITION_COLUMN}={batch_id}"
    grouped = groupby((path for path in files if path.parent.name != own), key=lambda p: p.parent)
    return [(folder, list(paths)) for folder, paths in grouped]


def table_file_stats(settings: Settings, batch_id: str) -> TableStats:
    """Aggregates of every file of the table as it would be with the batch committed.

    Reads the stored aggregates of every file and only ``image_id`` and ``label`` of the
    files (held in memory as narrow columns); the batch's files are aggregated (once) if
    they are not yet.
    """
    batch_files = staged_or_committed(settings, batch_id)
    batch_ids = _batch_ids(batch_files)
    latest = batch_latest_labels(settings, batch_id)
    stats = TableStats()
    partitions = _prior_partitions(settings, batch_id)
    prior = [path for _, files in partitions for path in files]
    kept = [
        row
        for folder, files in partitions
        for row in stored_aggregates(files, settings.lake_dir / STATS_TABLE / folder.name)
    ]
    scan = _scan(prior, batch_ids, latest)
    for number, (path, stored) in enumerate(zip(prior, kept, strict=True)):
        owner = path.parent.name.partition("=")[2]
        stats.add(path, owner, stored, scan.hits[number], scan.labels[number])
        stats.prior_labels.update(scan.labels[number])
    batch = _scan(batch_files, scan.found, latest)
    kept = stored_aggregates(batch_files, stats_folder(settings, batch_id))
    for number, (path, stored) in enumerate(zip(batch_files, kept, strict=True)):
        stats.add(path, batch_id, stored, batch.hits[number], batch.labels[number])
    return stats


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)
