"""Spark job: run a model over the snapshot's images that lack its output; commit the rows.

Embedding (the embedder's vectors, ``embeddings`` table) and batch scoring (a model
version's predictions, ``predictions`` table) are the same job with another
:class:`Inference`: the images of a lake snapshot, less those that already have a row for
this embedder or model version, go through ``mapInArrow`` to the Python workers; each worker
loads the model once (and keeps it: Spark reuses Python workers) and writes its rows as
Parquet itself; the rows are committed atomically as one batch of the table. So the job is
incremental by (image, version), scales out with the cluster, and runs ``local[*]`` by
default.

Each committed batch report names the image partitions (ingest batches, never rewritten) it
covered, so a night reads only the partitions no run of this version covered yet, and compares
no ids: the cost follows the night's images, not the lake. Partitions written before reports
named their coverage are compared by id (an anti-join with the version's rows) by the next
run, which then records that it did.

Called in-process with the nightly's one Spark session, or standalone::

    spark-submit spark_jobs/infer_images.py embed|score [--config settings.yaml]

(``embed``: the current embedder; ``score``: the champion, exit 2 when there is none).
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import pyarrow as pa
from pyspark import TaskContext
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from visionloop.lake import commit as lake
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.lake.versions import version_files, version_key, versioned_batch_id
from visionloop.lake.writers import ParquetSink, write_through
from visionloop.settings import Settings, load_settings
from visionloop.spark import parallelism, spark_session

WRITTEN_DDL = "path string, split string, rows long"
ModelFn = Callable[[list[str], list[bytes]], pa.Table]


class Inference(Protocol):
    """A picklable description of one model's job; workers call :meth:`load` once each."""

    table: str  # the lake table the rows go to
    version_column: str  # the column that identifies the model's version in that table
    version: str

    def schema(self) -> pa.Schema: ...

    def load(self) -> ModelFn: ...


_LOADED: dict[tuple[str, str], ModelFn] = {}  # per Python worker process


def _model(inference: Inference) -> ModelFn:
    key = (inference.table, inference.version)
    if key not in _LOADED:
        _LOADED.clear()  # one model per worker at a time
        _LOADED[key] = inference.load()
    return _LOADED[key]


