"""Ingest flow: Spark preprocessing → Great Expectations gate → atomic commit."""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pyspark.sql import SparkSession

from visionloop.lake import commit as lake
from visionloop.parameters import IngestParameters
from visionloop.quality.gate import QualityGateError
from visionloop.settings import Settings, load_settings
from visionloop.tasks.ingest import (
    commit_batch,
    hold_batch,
    preprocess_batch,
    publish_ingest_report,
)
from visionloop.tasks.spark import start_spark
from visionloop.tasks.validate import validate_batch


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParameters = IngestParameters()) -> dict[str, Any]:
    """Preprocess the landing sources, gate the batch, and commit it to the lake."""
    settings = load_settings(params.config)
    return ingest_batch(start_spark(settings), settings, params)


def ingest_batch(
    spark: SparkSession, settings: Settings, params: IngestParameters
) -> dict[str, Any]:
    """The ingest steps, for flows that already hold the session and resolved settings."""
    with lake.writer(settings, f"flow run {flow_run.get_name()}"):
        report = preprocess_batch(spark, settings, params.sources)
        gate = validate_batch(settings, report, params.accept_failing_batch)
        publish_ingest_report(report, gate)
        if not gate["passed"]:
            held = hold_batch(settings, report)
            raise QualityGateError(f"{gate['message']}\nThe batch is held at {held}.")
        commit_batch(settings, report)
    get_run_logger().info("batch %s committed: %s", report["batch_id"], report)
    return {"batch": report, "gate": gate}
