"""Prefect tasks of the train and promote stages: thin wrappers over ``visionloop.registry``.

No task here caches: whether to train is decided from the registry by
:func:`~visionloop.registry.challenger.plan_training` (so ``--force`` and a rollback always
win), and a retried training task resumes from its last epoch's checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.alerts import emit_promotion
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.registry.challenger import (
    Challenger,
    TrainingPlan,
    plan_training,
    train_challenger,
)
from visionloop.registry.promotion import PromotionResult, promote
from visionloop.registry.tracking import ChampionSummary, Tracking
from visionloop.settings import Settings


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def connect_tracking(settings: Settings) -> Tracking:
    """Probe the tracking store once; the resource is passed to every later task."""
    return Tracking.connect(settings)


@task(cache_policy=NONE)
def snapshot_lake(settings: Settings) -> LakeSnapshot:
    """Freeze the lake's images table for this run."""
    snapshot = take(settings.lake_dir)
    get_run_logger().info(
        "lake snapshot %s: %d rows in %d batches, %d labelled train rows",
        snapshot.id,
        snapshot.rows,
        len(snapshot.batch_rows),
        snapshot.train_rows,
    )
    return snapshot


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def plan(
    tracking: Tracking, settings: Settings, snapshot: LakeSnapshot, force: bool
) -> TrainingPlan:
    """Train, skip or reuse: the decision and its reason become an artifact."""
    decided = plan_training(tracking, settings, snapshot, force=force)
    create_table_artifact(
        key="training-plan",
        table=[{"action": decided.action, "reason": decided.reason, "version": decided.version}],
        description=f"Training plan on lake snapshot {snapshot.id}",
    )
    return decided


@task(retries=1, retry_delay_seconds=30, cache_policy=NONE)
def train_model(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    training_plan: TrainingPlan,
    output_dir: Path,
    expectations: dict[str, Any] | None,
) -> Challenger:
    """DDP fine-tuning under torchrun (logs stream into this task), then register.

    A retry resumes from the last epoch's checkpoint in ``output_dir``.
    """
    logger = get_run_logger()
    challenger = train_challenger(
        tracking, settings, snapshot, training_plan, output_dir, expectations, log=logger.info
    )
    summary = challenger.summary()
    create_table_artifact(
        key="challenger",
        table=[{"measure": key, "value": value} for key, value in summary.items()],
        description=f"Challenger v{summary['version']} of {tracking.model_name}",
    )
    return challenger


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def describe_champion(tracking: Tracking) -> ChampionSummary | None:
    """The champion's version and test metrics, for the run's summary."""
    return tracking.champion()


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def promote_model(
    tracking: Tracking, settings: Settings, snapshot: LakeSnapshot, version: str | None
) -> PromotionResult:
    """The champion/challenger gate; the decision with its numbers becomes an artifact."""
    result = promote(tracking, settings, snapshot, version)
    emit_promotion(result)  # before anything a retry would repeat: a retry replays the decision
    create_table_artifact(
        key="promotion",
        table=result.rows,
        description=f"{result.name} v{result.challenger_version}: {result.decision.reason}",
    )
    return result
