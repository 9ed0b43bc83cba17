"""Ingest flow: new arrivals → Spark preprocessing → Great Expectations gate → atomic commit."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pyspark.sql import SparkSession

from visionloop.alerts import emit_batch_held
from visionloop.ingest.landing import landing_sources
from visionloop.ingest.report import IngestReport
from visionloop.lake import commit as lake
from visionloop.parameters import IngestParameters
from visionloop.quality.gate import GateResult, QualityGateError
from visionloop.settings import Settings, load_settings
from visionloop.tasks.ingest import (
    archive_arrivals,
    commit_batch,
    hold_batch,
    preprocess_batch,
    publish_ingest_report,
)
from visionloop.tasks.spark import start_spark
from visionloop.tasks.validate import validate_batch
from visionloop.web import report_url


@dataclass(frozen=True)
class IngestResult:
    """What an ingest did: its counts, and the gate's result (None when nothing arrived)."""

    report: IngestReport
    gate: GateResult | None

    @property
    def batch_ids(self) -> list[str]:
        return self.report.batch_ids


@flow(name="ingest", log_prints=True)
def ingest(params: IngestParameters = IngestParameters()) -> IngestResult:
    """Preprocess the new arrivals of the landing sources, gate the batch, commit it."""
    settings = load_settings(params.config)
    return ingest_batch(start_spark(settings), settings, params)


def ingest_batch(spark: SparkSession, settings: Settings, params: IngestParameters) -> IngestResult:
    """The ingest steps, for flows that already hold the session and resolved settings."""
    sources = landing_sources(params.sources, settings.landing.sources)
    with lake.writer(settings, f"flow run {flow_run.get_name()}"):
        report = preprocess_batch(spark, settings, sources)
        if not report.arrived:
            publish_ingest_report(settings, report, None)
            get_run_logger().info("nothing new: %d files listed, all placed", report.listed)
            return IngestResult(report, None)
        gate = validate_batch(settings, report, params.accept_failing_batch)
        if not gate.passed:
            publish_ingest_report(settings, report, gate)
            held = hold_batch(settings, report)
            emit_batch_held(gate, held, report_url(settings, gate.data_docs))
            raise QualityGateError(f"{gate.message}\nThe batch is held at {held}.")
        commit_batch(settings, report)
    if settings.landing.after_ingest == "archive":
        report = archive_arrivals(settings, report, sources)
    publish_ingest_report(settings, report, gate)
    get_run_logger().info("batch %s committed: %s", report.batch_id, report.counts())
    return IngestResult(report, gate)
