"""Train flow: snapshot the lake → plan → train a challenger (or skip, or reuse) → promote."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from prefect import flow

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import TrainParameters
from visionloop.registry.challenger import Challenger, TrainingPlan
from visionloop.registry.export import ExportedModel
from visionloop.registry.promotion import PromotionResult
from visionloop.registry.tracking import ChampionSummary, Tracking
from visionloop.settings import Settings, load_settings
from visionloop.tasks.export import export_if_promoted
from visionloop.tasks.train import (
    connect_tracking,
    describe_champion,
    plan,
    promote_model,
    snapshot_lake,
    train_model,
)


@dataclass(frozen=True)
class TrainResult:
    """What the train stage did: its plan, the challenger trained (if any), the promotion
    (None when skipped or not asked for), the champion afterwards and, when the promotion
    made a champion, its ONNX export (or why that failed: the champion stands either way).

    The plan says why a run skipped (``plan.reason``) or which version it reused
    (``plan.version``).
    """

    plan: TrainingPlan
    snapshot_id: str
    challenger: Challenger | None = None
    promotion: PromotionResult | None = None
    champion: ChampionSummary | None = None
    export: ExportedModel | None = None
    export_error: str | None = None

    @property
    def trained(self) -> bool:
        """Whether a new challenger was trained tonight (not skipped, not reused)."""
        return self.challenger is not None


@flow(name="train", log_prints=True)
def train(params: TrainParameters = TrainParameters()) -> TrainResult:
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
) -> TrainResult:
    """The train and promote steps on one snapshot, for flows that hold the resources."""
    decided = plan(tracking, settings, snapshot, params.force)
    if decided.action == "skip":
        return TrainResult(decided, snapshot.id, champion=describe_champion(tracking))
    challenger = None
    if decided.action == "reuse":
        version = decided.version
    else:
        output_dir = settings.runs_dir / f"train-{datetime.now(UTC):%Y%m%dT%H%M%S%fZ}"
        challenger = train_model(tracking, settings, snapshot, decided, output_dir, expectations)
        version = challenger.version.version
    promotion = promote_model(tracking, settings, snapshot, version) if params.promote else None
    export, export_error = export_if_promoted(tracking, snapshot, promotion)
    champion = describe_champion(tracking)
    return TrainResult(decided, snapshot.id, challenger, promotion, champion, export, export_error)
