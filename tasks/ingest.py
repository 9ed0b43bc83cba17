"""Prefect tasks of the ingest stage: thin wrappers over the Spark job and the lake."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.ingest.landing import LandingSource
from visionloop.lake import commit as lake
from visionloop.settings import Settings
from visionloop.spark_jobs.preprocess_images import stage_batch
from visionloop.tasks.retrying import transient_only


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=transient_only, cache_policy=NONE)
def preprocess_batch(
    spark: SparkSession, settings: Settings, sources: list[LandingSource]
) -> dict[str, Any]:
    """Run the Spark preprocessing job on the landing sources into a staged batch."""
    report = stage_batch(spark, settings, sources)
    settings.save(settings.runs_dir / report["batch_id"])
    return report


@task(cache_policy=NONE)
def commit_batch(settings: Settings, report: dict[str, Any]) -> None:
    """Move the staged batch into the lake atomically."""
    lake.commit(settings, report["batch_id"], report)


@task(cache_policy=NONE)
def hold_batch(settings: Settings, report: dict[str, Any]) -> Path:
    """Keep a batch that failed its gate out of the lake."""
    return lake.hold(settings, report["batch_id"], report)


@task(cache_policy=NONE)
def publish_ingest_report(report: dict[str, Any], gate: dict[str, Any]) -> None:
    """Publish the batch counts and gate outcome as Prefect artifacts."""
    counts = [
        {"measure": "files in", "count": report["files_in"]},
        {"measure": "written to the lake", "count": report["written"]},
        {"measure": "duplicates", "count": report["duplicates"]},
        {"measure": "quarantined", "count": report["quarantined"]},
    ] + [
        {"measure": f"quarantined: {reason}", "count": count}
        for reason, count in report["quarantined_by_reason"].items()
    ]
    create_table_artifact(
        key="ingest-counts", table=counts, description=f"Batch {report['batch_id']}"
    )
    create_table_artifact(
        key="expectations", table=gate["outcomes"], description="Great Expectations results"
    )
    verdict = "passed" if gate["passed"] else "FAILED"
    if gate["overridden"]:
        verdict += " (failing batch accepted by operator override)"
    create_markdown_artifact(
        key="data-docs",
        markdown=f"Quality gate **{verdict}** for batch `{report['batch_id']}`.\n\n"
        f"Data Docs: [{gate['data_docs']}](file://{gate['data_docs']})",
    )