def infer_partition(
    batches: Iterable[pa.RecordBatch], inference: Inference, directory: Path, rows: int
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: the model's rows for these images, written as one Parquet file."""
    model = _model(inference)
    context = TaskContext.get()
    name = f"part-{context.partitionId() if context else 0:05d}-{directory.parent.name}"
    sink = ParquetSink(directory, name, inference.schema(), rows)
    outputs = (
        batch
        for images in batches
        for batch in model(images["image_id"].to_pylist(), images["image"].to_pylist()).to_batches()
    )
    return write_through(outputs, [sink])


@dataclass(frozen=True)
class Coverage:
    """What earlier runs of one version did: the image partitions they covered, and whether
    rows from runs that did not record theirs may lie outside them (then ids are compared)."""

    batches: frozenset[str]
    unrecorded: bool


def coverage(lake_dir: Path, inference: Inference) -> Coverage:
    """The coverage of ``inference``'s version, from its committed batch reports (oldest
    first): a report without ``covered`` predates the record, and the next run that compared
    ids (``compared``) accounted for every row before it."""
    key = f"-{inference.table}-{version_key(inference.version)}-"
    files = version_files(lake_dir, inference.table, inference.version)
    recorded = all(key in path.parent.name for path in files)  # unnamed partitions are older
    covered: set[str] = set()
    for report in sorted((lake_dir / "_batches").glob(f"*{key}*.json")):
        record = json.loads(report.read_text())
        if "compacted" in record:  # rows rewritten from batches whose reports remain
            continue
        if "covered" not in record:
            recorded = False
            continue
        covered.update(record["covered"])
        recorded |= record.get("compared", False)
    return Coverage(frozenset(covered), unrecorded=not recorded)


def done_ids(spark: SparkSession, settings: Settings, inference: Inference) -> DataFrame:
    """Image ids that already have a row of this version."""
    files = version_files(settings.lake_dir, inference.table, inference.version)
    table = spark.read.parquet(*[str(path) for path in files])
    return table.filter(F.col(inference.version_column) == inference.version).select("image_id")


def todo_images(
    spark: SparkSession,
    settings: Settings,
    snapshot: LakeSnapshot,
    inference: Inference,
    done: Coverage,
) -> DataFrame:
    """``image_id, image`` of the snapshot's images without a row of this version: those of
    the partitions no run covered, so a night reads the bytes it embeds and no more."""
    paths = [item.path for item in snapshot.files if item.batch_id not in done.batches]
    if paths and not done.unrecorded:
        return spark.read.parquet(*paths).select("image_id", "image")
    if paths:
        ids = spark.read.parquet(*paths).select("image_id", F.input_file_name().alias("file"))
        ids = ids.join(done_ids(spark, settings, inference), "image_id", "left_anti")
        paths = [row.file for row in ids.select("file").distinct().collect()]
    if not paths:
        return spark.createDataFrame([], "image_id string, image binary")
    images = spark.read.parquet(*paths).select("image_id", "image")
    return images.join(ids.select("image_id"), "image_id", "left_semi")


@dataclass(frozen=True)
class InferenceReport:
    """One run of an inference job: its batch, the model version, the snapshot, rows written."""

    batch_id: str
    table: str
    version_column: str  # embedder_version or model_version, as in the table
    version: str
    snapshot_id: str
    covered: tuple[str, ...] = ()  # the snapshot's image partitions: each has its rows now
    compared: bool = False  # whether ids were compared with the version's rows (see coverage)
    written: int = 0

    def record(self) -> dict[str, Any]:
        """The batch report committed with the rows (``_batches/<batch_id>.json``)."""
        return {**self.summary(), "covered": list(self.covered), "compared": self.compared}

    def summary(self) -> dict[str, Any]:
        """The report without the covered partitions' ids (for artifacts and logs)."""
        return {
            "batch_id": self.batch_id,
            "table": self.table,
            self.version_column: self.version,
            "snapshot_id": self.snapshot_id,
            "covered_partitions": len(self.covered),
            "written": self.written,
        }


def run_inference(
    spark: SparkSession, settings: Settings, snapshot: LakeSnapshot, inference: Inference
) -> InferenceReport:
    """Commit ``inference``'s rows for the snapshot's images that lack them; the batch report."""
    batch_id = versioned_batch_id(inference.table, inference.version)
    report = InferenceReport(
        batch_id,
        inference.table,
        inference.version_column,
        inference.version,
        snapshot.id,
        covered=tuple(snapshot.batch_rows),
    )
    if not snapshot.files:
        return report
    with lake.writer(settings, f"{inference.table} {inference.version}"):
        lake.recover(settings)
        done = coverage(settings.lake_dir, inference)
        report = replace(report, compared=done.unrecorded)
        todo = todo_images(spark, settings, snapshot, inference, done)
        staging = lake.stage(settings, batch_id)
        body = functools.partial(
            infer_partition,
            inference=inference,
            directory=staging.table(inference.table),
            rows=settings.parquet_row_group_rows,
        )
        partitions = settings.spark_partitions or 2 * parallelism(spark)
        written = todo.repartition(partitions).mapInArrow(body, WRITTEN_DDL).collect()
        report = replace(report, written=sum(row["rows"] for row in written))
        if report.written or report.compared:  # a comparison is recorded once, rows or not
            lake.commit(settings, batch_id, report.record())
        else:
            lake.discard(settings, batch_id)
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["embed", "score"], help="the embedder or the champion")
    parser.add_argument("--config", type=Path, help="settings YAML file")
    args = parser.parse_args(argv)
    from visionloop.embeddings.embedder import current_embedder, embedding_job
    from visionloop.lake.snapshot import take
    from visionloop.registry.served_model import champion_scoring
    from visionloop.registry.tracking import Tracking

    settings = load_settings(args.config)
    tracking = Tracking.connect(settings)
    job: Inference | None = (
        embedding_job(settings, current_embedder(settings, tracking))
        if args.job == "embed"
        else champion_scoring(settings, tracking)
    )
    if job is None:
        print(
            f"no champion of {tracking.model_name} yet: promote a model, then score",
            file=sys.stderr,
        )
        sys.exit(2)
    spark = spark_session(settings, f"visionloop-{args.job}")
    report = run_inference(spark, settings, take(settings.lake_dir), job)
    print(json.dumps(report.summary(), indent=2))


if __name__ == "__main__":
    main()
