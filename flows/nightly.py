"""Nightly flow: every stage of the loop, in order. Later stages plug in here."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest import ingest_batch
from flows.train import train_and_promote
from visionloop.parameters import NightlyParameters, TrainParameters
from visionloop.settings import load_settings


@flow(name="nightly", log_prints=True)
def nightly(params: NightlyParameters | None = None) -> dict[str, Any]:
    """Ingest → validate (a critical failure stops here) → train → promote."""
    params = params or NightlyParameters()
    settings = load_settings(params.config)
    result: dict[str, Any] = {"ingest": ingest_batch(settings, params)}
    if params.train:
        gate = result["ingest"]["gate"]
        expectations = {key: gate[key] for key in ("passed", "overridden", "batch_id")}
        training = TrainParameters(force=params.force_training, config=params.config)
        result["train"] = train_and_promote(settings, training, expectations)
    return result
