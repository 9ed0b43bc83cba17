"""File writers that run inside Spark tasks: Parquet parts and TFRecord shards.

Each task writes its own files under a temporary name and renames them when complete,
so a retried task replaces its files instead of leaving partial ones beside them.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from tfrecord.writer import TFRecordWriter

WRITTEN_SCHEMA = pa.schema([("path", pa.string()), ("split", pa.string()), ("rows", pa.int64())])


def _finish(temporary: Path) -> Path:
    final = temporary.with_name(temporary.name.removesuffix(".tmp"))
    os.replace(temporary, final)
    return final


def _written(path: Path, split: str | None, rows: int) -> pa.RecordBatch:
    return pa.RecordBatch.from_pylist(
        [{"path": str(path), "split": split, "rows": rows}], schema=WRITTEN_SCHEMA
    )


def write_parquet_part(
    batches: Iterable[pa.RecordBatch],
    directory: Path,
    schema: pa.Schema,
    name: str,
    row_group_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Write one Parquet file with bounded row groups; yields one row describing it."""
    directory.mkdir(parents=True, exist_ok=True)
    temporary = directory / f"{name}.parquet.tmp"
    rows = 0
    with pq.ParquetWriter(temporary, schema, compression="zstd") as writer:
        for batch in batches:
            if batch.num_rows:
                table = pa.Table.from_batches([batch]).select(schema.names).cast(schema)
                writer.write_table(table, row_group_size=row_group_rows)
                rows += batch.num_rows
    if rows == 0:
        temporary.unlink()
        return
    yield _written(_finish(temporary), None, rows)


def tf_example(row: dict, label_index: dict[str, int]) -> dict[str, tuple[object, str]]:
    """The ``tf.train.Example`` features of one images-table row (label -1 when unlabelled)."""
    label = row["label"]
    return {
        "image/encoded": (row["image"], "byte"),
        "image/format": (row["image_format"].lower().encode(), "byte"),
        "image/class/label": (label_index.get(label, -1) if label else -1, "int"),
        "image/class/text": ((label or "").encode(), "byte"),
        "image/id": (row["image_id"].encode(), "byte"),
        "image/height": (row["image_height"], "int"),
        "image/width": (row["image_width"], "int"),
    }


def write_tfrecord_shards(
    batches: Iterable[pa.RecordBatch],
    directory: Path,
    name: str,
    label_index: dict[str, int],
    shard_rows: int,
) -> Iterator[pa.RecordBatch]:
    """Write rows into per-split shards of at most ``shard_rows`` records each."""
    directory.mkdir(parents=True, exist_ok=True)
    open_shards: dict[str, tuple[TFRecordWriter, Path, int, int]] = {}
    finished: list[tuple[Path, str, int]] = []

    def close(split: str) -> None:
        writer, temporary, _, rows = open_shards.pop(split)
        writer.close()
        finished.append((_finish(temporary), split, rows))

    shard_numbers: dict[str, int] = {}
    for batch in batches:
        for row in batch.to_pylist():
            split = row["split"]
            if split not in open_shards:
                number = shard_numbers.get(split, 0)
                shard_numbers[split] = number + 1
                temporary = directory / f"{split}-{name}-{number:03d}.tfrecord.tmp"
                open_shards[split] = (TFRecordWriter(str(temporary)), temporary, number, 0)
            writer, temporary, number, rows = open_shards[split]
            writer.write(tf_example(row, label_index))
            open_shards[split] = (writer, temporary, number, rows + 1)
            if rows + 1 >= shard_rows:
                close(split)
    for split in list(open_shards):
        close(split)
    for path, split, rows in finished:
        yield _written(path, split, rows)
