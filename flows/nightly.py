"""Nightly flow: every stage of the loop, in order. Later stages plug in here."""

from __future__ import annotations

from typing import Any

from prefect import flow

from flows.ingest import ingest_batch
from visionloop.parameters import NightlyParameters
from visionloop.settings import load_settings


@flow(name="nightly", log_prints=True)
def nightly(params: NightlyParameters | None = None) -> dict[str, Any]:
    """Ingest → validate (the gate stops the run on critical failures)."""
    params = params or NightlyParameters()
    settings = load_settings(params.config)
    return {"ingest": ingest_batch(settings, params)}
