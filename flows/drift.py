"""Drift flow: Evidently drift of new images against the champion's training images."""

from __future__ import annotations

from prefect import flow

from visionloop.lake.commit import recent_ingests
from visionloop.monitoring.drift import DriftCheck
from visionloop.parameters import DriftParameters
from visionloop.settings import load_settings
from visionloop.tasks.embed import embedder_version
from visionloop.tasks.monitor import check_drift
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="drift", log_prints=True)
def drift(params: DriftParameters = DriftParameters()) -> DriftCheck:
    """Compare the batches (or the last N days') with the champion's; needs them embedded."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    batch_ids = params.batch_ids or recent_ingests(settings, params.days)
    version = embedder_version(settings, tracking)
    return check_drift(settings, snapshot_lake(settings), tracking, version, batch_ids)
