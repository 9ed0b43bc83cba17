"""Prefect tasks of the tune flow: thin wrappers over ``visionloop.training.tuning``."""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NONE

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import TuneParameters
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings
from visionloop.training.tuning import TuneResult, search


@task(retries=1, retry_delay_seconds=30, cache_policy=NONE)
def search_recipe(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    params: TuneParameters,
    output_dir: Path,
) -> TuneResult:
    """The Optuna search (the trials' torchrun logs stream into this task); a retry starts
    a fresh study in a new parent run."""
    attempt = output_dir / f"attempt-{len(list(output_dir.glob('attempt-*'))) + 1}"
    return search(tracking, settings, snapshot, params, attempt, log=get_run_logger().info)


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def publish_recipe(result: TuneResult) -> None:
    """The best recipe and every trial, as the run's artifact."""
    create_markdown_artifact(
        key="tuned-recipe",
        markdown=result.markdown(),
        description=f"Best of {len(result.trials)} trials on lake snapshot {result.snapshot_id}",
    )
