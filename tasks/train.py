"""Prefect tasks of the train and promote stages: thin wrappers over visionloop.training."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.settings import Settings
from visionloop.training.pipeline import skip_reason, snapshot_lake, train_challenger
from visionloop.training.promotion import promote


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def plan_training(settings: Settings) -> dict[str, Any]:
    """Snapshot the lake and decide whether there is anything new to train on."""
    snapshot = snapshot_lake(settings)
    return {"snapshot": snapshot, "skip_reason": skip_reason(settings, snapshot)}


def _training_cache_key(_context: Any, parameters: dict[str, Any]) -> str:
    """Same training data, same settings, same tracking store: the same challenger."""
    settings: Settings = parameters["settings"]
    identity = "|".join(
        [
            parameters["snapshot"]["train_hash"],
            settings.training.model_dump_json(),
            settings.resolved_mlflow_uri,
            settings.registered_model_name,
        ]
    )
    return "train-" + hashlib.sha256(identity.encode()).hexdigest()[:32]


@task(retries=1, retry_delay_seconds=30, cache_key_fn=_training_cache_key)
def train_model(
    settings: Settings,
    output_dir: Path,
    snapshot: dict[str, Any],
    expectations: dict[str, Any] | None,
) -> dict[str, Any]:
    """DDP fine-tuning under torchrun (logs stream into this task), then register.

    A retry resumes from the last epoch's checkpoint in ``output_dir``.
    """
    logger = get_run_logger()
    challenger = train_challenger(settings, output_dir, snapshot, expectations, log=logger.info)
    summary = challenger.summary()
    create_table_artifact(
        key="challenger",
        table=[{"measure": key, "value": value} for key, value in summary.items()],
        description=f"Challenger v{summary['version']} of {settings.registered_model_name}",
    )
    return summary


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def promote_model(settings: Settings, version: str | None) -> dict[str, Any]:
    """The champion/challenger gate; the decision with its numbers becomes an artifact."""
    result = promote(settings, version)
    create_table_artifact(
        key="promotion",
        table=result.rows,
        description=f"{result.name} v{result.challenger_version}: {result.decision.reason}",
    )
    champion_report = (
        result.challenger_report if result.decision.promoted else result.champion_report
    )
    return {
        "promoted": result.decision.promoted,
        "reason": result.decision.reason,
        "challenger_version": result.challenger_version,
        "champion_version": (
            result.challenger_version if result.decision.promoted else result.champion_version
        ),
        "champion_test_accuracy": champion_report.accuracy if champion_report else None,
    }
