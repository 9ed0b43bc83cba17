"""Score flow: the champion's predictions for every lake image it has not scored → Feast."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from visionloop.parameters import ScoreParameters
from visionloop.settings import load_settings
from visionloop.spark_jobs.infer_images import InferenceReport
from visionloop.tasks.embed import refresh_feature_store
from visionloop.tasks.score import score_images
from visionloop.tasks.spark import start_spark
from visionloop.tasks.train import connect_tracking, snapshot_lake


@dataclass(frozen=True)
class ScoreResult:
    """The score flow: the champion's new predictions (None: no champion yet), then the
    feature views Feast materialised."""

    scoring: InferenceReport | None
    feature_views: list[str]


@flow(name="score", log_prints=True)
def score(params: ScoreParameters = ScoreParameters()) -> ScoreResult:
    """Incremental by (image, model version): a new champion rescores everything."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    scored = score_images(start_spark(settings), settings, snapshot_lake(settings), tracking)
    return ScoreResult(scored, refresh_feature_store(settings))
