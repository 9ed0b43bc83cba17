"""Prefect task of batch scoring: the champion's predictions for lake images it has not scored."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.served_model import champion_scoring
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings
from visionloop.spark_jobs.infer_images import InferenceReport, run_inference


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def score_images(
    spark: SparkSession, settings: Settings, snapshot: LakeSnapshot, tracking: Tracking
) -> InferenceReport | None:
    """Predictions of the current champion for every snapshot image it has not scored;
    None when there is no champion yet."""
    job = champion_scoring(settings, tracking)
    if job is None:
        get_run_logger().info("no champion yet: nothing scores the lake")
        return None
    report = run_inference(spark, settings, snapshot, job)
    create_table_artifact(
        key="scoring",
        table=[{"measure": key, "value": str(value)} for key, value in report.summary().items()],
        description=f"Predictions of {job.model_name} v{job.model_version}",
    )
    return report
