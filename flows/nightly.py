"""Nightly flow: every stage of the loop, in order. Later stages plug in here."""

from __future__ import annotations

from typing import Any

from prefect import flow

from visionloop.flows.ingest import ingest_batch
from visionloop.flows.train import train_and_promote
from visionloop.parameters import NightlyParameters, TrainParameters
from visionloop.settings import load_settings
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="nightly", log_prints=True)
def nightly(params: NightlyParameters = NightlyParameters()) -> dict[str, Any]:
    """Ingest → validate (a critical failure stops here) → train → promote."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings) if params.train else None
    result: dict[str, Any] = {"ingest": ingest_batch(settings, params)}
    if tracking is not None:
        gate = result["ingest"]["gate"]
        expectations = {key: gate[key] for key in ("passed", "overridden", "batch_id")}
        training = TrainParameters(force=params.force_training, config=params.config)
        snapshot = snapshot_lake(settings)
        result["train"] = train_and_promote(tracking, settings, snapshot, training, expectations)
    return result
