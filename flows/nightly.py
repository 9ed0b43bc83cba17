"""Nightly flow: every stage of the loop, in order, on one Spark session and one snapshot.

sync yesterday's labels → ingest what arrived → validate (a critical failure stops here) →
embed → index → leakage → score with the current champion → drift → train/promote (unless
nothing new) → score with tonight's champion → Feast → lake maintenance → the night's
decision, in one table → hand the most useful images (drifted ones first) to annotators.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from visionloop.flows.embed import embed_stage
from visionloop.flows.ingest import ingest_batch
from visionloop.flows.train import train_and_promote
from visionloop.labelling.client import LabelStudio
from visionloop.monitoring.decision import decide_night
from visionloop.parameters import NightlyParameters, TrainParameters
from visionloop.settings import load_settings
from visionloop.tasks.embed import refresh_feature_store
from visionloop.tasks.labelling import (
    connect_label_studio,
    queue_for_annotation,
    send_to_label_studio,
    sync_annotations,
)
from visionloop.tasks.maintenance import maintain_lake
from visionloop.tasks.monitor import check_drift, publish_decision
from visionloop.tasks.score import score_images
from visionloop.tasks.spark import start_spark
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="nightly", log_prints=True)
def nightly(params: NightlyParameters = NightlyParameters()) -> dict[str, Any]:
    """The whole loop on tonight's batch; each branch of the decision is recorded."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)  # an unreachable store fails before anything runs
    # Label Studio down does not stop the night's training; sending tonight's tasks fails
    # the run at the end, naming it, and the tasks wait in the outbox.
    studio = connect_label_studio(settings, return_state=True).result(raise_on_failure=False)
    studio = studio if isinstance(studio, LabelStudio) else None
    spark = start_spark(settings)
    result: dict[str, Any] = {"labels": sync_annotations(settings, studio)}
    ingested = result["ingest"] = ingest_batch(spark, settings, params)
    batch_ids = ingested.batch_ids  # none on a night when nothing new arrived
    snapshot = snapshot_lake(settings)
    result["embed"] = embed_stage(spark, settings, snapshot, tracking, batch_ids)
    score_images(spark, settings, snapshot, tracking)  # tonight's images, by the champion
    version = result["embed"]["embeddings"]["embedder_version"]
    result["drift"] = check_drift(settings, snapshot, tracking, version, batch_ids)
    if params.train:
        gate = ingested.gate  # None: nothing arrived, so no batch was gated tonight
        keys = ("passed", "overridden", "batch_id")
        expectations = {key: gate[key] for key in keys} if gate else None
        training = TrainParameters(force=params.force_training, config=params.config)
        result["train"] = train_and_promote(tracking, settings, snapshot, training, expectations)
        result["score"] = score_images(spark, settings, snapshot, tracking)  # a new champion
    if settings.feature_store.materialise:
        result["feature_views"] = refresh_feature_store(settings)
    result["maintenance"] = maintain_lake(settings, tracking, version)
    plan = result.get("train", {}).get("plan", {"action": "skip", "reason": "training is off"})
    drift = result["drift"]
    decision = decide_night(plan["action"], plan["reason"], drift["drifted"], drift["note"])
    result["decision"] = publish_decision(decision)
    drifted = drift["drifted_ids"]
    queued = queue_for_annotation(settings, snapshot, tracking, studio, version, drifted)
    result["handoff"] = {"queued": queued, "sent": send_to_label_studio(settings)}
    return result
