"""Prefect tasks of the ingest stage: thin wrappers over the Spark job and the lake."""

from __future__ import annotations

from pathlib import Path

import pyarrow.dataset as ds
from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.ingest.landing import LandingSource, archive_placed
from visionloop.ingest.ledger import ARRIVALS
from visionloop.ingest.report import IngestReport
from visionloop.lake import commit as lake
from visionloop.quality.gate import GateResult
from visionloop.settings import Settings
from visionloop.spark_jobs.preprocess_images import stage_batch
from visionloop.tasks.retrying import transient_only
from visionloop.web import report_url


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient_only, cache_policy=NONE)
def preprocess_batch(
    spark: SparkSession, settings: Settings, sources: list[LandingSource]
) -> IngestReport:
    """Run the Spark preprocessing job on the new arrivals of the sources into a staged batch."""
    report = stage_batch(spark, settings, sources)
    settings.save(settings.runs_dir / report.batch_id)
    return report


@task(cache_policy=NONE)
def commit_batch(settings: Settings, report: IngestReport) -> None:
    """Move the staged batch into the lake atomically."""
    lake.commit(settings, report.batch_id, report.model_dump(mode="json"))


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def archive_arrivals(
    settings: Settings, report: IngestReport, sources: list[LandingSource]
) -> IngestReport:
    """``landing.after_ingest: archive``: move the committed batch's files out of landing."""
    folder = lake.partition_dir(settings, ARRIVALS, report.batch_id)
    uris = ds.dataset(folder, format="parquet").to_table(columns=["source_uri"])["source_uri"]
    moved = archive_placed(sources, uris.to_pylist(), settings.archive_dir)
    return report.model_copy(update={"archived": moved})


@task(cache_policy=NONE)
def hold_batch(settings: Settings, report: IngestReport) -> Path:
    """Keep a batch that failed its gate out of the lake."""
    return lake.hold(settings, report.batch_id, report.model_dump(mode="json"))


@task(cache_policy=NONE)
def publish_ingest_report(
    settings: Settings, report: IngestReport, gate: GateResult | None
) -> None:
    """Publish the batch counts and gate outcome as Prefect artifacts, linking the Data Docs
    page on the reports server."""
    create_table_artifact(
        key="ingest-counts", table=report.counts(), description=f"Batch {report.batch_id}"
    )
    if gate is None:
        create_markdown_artifact(
            key="data-docs",
            markdown=f"Nothing new arrived: {report.listed} files listed, all placed before; "
            "no batch to gate.",
        )
        return
    create_table_artifact(
        key="expectations", table=gate.summary_rows(), description="Great Expectations results"
    )
    verdict = "passed" if gate.passed else "FAILED"
    page = report_url(settings, gate.data_docs)
    if gate.overridden:
        verdict += " (failing batch accepted by operator override)"
    create_markdown_artifact(
        key="data-docs",
        markdown=f"Quality gate **{verdict}** for batch `{report.batch_id}`.\n\n"
        f"Data Docs: [{page}]({page})",
    )
