"""Labelling flows: ``sync_labels`` brings annotations back; ``handoff`` sends new tasks."""

from __future__ import annotations

from prefect import flow

from visionloop.labelling.client import LabelStudio
from visionloop.labelling.handoff import HandoffResult
from visionloop.labelling.sync import SyncResult
from visionloop.parameters import HandoffParameters, SyncParameters
from visionloop.settings import load_settings
from visionloop.tasks.embed import embedder_version
from visionloop.tasks.labelling import (
    connect_label_studio,
    queue_for_annotation,
    send_to_label_studio,
    sync_annotations,
)
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="sync_labels", log_prints=True)
def sync_labels(params: SyncParameters = SyncParameters()) -> SyncResult:
    """Completed annotations become label events (or reviews); each is read once."""
    settings = load_settings(params.config)
    return sync_annotations(settings, connect_label_studio(settings))


@flow(name="handoff", log_prints=True)
def handoff(params: HandoffParameters = HandoffParameters()) -> HandoffResult:
    """The most useful images for the champion go to Label Studio (idempotently)."""
    settings = load_settings(params.config)
    if params.budget is not None:
        labelling = settings.labelling.model_copy(update={"budget": params.budget})
        settings = settings.model_copy(update={"labelling": labelling})
    tracking = connect_tracking(settings)
    studio = connect_label_studio(settings, return_state=True).result(raise_on_failure=False)
    version = embedder_version(settings, tracking)
    snapshot = snapshot_lake(settings)
    studio = studio if isinstance(studio, LabelStudio) else None  # down: queue, then fail in send
    queued = queue_for_annotation(settings, snapshot, tracking, studio, version, [])
    return HandoffResult(queued, send_to_label_studio(settings))
