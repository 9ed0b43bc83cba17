"""Feast definitions of visionloop: one entity, four feature views over the lake's tables.

:func:`build` makes them for a lake; visionloop calls it with the settings' lake. The
module-level ``objects`` serve the ``feast`` CLI (``feast -c feature_repo apply``), for the
lake under ``$VISIONLOOP_DATA_HOME`` (default ``.visionloop``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.types import Array, Float32, Float64, Int32, String

#: Rows older than this are not served online or joined into training frames.
KEEP = timedelta(days=3650)


def build(lake_dir: Path) -> list[object]:
    """The entity, sources and feature views over the tables of ``lake_dir``."""
    # An image, by the sha256 of its original bytes: the key of every lake table.
    image = Entity(
        name="image",
        join_keys=["image_id"],
        value_type=ValueType.STRING,
        description="sha256 of the image's original file bytes",
    )
    # One vector per image and embedder version (the newest wins online).
    embeddings = FeatureView(
        name="image_embeddings",
        entities=[image],
        ttl=KEEP,
        online=True,
        schema=[
            Field(name="vector", dtype=Array(Float32), description="pooled backbone features"),
            Field(name="embedder_version", dtype=String, description="model, weights, size"),
        ],
        source=FileSource(
            name="embeddings", path=str(lake_dir / "embeddings"), timestamp_field="created_at"
        ),
    )
    # What a model version predicted for the image, calibrated.
    predictions = FeatureView(
        name="image_predictions",
        entities=[image],
        ttl=KEEP,
        online=True,
        schema=[
            Field(name="model_name", dtype=String, description="registered model"),
            Field(name="model_version", dtype=String, description="its version"),
            Field(name="label", dtype=String, description="predicted class"),
            Field(name="probabilities", dtype=Array(Float64), description="in label order"),
            Field(name="confidence", dtype=Float64, description="top probability"),
            Field(name="margin", dtype=Float64, description="top minus second probability"),
            Field(name="entropy", dtype=Float64, description="of the probabilities, nats"),
        ],
        source=FileSource(
            name="predictions", path=str(lake_dir / "predictions"), timestamp_field="scored_at"
        ),
    )
    # Facts of the image that never change once ingested.
    facts = FeatureView(
        name="image_facts",
        entities=[image],
        ttl=KEEP,
        online=True,
        schema=[
            Field(name="split", dtype=String, description="train / val / test, from the id"),
            Field(name="width", dtype=Int32, description="of the original"),
            Field(name="height", dtype=Int32, description="of the original"),
            Field(name="source_format", dtype=String, description="format of the original"),
        ],
        source=FileSource(
            name="images", path=str(lake_dir / "images"), timestamp_field="ingested_at"
        ),
    )
    # The image's label as the lake knew it at a time: label events by when they were recorded.
    labels = FeatureView(
        name="image_labels",
        entities=[image],
        ttl=KEEP,
        online=True,
        schema=[
            Field(name="label", dtype=String, description="class name"),
            Field(name="label_source", dtype=String, description="seed or annotator"),
            Field(name="annotator", dtype=String, description="who, for annotator labels"),
        ],
        source=FileSource(
            name="label_events", path=str(lake_dir / "label_events"), timestamp_field="recorded_at"
        ),
    )
    return [image, embeddings, predictions, facts, labels]


objects = build(Path(os.environ.get("VISIONLOOP_DATA_HOME", ".visionloop")).resolve() / "lake")
