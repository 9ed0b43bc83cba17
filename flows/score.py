"""Score flow: the champion's predictions for every lake image it has not scored → Feast."""

from __future__ import annotations

from typing import Any

from prefect import flow

from visionloop.parameters import ScoreParameters
from visionloop.settings import load_settings
from visionloop.tasks.embed import refresh_feature_store
from visionloop.tasks.score import score_images
from visionloop.tasks.spark import start_spark
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="score", log_prints=True)
def score(params: ScoreParameters = ScoreParameters()) -> dict[str, Any]:
    """Incremental by (image, model version): a new champion rescores everything."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    scored = score_images(start_spark(settings), settings, snapshot_lake(settings), tracking)
    return {"scoring": scored, "feature_views": refresh_feature_store(settings)}
