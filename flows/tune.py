"""Tune flow: snapshot the lake → search the training recipe → publish the best one."""

from __future__ import annotations

from datetime import UTC, datetime

from prefect import flow

from visionloop.parameters import TuneParameters
from visionloop.settings import load_settings
from visionloop.tasks.train import connect_tracking, snapshot_lake
from visionloop.tasks.tune import publish_recipe, search_recipe
from visionloop.training.tuning import TuneResult


@flow(name="tune", log_prints=True)
def tune(params: TuneParameters = TuneParameters()) -> TuneResult:
    """Search the recipe on one snapshot; the nightly adopts the result only when told to
    (its ``training_recipe`` parameter)."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    snapshot = snapshot_lake(settings)
    output_dir = settings.runs_dir / f"tune-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
    result = search_recipe(tracking, settings, snapshot, params, output_dir)
    publish_recipe(result)
    return result
