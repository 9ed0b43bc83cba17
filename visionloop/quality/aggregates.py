"""What the gate checks, read with bounded memory.

* :func:`batch_frame` — the new batch's rows (metadata and image length, never the image
  bytes) as a pandas frame: memory grows with the batch, not the lake.
* :func:`table_file_stats` — one row of column aggregates per Parquet file of the table
  the batch would make, streamed one row group at a time with pyarrow. The whole-table
  checks run on these rows, so the gate's memory stays flat as the lake grows.

``image_id`` uniqueness across the table holds by induction: every batch's ids are checked
against every committed file (and within the batch, row by row) before it commits.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.lake.contract import IMAGES_SCHEMA, PARTITION_COLUMN, SPLITS
from visionloop.lake.snapshot import IMAGES, list_table, row_groups
from visionloop.settings import Settings

NBYTES_COLUMN = "image_nbytes"
KEY_COLUMNS = ["image_id", "label", "split", "width", "height"]


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


@dataclass
class TableStats:
    """The table's aggregates: one row and one class count per file, plus split counts."""

    files: list[dict[str, object]] = field(default_factory=list)
    file_labels: list[Counter[str]] = field(default_factory=list)  # labelled rows per class
    split_rows: Counter[str] = field(default_factory=Counter)
    prior_labels: set[str] = field(default_factory=set)  # labels of files outside the batch

    @property
    def rows(self) -> int:
        return sum(self.split_rows.values())

    @property
    def class_counts(self) -> Counter[str]:
        return sum(self.file_labels, Counter())

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


def _schema_matches(path: Path) -> bool:
    schema = pq.read_schema(path)
    return schema.remove_metadata().equals(IMAGES_SCHEMA.remove_metadata())


def _batch_ids(files: Sequence[Path]) -> pa.Array:
    ids = [part.table["image_id"] for part in row_groups(files, ["image_id"])]
    return pa.chunked_array(ids, pa.string()).combine_chunks() if ids else pa.array([], pa.string())


def _ids_shared_with(batch_ids: pa.Array, prior: Iterable[Path]) -> set[str]:
    """The batch ids that some prior file holds too (reads one id column at a time)."""
    shared: set[str] = set()
    for part in row_groups(list(prior), ["image_id"]):
        found = part.table["image_id"].filter(pc.is_in(part.table["image_id"], batch_ids))
        shared.update(found.to_pylist())
    return shared


def table_file_stats(settings: Settings, batch_id: str) -> TableStats:
    """Aggregates of every file of the table as it would be with the batch committed."""
    batch_files = staged_or_committed(settings, batch_id)
    prior = [
        path
        for path in list_table(settings.lake_dir, IMAGES)
        if path.parent.name != f"{PARTITION_COLUMN}={batch_id}"
    ]
    shared = pa.array(sorted(_ids_shared_with(_batch_ids(batch_files), prior)), pa.string())
    stats = TableStats()
    for path in [*prior, *batch_files]:
        in_batch = path not in prior
        row, splits, labels = file_stats(path, shared)
        row[PARTITION_COLUMN] = batch_id if in_batch else path.parent.name.partition("=")[2]
        stats.files.append(row)
        stats.file_labels.append(labels)
        stats.split_rows.update(splits)
        if not in_batch:
            stats.prior_labels.update(labels)
    return stats


def file_stats(
    path: Path, shared_ids: pa.Array
) -> tuple[dict[str, object], Counter[str], Counter[str]]:
    """One file's aggregate row, its rows per split and its labelled rows per class."""
    row: dict[str, object] = dict.fromkeys(FILE_STAT_COLUMNS[2:8], 0)
    row |= {"file": f"{path.parent.name}/{path.name}", "schema_matches": _schema_matches(path)}
    splits: Counter[str] = Counter()
    labels: Counter[str] = Counter()
    extremes: dict[str, list[int]] = {"width": [], "height": []}
    for part in row_groups([path], [*KEY_COLUMNS, "image"]):
        table = part.table
        lengths = pc.fill_null(pc.binary_length(table["image"]), 0)
        row["rows"] += len(table)
        row["null_image_ids"] += table["image_id"].null_count
        row["ids_in_other_files"] += _count(pc.is_in(table["image_id"], shared_ids))
        row["empty_images"] += _count(pc.equal(lengths, 0))
        splits.update(table["split"].to_pylist())
        labels.update(label for label in table["label"].to_pylist() if label is not None)
        for name, values in extremes.items():
            values += [v for v in pc.min_max(table[name]).as_py().values() if v is not None]
    row["unknown_splits"] = sum(n for split, n in splits.items() if split not in SPLITS)
    for name, values in extremes.items():
        row[f"min_{name}"], row[f"max_{name}"] = (
            min(values, default=None),
            max(values, default=None),
        )
    return row, splits, labels


def _count(mask: pa.ChunkedArray | pa.Array) -> int:
    return int(pc.sum(mask).as_py() or 0)
