"""Embed flow: embeddings for new images → the similar-image index → leakage check → Feast."""

from __future__ import annotations

from typing import Any

from prefect import flow
from pyspark.sql import SparkSession

from visionloop.lake.commit import recent_ingests
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import EmbedParameters
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings, load_settings
from visionloop.tasks.embed import check_leakage, embed_images, refresh_feature_store, update_index
from visionloop.tasks.spark import start_spark
from visionloop.tasks.train import connect_tracking, snapshot_lake


@flow(name="embed", log_prints=True)
def embed(params: EmbedParameters = EmbedParameters()) -> dict[str, Any]:
    """Embed the lake's images that have no vector yet, index them, check the batches."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    snapshot = snapshot_lake(settings)
    batch_ids = params.batch_ids or recent_ingests(settings)
    result = embed_stage(start_spark(settings), settings, snapshot, tracking, batch_ids)
    return result | {"feature_views": refresh_feature_store(settings)}


def embed_stage(
    spark: SparkSession,
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    batch_ids: list[str],
) -> dict[str, Any]:
    """Embeddings, index and leakage on one snapshot, for flows that hold the resources."""
    embedded = embed_images(spark, settings, snapshot, tracking)
    version = embedded["embedder_version"]
    index = update_index(settings, version)
    leakage = check_leakage(settings, snapshot, version, batch_ids) if batch_ids else None
    return {"embeddings": embedded, "index": index, "leakage": leakage}
