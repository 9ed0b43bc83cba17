"""Spark job: preprocess a landing batch into the lake (images, quarantine, TFRecord).

Runs in-process (``run_batch``) from a Prefect task, or standalone::

    spark-submit spark_jobs/preprocess_images.py --source data/sample/labelled \
        --source data/sample/unlabelled [--config settings.yaml]

Stages: list the landing files into a Parquet listing (driver, metadata only); read and
preprocess every file in the workers; decide per file (new, duplicate, quarantine) with
window functions; write the new rows as Parquet and TFRecord from the workers; commit the
batch atomically. Nothing but small aggregates is collected to the driver.
"""

from __future__ import annotations

import argparse
import functools
import itertools
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pyspark import TaskContext
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from visionloop.ingest import ledger
from visionloop.ingest.landing import LandingSource, enumerate_source, write_listing
from visionloop.ingest.report import IngestReport
from visionloop.lake import commit as lake
from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.contract import (
    ARRIVALS_SCHEMA,
    DUPLICATES_SCHEMA,
    IMAGES_SCHEMA,
    LABEL_EVENTS_SCHEMA,
    QUARANTINE_SCHEMA,
    Reason,
    split_for,
)
from visionloop.lake.label_events import latest_labels, seed_events
from visionloop.lake.label_map import index_of
from visionloop.lake.snapshot import IMAGES, LABEL_EVENTS, list_table
from visionloop.lake.writers import MappedSink, ParquetSink, TFRecordSink, write_through
from visionloop.preprocessing import ImageOptions, ProcessedImage, image_options, process_file
from visionloop.settings import Settings, SplitFractions, load_settings
from visionloop.spark import parallelism, spark_session

PROCESSED_SCHEMA = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("uri", pa.string()),
        ("label", pa.string()),
        ("reason", pa.string()),  # null when the file was processed
        ("detail", pa.string()),
        ("image_id", pa.string()),
        ("image", pa.binary()),
        ("image_format", pa.string()),
        ("width", pa.int32()),
        ("height", pa.int32()),
        ("mode", pa.string()),
        ("source_format", pa.string()),
        ("split", pa.string()),
    ]
)
NEW, DUPLICATE, QUARANTINED = "new", "duplicate", "quarantine"
WRITTEN_DDL = "path string, split string, rows long"
NARROW_COLUMNS = ["entry_id", "uri", "label", "reason", "detail", "image_id", "split"]
NARROW_DDL = (
    "entry_id long, uri string, label string, reason string, detail string, "
    "image_id string, split string, file string"
)


# ---------------------------------------------------------------- worker-side functions


def _process_entry(entry: dict[str, Any], options: ImageOptions, fractions: SplitFractions) -> dict:
    row = {"entry_id": entry["entry_id"], "uri": entry["uri"], "label": entry["label"]}
    if entry["problem"]:
        return row | {"reason": entry["problem"], "detail": entry["detail"]}
    result = process_file(entry["uri"], options)
    if not isinstance(result, ProcessedImage):
        return row | {
            "reason": result.reason.value,
            "detail": result.detail,
            "image_id": result.image_id,
        }
    return row | {
        "image_id": result.image_id,
        "image": result.image,
        "image_format": result.image_format,
        "width": result.width,
        "height": result.height,
        "mode": result.mode,
        "source_format": result.source_format,
        "split": split_for(result.image_id, fractions),
    }


