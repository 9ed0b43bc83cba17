"""Prefect task of batch scoring: the champion's predictions for lake images it has not scored."""

from __future__ import annotations

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.scoring import ScoringJob
from visionloop.registry.served_model import model_files
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.spark_jobs.infer_images import InferenceReport, run_inference


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def score_images(
    spark: SparkSession, settings: Settings, snapshot: LakeSnapshot, tracking: Tracking
) -> InferenceReport | None:
    """Predictions of the current champion for every snapshot image it has not scored;
    None when there is no champion yet."""
    version = tracking.alias_version(CHAMPION)
    if version is None:
        get_run_logger().info("no champion yet: nothing scores the lake")
        return None
    model_pt, temperature = model_files(tracking.download_model(version, settings.models_dir))
    job = ScoringJob(
        str(model_pt),
        temperature,
        tracking.model_name,
        version,
        settings.embeddings.batch_size,
        settings.embeddings.threads_per_task,
    )
    report = run_inference(spark, settings, snapshot, job)
    create_table_artifact(
        key="scoring",
        table=[{"measure": key, "value": str(value)} for key, value in report.record().items()],
        description=f"Predictions of {tracking.model_name} v{version}",
    )
    return report
