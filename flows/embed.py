"""Embed flow: embeddings for new images → the similar-image index → leakage check → Feast."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow
from pyspark.sql import SparkSession

from visionloop.embeddings.results import IndexUpdate, LeakageResult
from visionloop.lake.commit import recent_ingests
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import EmbedParameters
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings, load_settings
from visionloop.spark_jobs.infer_images import InferenceReport
from visionloop.tasks.embed import check_leakage, embed_images, refresh_feature_store, update_index
from visionloop.tasks.spark import start_spark
from visionloop.tasks.train import connect_tracking, snapshot_lake


@dataclass(frozen=True)
class EmbedResult:
    """The embed stage: the new vectors, the index they grew, and the batches' leakage
    check (None when no batch was given: nothing new arrived)."""

    embeddings: InferenceReport
    index: IndexUpdate
    leakage: LeakageResult | None


@dataclass(frozen=True)
class EmbedFlowResult:
    """The embed flow: the embed stage, then the feature views Feast materialised."""

    embed: EmbedResult
    feature_views: list[str]


@flow(name="embed", log_prints=True)
def embed(params: EmbedParameters = EmbedParameters()) -> EmbedFlowResult:
    """Embed the lake's images that have no vector yet, index them, check the batches."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    snapshot = snapshot_lake(settings)
    batch_ids = params.batch_ids or recent_ingests(settings)
    stage = embed_stage(start_spark(settings), settings, snapshot, tracking, batch_ids)
    return EmbedFlowResult(stage, refresh_feature_store(settings))


def embed_stage(
    spark: SparkSession,
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    batch_ids: list[str],
) -> EmbedResult:
    """Embeddings, index and leakage on one snapshot, for flows that hold the resources."""
    embedded = embed_images(spark, settings, snapshot, tracking)
    return index_and_check(settings, snapshot, embedded, batch_ids)


def index_and_check(
    settings: Settings, snapshot: LakeSnapshot, embedded: InferenceReport, batch_ids: list[str]
) -> EmbedResult:
    """The rest of the embed stage once the vectors are in: grow the index, check the batches."""
    index = update_index(settings, embedded.version)
    leakage = check_leakage(settings, snapshot, embedded.version, batch_ids) if batch_ids else None
    return EmbedResult(embedded, index, leakage)
