"""Prefect task of the validate stage: the Great Expectations gate."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE

from visionloop.ingest.report import IngestReport
from visionloop.quality.gate import GateResult, run_gate
from visionloop.settings import Settings


@task(retries=1, retry_delay_seconds=5, cache_policy=NONE)
def validate_batch(
    settings: Settings, report: IngestReport, accept_failing_batch: bool
) -> GateResult:
    """Check the staged batch and the table it would make."""
    return run_gate(
        settings,
        report.batch_id,
        files_in=report.read,
        quarantined=report.quarantined,
        accept_failing_batch=accept_failing_batch,
    )
