"""File writers that run inside Spark tasks: Parquet parts and TFRecord shards.

A task feeds its rows once through one or more sinks. Each sink writes under a temporary
name and renames when complete, so a retried task replaces its files instead of leaving
partial ones beside them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from tfrecord.writer import TFRecordWriter

WRITTEN_SCHEMA = pa.schema([("path", pa.string()), ("split", pa.string()), ("rows", pa.int64())])


class Sink(Protocol):
    def write(self, batch: pa.RecordBatch) -> None: ...

    def close(self) -> list[tuple[Path, str | None, int]]: ...


def _finish(temporary: Path) -> Path:
    final = temporary.with_name(temporary.name.removesuffix(".tmp"))
    os.replace(temporary, final)
    return final


class ParquetSink:
    """One Parquet file with bounded row groups, cast to ``schema``."""

    def __init__(self, directory: Path, name: str, schema: pa.Schema, row_group_rows: int):
        directory.mkdir(parents=True, exist_ok=True)
        self.temporary = directory / f"{name}.parquet.tmp"
        self.schema, self.row_group_rows, self.rows = schema, row_group_rows, 0
        self.writer = pq.ParquetWriter(self.temporary, schema, compression="zstd")

    def write(self, batch: pa.RecordBatch) -> None:
        if batch.num_rows:
            table = pa.Table.from_batches([batch]).select(self.schema.names).cast(self.schema)
            self.writer.write_table(table, row_group_size=self.row_group_rows)
            self.rows += batch.num_rows

    def close(self) -> list[tuple[Path, str | None, int]]:
        self.writer.close()
        if self.rows == 0:
            self.temporary.unlink()
            return []
        return [(_finish(self.temporary), None, self.rows)]


class MappedSink:
    """A sink that writes ``transform(batch)`` instead of the batch (e.g. derived rows)."""

    def __init__(self, sink: Sink, transform: Callable[[pa.RecordBatch], pa.Table]) -> None:
        self.sink, self.transform = sink, transform

    def write(self, batch: pa.RecordBatch) -> None:
        for derived in self.transform(batch).to_batches():
            self.sink.write(derived)

    def close(self) -> list[tuple[Path, str | None, int]]:
        return self.sink.close()


def tf_example(row: dict, label_index: dict[str, int], size: int) -> dict[str, tuple[object, str]]:
    """The ``tf.train.Example`` features of one images-table row (label -1 when unlabelled)."""
    label = row["label"]
    return {
        "image/encoded": (row["image"], "byte"),
        "image/format": (row["image_format"].lower().encode(), "byte"),
        "image/class/label": (label_index.get(label, -1) if label else -1, "int"),
        "image/class/text": ((label or "").encode(), "byte"),
        "image/id": (row["image_id"].encode(), "byte"),
        "image/height": (size, "int"),
        "image/width": (size, "int"),
    }


class TFRecordSink:
    """Per-split TFRecord shards of at most ``shard_rows`` records each."""

    def __init__(
        self, directory: Path, name: str, label_index: dict[str, int], size: int, shard_rows: int
    ):
        directory.mkdir(parents=True, exist_ok=True)
        self.directory, self.name = directory, name
        self.label_index, self.size, self.shard_rows = label_index, size, shard_rows
        self.open: dict[str, tuple[TFRecordWriter, Path, int]] = {}
        self.numbers: dict[str, int] = {}
        self.finished: list[tuple[Path, str | None, int]] = []

    def write(self, batch: pa.RecordBatch) -> None:
        columns = ["image", "image_format", "label", "image_id", "split"]
        for row in batch.select(columns).to_pylist():
            writer, temporary, rows = self._shard(row["split"])
            writer.write(tf_example(row, self.label_index, self.size))
            self.open[row["split"]] = (writer, temporary, rows + 1)
            if rows + 1 >= self.shard_rows:
                self._close(row["split"])

    def _shard(self, split: str) -> tuple[TFRecordWriter, Path, int]:
        if split not in self.open:
            number = self.numbers.get(split, 0)
            self.numbers[split] = number + 1
            temporary = self.directory / f"{split}-{self.name}-{number:03d}.tfrecord.tmp"
            self.open[split] = (TFRecordWriter(str(temporary)), temporary, 0)
        return self.open[split]

    def _close(self, split: str) -> None:
        writer, temporary, rows = self.open.pop(split)
        writer.close()
        self.finished.append((_finish(temporary), split, rows))

    def close(self) -> list[tuple[Path, str | None, int]]:
        for split in list(self.open):
            self._close(split)
        return self.finished


def write_through(batches: Iterable[pa.RecordBatch], sinks: list[Sink]) -> Iterator[pa.RecordBatch]:
    """Feed every batch to every sink; yield one row per file written."""
    for batch in batches:
        for sink in sinks:
            sink.write(batch)
    written = [entry for sink in sinks for entry in sink.close()]
    if written:
        yield pa.RecordBatch.from_pylist(
            [{"path": str(path), "split": split, "rows": rows} for path, split, rows in written],
            schema=WRITTEN_SCHEMA,
        )
