"""Nightly flow: every stage of the loop, in order, on one Spark session and one snapshot.

sync yesterday's labels → ingest what arrived → validate (a critical failure stops here) →
embed → score with the current champion → index → leakage → drift → train/promote (unless
nothing new) → score with tonight's champion → Feast → lake maintenance → the night's
decision, in one table → hand the most useful images (drifted ones first) to annotators.
"""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from visionloop.flows.embed import EmbedResult, index_and_check
from visionloop.flows.ingest import IngestResult, ingest_batch
from visionloop.flows.train import TrainResult, train_and_promote
from visionloop.labelling.client import LabelStudio
from visionloop.labelling.handoff import HandoffResult
from visionloop.labelling.sync import SyncResult
from visionloop.lake.compaction import Compacted
from visionloop.lake.snapshot import with_label_events
from visionloop.monitoring.decision import NightlyDecision, decide_night
from visionloop.monitoring.drift import DriftCheck
from visionloop.parameters import NightlyParameters, TrainParameters
from visionloop.settings import load_settings
from visionloop.spark_jobs.infer_images import InferenceReport
from visionloop.tasks.embed import embed_images, refresh_feature_store
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
from visionloop.training.recipe import adopt_recipe


@dataclass(frozen=True)
class NightlyResult:
    """What each stage of one night did, in the order they ran.

    ``train`` and ``score`` are None when training is off (``train=False``), ``score`` also
    when there is no champion; ``feature_views`` is None when ``feature_store.materialise``
    is off.
    """

    labels: SyncResult
    ingest: IngestResult
    embed: EmbedResult
    drift: DriftCheck
    train: TrainResult | None
    score: InferenceReport | None  # the champion's predictions after training
    feature_views: list[str] | None
    maintenance: list[Compacted]
    decision: NightlyDecision
    handoff: HandoffResult


@flow(name="nightly", log_prints=True)
def nightly(params: NightlyParameters = NightlyParameters()) -> NightlyResult:
    """The whole loop on tonight's batch; each branch of the decision is recorded."""
    # A tuned recipe is trained only when the operator names it: never picked up silently.
    settings = adopt_recipe(load_settings(params.config), params.training_recipe)
    tracking = connect_tracking(settings)  # an unreachable store fails before anything runs
    # Label Studio down does not stop the night's training; sending tonight's tasks fails
    # the run at the end, naming it, and the tasks wait in the outbox.
    studio = connect_label_studio(settings, return_state=True).result(raise_on_failure=False)
    studio = studio if isinstance(studio, LabelStudio) else None
    spark = start_spark(settings)
    labels = sync_annotations(settings, studio)
    ingested = ingest_batch(spark, settings, params)
    batch_ids = ingested.batch_ids  # none on a night when nothing new arrived
    snapshot = snapshot_lake(settings)
    vectors = embed_images(spark, settings, snapshot, tracking)
    # The champion scores tonight's images on the Python workers that just embedded them:
    # Spark stops a worker idle for a minute, and the leakage check can take longer.
    score_images(spark, settings, snapshot, tracking)
    embedded = index_and_check(settings, snapshot, vectors, batch_ids)
    if embedded.leakage and embedded.leakage.exclusions:
        # tonight's leaked copies are out of tonight's training (and hand-off), not only the
        # next night's: the snapshot gains the exclusion events, its images stay as they were
        snapshot = with_label_events(snapshot, [embedded.leakage.exclusions])
    version = embedded.embeddings.version
    drift = check_drift(settings, snapshot, tracking, version, batch_ids)
    trained, scored = None, None
    if params.train:
        gate = ingested.gate  # None: nothing arrived, so no batch was gated tonight
        expectations = (
            {"passed": gate.passed, "overridden": gate.overridden, "batch_id": gate.batch_id}
            if gate
            else None
        )
        training = TrainParameters(force=params.force_training, config=params.config)
        trained = train_and_promote(tracking, settings, snapshot, training, expectations)
        scored = score_images(spark, settings, snapshot, tracking)  # a new champion
    feature_views = refresh_feature_store(settings) if settings.feature_store.materialise else None
    maintenance = maintain_lake(settings, tracking, version)
    action, reason = (
        (trained.plan.action, trained.plan.reason) if trained else ("skip", "training is off")
    )
    decision = publish_decision(decide_night(action, reason, drift.drifted, drift.note))
    queued = queue_for_annotation(settings, snapshot, tracking, studio, version, drift.drifted_ids)
    handoff = HandoffResult(queued, send_to_label_studio(settings))
    return NightlyResult(
        labels=labels,
        ingest=ingested,
        embed=embedded,
        drift=drift,
        train=trained,
        score=scored,
        feature_views=feature_views,
        maintenance=maintenance,
        decision=decision,
        handoff=handoff,
    )