def process_partition(
    batches: Iterable[pa.RecordBatch],
    options: ImageOptions,
    fractions: SplitFractions,
    directory: Path,
    batch_id: str,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: preprocess each listed file; image bytes stay in this worker.

    Processed rows (with image bytes) go to one Parquet file per task; only the narrow
    columns, and the file they are in, go back to Spark.
    """
    sink = ParquetSink(directory, _task_name(batch_id), PROCESSED_SCHEMA, 1024)
    narrow: list[pa.RecordBatch] = []
    for batch in batches:
        rows = [_process_entry(entry, options, fractions) for entry in batch.to_pylist()]
        processed = pa.RecordBatch.from_pylist(rows, schema=PROCESSED_SCHEMA)
        sink.write(processed)
        narrow.append(processed.select(NARROW_COLUMNS))
    written = sink.close()
    path = str(written[0][0]) if written else None
    for batch in narrow:
        files = pa.array([path] * batch.num_rows, pa.string())
        yield pa.RecordBatch.from_arrays([*batch.columns, files], names=[*NARROW_COLUMNS, "file"])


def finalise_partition(
    batches: Iterable[pa.RecordBatch],
    staging: lake.BatchStaging,
    batch_id: str,
    settings: Settings,
    labels: dict[str, int],
    ingested_at: datetime,
) -> Iterator[pa.RecordBatch]:
    """mapInArrow body: copy this task's new rows from their processed files into the
    images table and TFRecord shards, in one pass."""
    wanted: dict[str, list[int]] = {}
    for batch in batches:
        files, ids = batch.column("file").to_pylist(), batch.column("entry_id").to_pylist()
        for file, entry_id in zip(files, ids, strict=True):
            wanted.setdefault(file, []).append(entry_id)
    name = _task_name(batch_id)
    rows = settings.parquet_row_group_rows
    events = ParquetSink(staging.table("label_events"), name, LABEL_EVENTS_SCHEMA, rows)
    sinks = [
        ParquetSink(staging.table("images"), name, IMAGES_SCHEMA, rows),
        MappedSink(events, functools.partial(seed_events, recorded_at=ingested_at)),
        TFRecordSink(
            staging.table("tfrecord"),
            name,
            labels,
            settings.image_size,
            settings.tfrecord_shard_rows,
        ),
    ]
    tables = (_new_rows(Path(file), ids, ingested_at) for file, ids in sorted(wanted.items()))
    return write_through((batch for table in tables for batch in table.to_batches()), sinks)


def _new_rows(file: Path, entry_ids: list[int], ingested_at: datetime) -> pa.Table:
    """The images-table rows of ``entry_ids`` from one processed file."""
    processed = pq.read_table(file)
    rows = processed.filter(pc.is_in(processed["entry_id"], pa.array(entry_ids, pa.int64())))
    count = rows.num_rows
    seed = pc.if_else(pc.is_valid(rows["label"]), "seed", pa.scalar(None, pa.string()))
    timestamp = IMAGES_SCHEMA.field("ingested_at").type
    return pa.table(
        {
            "image_id": rows["image_id"],
            "image": rows["image"],
            "image_format": rows["image_format"],
            "label": rows["label"],
            "label_source": seed,
            "annotator": pa.nulls(count, pa.string()),
            "labelled_at": pc.if_else(
                pc.is_valid(rows["label"]), pa.scalar(ingested_at, timestamp), None
            ),
            "split": rows["split"],
            "width": rows["width"],
            "height": rows["height"],
            "mode": rows["mode"],
            "source_format": rows["source_format"],
            "source_uri": rows["uri"],
            "ingested_at": pa.array([ingested_at] * count, timestamp),
        },
        schema=IMAGES_SCHEMA,
    )


def _task_name(batch_id: str) -> str:
    context = TaskContext.get()
    partition = context.partitionId() if context else 0
    return f"part-{partition:05d}-{batch_id}"


def write_table_partition(batches, directory: Path, schema: pa.Schema, batch_id: str, rows: int):
    """mapInArrow body: this task's rows into one Parquet file."""
    sink = ParquetSink(directory, _task_name(batch_id), schema, rows)
    return write_through(batches, [sink])


# ---------------------------------------------------------------- driver-side stages


def list_batch(settings: Settings, sources: list[LandingSource], staging: lake.BatchStaging):
    """List every landing file into ``listed.parquet`` and the ones the arrival ledger has
    not placed into the listing the workers read; returns (files listed, files to read)."""
    entries = itertools.chain.from_iterable(enumerate_source(source) for source in sources)
    everything = staging.root / "listed.parquet"
    listed = write_listing(entries, everything)
    fresh = ledger.unplaced(pq.read_table(everything), ledger.placed(settings.lake_dir))
    pq.write_table(fresh, staging.listing)
    return listed, fresh.num_rows


def preprocess(spark: SparkSession, settings: Settings, staging: lake.BatchStaging) -> DataFrame:
    """Process every listed file in the workers; returns the narrow per-file results."""
    listing = spark.read.parquet(str(staging.listing))
    partitions = settings.spark_partitions or 4 * parallelism(spark)
    body = functools.partial(
        process_partition,
        options=image_options(settings),
        fractions=settings.split,
        directory=staging.processed,
        batch_id=staging.root.name,
    )
    listing.repartition(partitions).mapInArrow(body, NARROW_DDL).write.parquet(str(staging.narrow))
    return spark.read.parquet(str(staging.narrow))


def decide_outcomes(processed: DataFrame, lake_labels: DataFrame | None) -> DataFrame:
    """One outcome per file: new, duplicate (of the batch or the lake) or quarantine."""
    readable = processed.filter(F.col("reason").isNull())
    if lake_labels is not None:
        readable = readable.join(lake_labels, "image_id", "left")
    else:
        readable = readable.withColumn("in_lake", F.lit(False)).withColumn(
            "lake_label", F.lit(None).cast("string")
        )
    by_content = Window.partitionBy("image_id")
    keeper_first = by_content.orderBy(F.col("label").isNull(), "uri", "entry_id")
    labels = F.array_sort(
        F.array_union(
            F.collect_set("label").over(by_content),
            F.filter(F.array(F.col("lake_label")), lambda value: value.isNotNull()),
        )
    )
    decided = (
        readable.withColumn("labels", labels)
        .withColumn("rank", F.row_number().over(keeper_first))
        .withColumn("keeper_uri", F.first("uri").over(keeper_first))
    )
    outcome, reason, detail, duplicate_of = _outcome_columns()
    decided = decided.select(
        "entry_id", "uri", "label", "image_id", outcome, reason, detail, duplicate_of, "file"
    )
    rejected = processed.filter(F.col("reason").isNotNull()).select(
        "entry_id",
        "uri",
        "label",
        "image_id",
        F.lit(QUARANTINED).alias("outcome"),
        "reason",
        "detail",
        F.lit(None).cast("string").alias("duplicate_of"),
        "file",
    )
    return decided.unionByName(rejected)


def _outcome_columns() -> tuple[Column, Column, Column, Column]:
    conflict = F.size("labels") > 1
    relabel = F.col("in_lake") & F.col("lake_label").isNull() & F.col("label").isNotNull()
    duplicate = F.col("in_lake") | (F.col("rank") > 1)
    outcome = (
        F.when(conflict | relabel, QUARANTINED)
        .when(duplicate, DUPLICATE)
        .otherwise(NEW)
        .alias("outcome")
    )
    reason = (
        F.when(conflict, Reason.LABEL_CONFLICT.value)
        .when(relabel, Reason.LABEL_FOR_EXISTING.value)
        .alias("reason")
    )
    detail = (
        F.when(conflict, F.concat(F.lit("same content labelled "), F.concat_ws(", ", "labels")))
        .when(relabel, F.lit("content already in the lake unlabelled; label it by annotation"))
        .alias("detail")
    )
    duplicate_of = F.when(
        ~conflict & ~relabel & duplicate,
        F.when(F.col("in_lake"), F.lit("lake")).otherwise(F.col("keeper_uri")),
    ).alias("duplicate_of")
    return outcome, reason, detail, duplicate_of


def read_lake_labels(
    spark: SparkSession, settings: Settings, processed: DataFrame
) -> DataFrame | None:
    """``image_id, in_lake, lake_label`` of the committed images among ``processed``, or None
    for an empty lake. ``lake_label`` is the image's latest label event (an annotator's label
    counts), else the label it was ingested with."""
    files = [str(path) for path in list_table(settings.lake_dir, IMAGES)]
    if not files:
        return None
    ids = [row.image_id for row in processed.select("image_id").dropna().distinct().collect()]
    events = [str(path) for path in list_table(settings.lake_dir, LABEL_EVENTS)]
    latest = latest_labels(events, pa.array(ids, pa.string())).select(["image_id", "label"])
    lake_images = spark.read.parquet(*files).select("image_id", "label")
    if latest.num_rows:
        agreed = spark.createDataFrame(latest.to_pandas()).withColumnRenamed("label", "agreed")
        lake_images = lake_images.join(agreed, "image_id", "left").select(
            "image_id", F.coalesce("agreed", "label").alias("label")
        )
    return lake_images.select(
        "image_id", F.lit(True).alias("in_lake"), F.col("label").alias("lake_label")
    )


def write_outputs(
    settings: Settings,
    staging: lake.BatchStaging,
    decisions: DataFrame,
    listing: DataFrame,
    batch_id: str,
    ingested_at: datetime,
) -> None:
    """Write new images (Parquet + TFRecord), quarantine, duplicate and arrival-ledger rows
    into staging."""
    labels = label_index(settings, decisions)
    new_rows = decisions.filter(F.col("outcome") == NEW).select("file", "entry_id")
    files = max(1, len(list(staging.processed.glob("*.parquet"))))
    body = functools.partial(
        finalise_partition,
        staging=staging,
        batch_id=batch_id,
        settings=settings,
        labels=labels,
        ingested_at=ingested_at,
    )
    new_rows.repartition(files, "file").mapInArrow(body, WRITTEN_DDL).count()
    quarantined = decisions.filter(F.col("outcome") == QUARANTINED).select(
        "uri",
        "reason",
        "detail",
        "label",
        "image_id",
        F.lit(ingested_at).cast("timestamp").alias("quarantined_at"),
    )
    _write_table(quarantined, staging.table("quarantine"), QUARANTINE_SCHEMA, settings, batch_id)
    duplicates = decisions.filter(F.col("outcome") == DUPLICATE).select(
        "uri", "image_id", "duplicate_of"
    )
    _write_table(duplicates, staging.table("duplicates"), DUPLICATES_SCHEMA, settings, batch_id)
    _write_table(
        arrivals(decisions, listing, ingested_at),
        staging.table(ledger.ARRIVALS),
        ARRIVALS_SCHEMA,
        settings,
        batch_id,
    )


def arrivals(decisions: DataFrame, listing: DataFrame, placed_at: datetime) -> DataFrame:
    """The arrival-ledger rows of a batch: each file read, its size and mtime, and outcome."""
    stats = listing.select("entry_id", "size", "mtime_ns")
    return decisions.join(stats, "entry_id").select(
        F.col("uri").alias("source_uri"),
        "size",
        "mtime_ns",
        "label",
        "outcome",
        "image_id",
        "reason",
        F.lit(placed_at).cast("timestamp").alias("placed_at"),
    )


def _write_table(
    frame: DataFrame, directory: Path, schema: pa.Schema, settings: Settings, batch_id: str
) -> None:
    body = functools.partial(
        write_table_partition,
        directory=directory,
        schema=schema,
        batch_id=batch_id,
        rows=settings.parquet_row_group_rows,
    )
    frame.coalesce(1).mapInArrow(body, WRITTEN_DDL).count()


def label_index(settings: Settings, decisions: DataFrame) -> dict[str, int]:
    """TFRecord class indices: the lake's persistent label map extended by this batch."""
    labels = decisions.filter(F.col("outcome") == NEW).select("label").dropna().distinct()
    return index_of(lake.batch_label_map(settings, {row.label for row in labels.collect()}))


def summarise(decisions: DataFrame) -> dict[str, Any]:
    """Counts by outcome and quarantine reason (a small aggregate)."""
    counts = decisions.groupBy("outcome", "reason").count().collect()
    by_outcome: dict[str, int] = {}
    by_reason: dict[str, int] = {}
    for row in counts:
        by_outcome[row.outcome] = by_outcome.get(row.outcome, 0) + row["count"]
        if row.outcome == QUARANTINED:
            by_reason[row.reason] = row["count"]
    return {
        "written": by_outcome.get(NEW, 0),
        "duplicates": by_outcome.get(DUPLICATE, 0),
        "quarantined": by_outcome.get(QUARANTINED, 0),
        "quarantined_by_reason": dict(sorted(by_reason.items())),
    }


def stage_batch(
    spark: SparkSession,
    settings: Settings,
    sources: list[LandingSource],
    batch_id: str | None = None,
) -> IngestReport:
    """Preprocess the new arrivals of the landing sources into a staging folder.

    Files the arrival ledger has placed are skipped unopened. Raises if any file is
    unaccounted for (listed = skipped + written + duplicates + quarantined). A batch that
    reads nothing leaves no staging folder. Call it inside :func:`visionloop.lake.writer`:
    it recovers interrupted batches first.
    """
    lake.recover(settings)
    batch_id = batch_id or new_batch_id()
    ingested_at = datetime.now(UTC)
    staging = lake.stage(settings, batch_id)
    listed, read = list_batch(settings, sources, staging)
    report = {
        "batch_id": batch_id,
        "listed": listed,
        "skipped": listed - read,
        "read": read,
        "ingested_at": ingested_at,
        "sources": [source.path for source in sources],
    }
    if not read:
        lake.discard(settings, batch_id)
        return IngestReport(**report, written=0, duplicates=0, quarantined=0)
    narrow = preprocess(spark, settings, staging)
    lake_labels = read_lake_labels(spark, settings, narrow)
    decide_outcomes(narrow, lake_labels).write.parquet(str(staging.decisions))
    decisions = spark.read.parquet(str(staging.decisions))
    listing = spark.read.parquet(str(staging.listing))
    write_outputs(settings, staging, decisions, listing, batch_id, ingested_at)
    return IngestReport(**report, **summarise(decisions))


def run_batch(
    spark: SparkSession, settings: Settings, sources: list[LandingSource]
) -> IngestReport:
    """Stage and commit a batch without a quality gate (``spark-submit`` entry point)."""
    with lake.writer(settings, "spark job preprocess_images"):
        report = stage_batch(spark, settings, sources)
        if report.arrived:
            lake.commit(settings, report.batch_id, report.model_dump(mode="json"))
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", action="append", required=True, help="landing path")
    parser.add_argument("--layout", default="auto", help="auto|imagefolder|manifest|unlabelled")
    parser.add_argument("--config", type=Path, help="settings YAML file")
    args = parser.parse_args(argv)

    settings = load_settings(args.config)
    sources = [LandingSource(path=path, layout=args.layout) for path in args.source]
    report = run_batch(spark_session(settings, "visionloop-preprocess"), settings, sources)
    print(report.model_dump_json(indent=2))


if __name__ == "__main__":
    main()
