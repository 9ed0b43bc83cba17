"""Prefect tasks of monitoring: the drift check and the nightly decision table."""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.monitoring.decision import NightlyDecision
from visionloop.monitoring.drift import DriftInputError, drift_report, save
from visionloop.monitoring.inputs import drift_sets
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def check_drift(
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    embedder_version: str,
    batch_ids: list[str],
) -> dict[str, Any]:
    """Evidently drift of ``batch_ids`` against the champion's training images; the record."""
    if not batch_ids:
        return {"drifted": None, "note": "no new images tonight", "drifted_ids": []}
    champion = tracking.alias_version(CHAMPION)
    if champion is None:
        return {"drifted": None, "note": "no champion yet, so no reference", "drifted_ids": []}
    trained_on = tracking.training_snapshot(champion)
    if trained_on is None:
        note = f"champion v{champion} has no logged training snapshot; retrain to judge drift"
        return {"drifted": None, "note": note, "drifted_ids": []}
    sets = drift_sets(
        snapshot,
        embedder_version,
        champion,
        reference=trained_on,
        current_batches=batch_ids,
        reference_size=settings.drift.reference_size,
        seed=settings.drift.seed,
    )
    try:
        result, report = drift_report(sets.reference, sets.current, settings.drift)
    except DriftInputError as error:
        get_run_logger().info("drift not judged: %s", error)
        return {"drifted": None, "note": str(error), "drifted_ids": []}
    name = "-".join(sorted(batch_ids))[:120] or "lake"
    files = save(report, result, settings.reports_dir / "drift", name)
    run_id = tracking.client.get_model_version(tracking.model_name, champion).run_id
    tracking.client.log_artifact(run_id, str(files["html"]), "drift")
    _publish(result.to_dict(), files["html"], champion)
    return {
        **result.to_dict(),
        "note": result.reason,
        "report": str(files["html"]),
        "drifted_ids": sets.current_ids if result.drifted else [],
    }


def _publish(result: dict[str, Any], html: Any, champion: str) -> None:
    create_table_artifact(
        key="drift",
        table=[
            {
                "method": method["method"],
                "score": round(method["score"], 5),
                "threshold": method["threshold"],
                "drifted": method["drifted"],
            }
            for method in result["methods"]
        ],
        description=result["reason"],
    )
    create_markdown_artifact(
        key="drift-report",
        markdown=f"Drift against champion v{champion}: **{result['reason']}**\n\n"
        f"Evidently report: [{html}](file://{html})",
    )


@task(cache_policy=NONE)
def publish_decision(decision: NightlyDecision) -> dict[str, Any]:
    """The night's decision and its reason, as one table."""
    create_table_artifact(
        key="nightly-decision", table=[decision.row()], description=decision.reason
    )
    return decision.row()
