"""The embedder: a frozen backbone's pooled features for every image, with a version.

By default the packaged ImageNet ``tf_efficientnet_lite0`` — frozen, so vectors stay
comparable across nights for similarity, leakage and drift. A setting may name another timm
model with a weights file, or the champion's backbone. The **version** (model, weights
hash, input size, preprocessing version) is stored with every vector: a new version
re-embeds, and vectors of two versions are never mixed. Images go through the one model
input path (ingest preprocessing, then the evaluation transform).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from visionloop.embeddings import fingerprints
from visionloop.lake.contract import TIMESTAMP, embeddings_schema
from visionloop.lake.snapshot import file_sha256
from visionloop.preprocessing import PREPROCESSING_VERSION, ImageOptions, image_options
from visionloop.settings import Settings

if TYPE_CHECKING:
    from visionloop.registry.tracking import Tracking
from visionloop.training.inputs import ModelInputs, run_batches
from visionloop.training.models import (
    PACKAGED_MODEL,
    create_model,
    model_spec,
    packaged_weights_path,
)


@dataclass(frozen=True)
class EmbedderSource:
    """What to build an embedder from: picklable, so Spark workers build it themselves."""

    model_name: str
    weights: str  # "packaged" or a weights file (a state_dict or a visionloop model.pt)
    input_size: int
    options: ImageOptions

    @functools.cached_property
    def weights_sha256(self) -> str:
        path = packaged_weights_path() if self.weights == "packaged" else Path(self.weights)
        return file_sha256(path)

    @functools.cached_property
    def dimensions(self) -> int:
        """The vectors' length, from the architecture alone (no weights are read)."""
        with torch.device("meta"):
            return int(create_model(self.model_name, 1).num_features)

    @property
    def version(self) -> str:
        """``<model>-<size>px-w<weights hash>-p<preprocessing>-<fingerprint version>``."""
        return (
            f"{self.model_name}-{self.input_size}px-w{self.weights_sha256[:12]}"
            f"-p{PREPROCESSING_VERSION}-{fingerprints.VERSION}"
        )

    def build(self) -> Embedder:
        weights = self.weights if self.weights == "packaged" else Path(self.weights)
        if weights == "packaged" and self.model_name != PACKAGED_MODEL:
            raise ValueError(
                f"the packaged weights are for {PACKAGED_MODEL}, not {self.model_name}; set "
                "embeddings.weights to a weights file"
            )
        model = create_model(self.model_name, 1, weights)
        model.reset_classifier(0)  # pooled features, no head
        spec = model_spec(model, self.model_name, ("feature",), self.input_size)
        return Embedder(model.eval(), ModelInputs(spec, self.options), self.version)


class Embedder:
    """Encoded images in, float32 vectors out."""

    def __init__(self, model: nn.Module, inputs: ModelInputs, version: str) -> None:
        self.model, self.inputs, self.version = model, inputs, version
        self.dimensions = int(model.num_features)

    def embed(self, images: Iterable[Any], batch_size: int = 128) -> np.ndarray:
        vectors = run_batches(self.model, self.inputs, images, batch_size)
        if vectors is None:
            return np.zeros((0, self.dimensions), dtype=np.float32)
        return vectors


@dataclass(frozen=True)
class EmbeddingJob:
    """The embedding run of :mod:`visionloop.spark_jobs.infer_images` (picklable)."""

    source: EmbedderSource
    dimensions: int
    batch_size: int = 128
    threads: int = 1  # torch threads per Spark task

    table = "embeddings"
    version_column = "embedder_version"

    @property
    def version(self) -> str:
        return self.source.version

    def schema(self) -> pa.Schema:
        return embeddings_schema(self.dimensions, fingerprints.SPECTRUM_SIZE)

    def load(self) -> Callable[[list[str], list[bytes]], pa.Table]:
        torch.set_num_threads(self.threads)
        embedder = self.source.build()
        schema = self.schema()

        def embed(image_ids: list[str], images: list[bytes]) -> pa.Table:
            vectors = embedder.embed(images, self.batch_size).astype(np.float32)
            prints = np.stack([fingerprints.spectrum(image) for image in images])
            now = datetime.now(UTC)
            return pa.table(
                {
                    "image_id": pa.array(image_ids, pa.string()),
                    "embedder_version": pa.array([self.version] * len(image_ids), pa.string()),
                    "vector": _fixed_size(vectors),
                    "fingerprint": _fixed_size(prints),
                    "created_at": pa.array([now] * len(image_ids), TIMESTAMP),
                },
                schema=schema,
            )

        return embed


def embedder_source(settings: Settings, champion_model: Path | None = None) -> EmbedderSource:
    """The embedder the settings ask for; ``champion_model`` is the champion's served-model
    folder, needed when ``embeddings.weights`` is ``champion``."""
    from visionloop.registry.served_model import model_files  # not in Spark workers: mlflow

    config, options = settings.embeddings, image_options(settings)
    if config.weights == "champion":
        if champion_model is None:
            raise ValueError(
                "embeddings.weights is 'champion' but there is no champion yet; use "
                "'packaged' (the default) until a model is promoted"
            )
        model_pt, _ = model_files(champion_model)
        name = torch.load(model_pt, map_location="cpu", weights_only=True)["model_name"]
        return EmbedderSource(name, str(model_pt), config.input_size, options)
    return EmbedderSource(config.model_name, str(config.weights), config.input_size, options)


def _fixed_size(matrix: np.ndarray) -> pa.FixedSizeListArray:
    flat = pa.array(np.ascontiguousarray(matrix, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, matrix.shape[1])


def current_embedder(settings: Settings, tracking: Tracking) -> EmbedderSource:
    """The embedder the settings name, fetching the champion when its backbone is asked for."""
    from visionloop.registry.tracking import CHAMPION

    champion = None
    if settings.embeddings.weights == "champion":
        version = tracking.alias_version(CHAMPION)
        champion = tracking.download_model(version, settings.models_dir) if version else None
    return embedder_source(settings, champion)


def embedding_job(settings: Settings, source: EmbedderSource) -> EmbeddingJob:
    """The Spark job for ``source``; the embedder itself is built in the workers only."""
    config = settings.embeddings
    return EmbeddingJob(source, source.dimensions, config.batch_size, config.threads_per_task)
