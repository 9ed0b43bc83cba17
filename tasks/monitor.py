"""Prefect tasks of monitoring: the drift check and the nightly decision table."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from visionloop.alerts import emit_drift
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.monitoring.decision import NightlyDecision
from visionloop.monitoring.drift import DriftCheck, DriftInputError, DriftResult, drift_report, save
from visionloop.monitoring.inputs import drift_sets
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.web import report_url


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def check_drift(
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    embedder_version: str,
    batch_ids: list[str],
) -> DriftCheck:
    """Evidently drift of ``batch_ids`` against the champion's training images; the record."""
    if not batch_ids:
        return DriftCheck(None, "no new images tonight")
    champion = tracking.alias_version(CHAMPION)
    if champion is None:
        return DriftCheck(None, "no champion yet, so no reference")
    trained_on = tracking.training_snapshot(champion)
    if trained_on is None:
        note = f"champion v{champion} has no logged training snapshot; retrain to judge drift"
        return DriftCheck(None, note)
    sets = drift_sets(
        snapshot,
        embedder_version,
        champion,
        reference=trained_on,
        current_batches=batch_ids,
        reference_size=settings.drift.reference_size,
        seed=settings.drift.seed,
        cache_dir=settings.drift_references_dir,
    )
    try:
        result, report = drift_report(sets.reference, sets.current, settings.drift)
    except DriftInputError as error:
        get_run_logger().info("drift not judged: %s", error)
        return DriftCheck(None, str(error))
    name = "-".join(sorted(batch_ids))[:120] or "lake"
    files = save(report, result, settings.reports_dir / "drift", name)
    run_id = tracking.client.get_model_version(tracking.model_name, champion).run_id
    tracking.client.log_artifact(run_id, str(files["html"]), "drift")
    page = report_url(settings, files["html"])
    _publish(result, page, champion)
    drifted_ids = sets.current_ids if result.drifted else []
    emit_drift(result, page, batch_ids)
    return DriftCheck(result, result.reason, files["html"], drifted_ids)


def _publish(result: DriftResult, page: str, champion: str) -> None:
    create_table_artifact(
        key="drift",
        table=[
            {
                "method": method.method,
                "score": round(method.score, 5),
                "threshold": method.threshold,
                "drifted": method.drifted,
            }
            for method in result.methods
        ],
        description=result.reason,
    )
    create_markdown_artifact(
        key="drift-report",
        markdown=f"Drift against champion v{champion}: **{result.reason}**\n\n"
        f"Evidently report: [{page}]({page})",
    )


@task(cache_policy=NONE)
def publish_decision(decision: NightlyDecision) -> NightlyDecision:
    """The night's decision and its reason, as one table."""
    create_table_artifact(
        key="nightly-decision", table=[decision.row()], description=decision.reason
    )
    return decision
