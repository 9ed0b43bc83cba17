"""Train flow: snapshot the lake → train a challenger (unless nothing changed) → promote."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger

from tasks.train import plan_training, promote_model, train_model
from visionloop.parameters import TrainParameters
from visionloop.settings import Settings, load_settings


@flow(name="train", log_prints=True)
def train(params: TrainParameters | None = None) -> dict[str, Any]:
    """Fine-tune a challenger on the lake and put it through the champion/challenger gate."""
    params = params or TrainParameters()
    return train_and_promote(load_settings(params.config), params)


def train_and_promote(
    settings: Settings, params: TrainParameters, expectations: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The train and promote steps, for flows that already hold resolved settings."""
    plan = plan_training(settings)
    if plan["skip_reason"] and not params.force:
        get_run_logger().info("training skipped: %s", plan["skip_reason"])
        return {"trained": False, "skip_reason": plan["skip_reason"]}
    output_dir = settings.runs_dir / f"train-{datetime.now(UTC):%Y%m%dT%H%M%SZ}"
    challenger = train_model(settings, output_dir, plan["snapshot"], expectations)
    result: dict[str, Any] = {"trained": True, "challenger": challenger}
    if params.promote:
        result["promotion"] = promote_model(settings, challenger["version"])
    return result
