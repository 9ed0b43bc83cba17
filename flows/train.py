"""Train flow: snapshot the lake → plan → train a challenger (or skip, or reuse) → promote."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import TrainParameters
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings, load_settings
from visionloop.tasks.train import (
    connect_tracking,
    describe_champion,
    plan,
    promote_model,
    snapshot_lake,
    train_model,
)


@flow(name="train", log_prints=True)
def train(params: TrainParameters = TrainParameters()) -> dict[str, Any]:
    """Fine-tune a challenger on the lake and put it through the champion/challenger gate."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    return train_and_promote(tracking, settings, snapshot_lake(settings), params)


def train_and_promote(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    params: TrainParameters,
    expectations: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The train and promote steps on one snapshot, for flows that hold the resources."""
    decided = plan(tracking, settings, snapshot, params.force)
    result: dict[str, Any] = {"plan": decided.to_dict(), "snapshot_id": snapshot.id}
    if decided.action == "skip":
        return result | {
            "trained": False,
            "skip_reason": decided.reason,
            "champion": describe_champion(tracking),
        }
    if decided.action == "reuse":
        version = decided.version
        result |= {"trained": False, "reused_version": version}
    else:
        output_dir = settings.runs_dir / f"train-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        challenger = train_model(tracking, settings, snapshot, decided, output_dir, expectations)
        result |= {"trained": True, "challenger": challenger}
        version = challenger["version"]
    if params.promote:
        result["promotion"] = promote_model(tracking, settings, snapshot, version)
    return result | {"champion": describe_champion(tracking)}
