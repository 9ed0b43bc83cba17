"""Batch scoring: a registered model's calibrated predictions for lake images, as table rows.

:func:`uncertainty` is pure (probabilities in, label index, confidence, margin and entropy
out). :class:`ScoringJob` is the scoring run of :mod:`visionloop.spark_jobs.infer_images`:
each Spark worker loads the model's ``model.pt`` once and predicts through
:class:`~visionloop.training.classifier.ImageClassifier`, the served model's own path.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from visionloop.lake.contract import PREDICTIONS_SCHEMA
from visionloop.lake.snapshot import row_groups
from visionloop.lake.versions import version_files
from visionloop.training.classifier import ImageClassifier


def uncertainty(probabilities: np.ndarray) -> dict[str, np.ndarray]:
    """Per row: the top class index, its probability, top minus second, entropy (nats)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    ordered = np.sort(probabilities, axis=1)
    second = ordered[:, -2] if probabilities.shape[1] > 1 else np.zeros(len(probabilities))
    safe = np.clip(probabilities, 1e-300, 1.0)
    return {
        "index": probabilities.argmax(axis=1),
        "confidence": ordered[:, -1],
        "margin": ordered[:, -1] - second,
        "entropy": -(probabilities * np.log(safe)).sum(axis=1),
    }


def prediction_table(
    image_ids: list[str],
    probabilities: np.ndarray,
    labels: list[str],
    model_name: str,
    model_version: str,
    scored_at: datetime,
) -> pa.Table:
    stats = uncertainty(probabilities)
    count = len(image_ids)
    return pa.table(
        {
            "image_id": pa.array(image_ids, pa.string()),
            "model_name": pa.array([model_name] * count, pa.string()),
            "model_version": pa.array([model_version] * count, pa.string()),
            "label": pa.array([labels[i] for i in stats["index"]], pa.string()),
            "probabilities": pa.array([row.tolist() for row in probabilities]),
            "confidence": stats["confidence"],
            "margin": stats["margin"],
            "entropy": stats["entropy"],
            "scored_at": pa.array([scored_at] * count, PREDICTIONS_SCHEMA.field("scored_at").type),
        },
        schema=PREDICTIONS_SCHEMA,
    )


@dataclass(frozen=True)
class ScoringJob:
    """Score images with one registered model version (picklable, for Spark workers)."""

    model_pt: str  # the version's model.pt, on storage the workers can read
    temperature: float
    model_name: str  # the registered model
    model_version: str
    batch_size: int = 128
    threads: int = 1  # torch threads per Spark task

    table = "predictions"
    version_column = "model_version"

    @property
    def version(self) -> str:
        return self.model_version

    def schema(self) -> pa.Schema:
        return PREDICTIONS_SCHEMA

    def load(self) -> Callable[[list[str], list[bytes]], pa.Table]:
        torch.set_num_threads(self.threads)
        classifier = ImageClassifier.load(self.model_pt, temperature=self.temperature)

        def score(image_ids: list[str], images: list[bytes]) -> pa.Table:
            probabilities = classifier.predict_proba(images, self.batch_size)
            now = datetime.now(UTC)
            return prediction_table(
                image_ids,
                probabilities,
                classifier.labels,
                self.model_name,
                self.model_version,
                now,
            )

        return score


def read_predictions(
    lake_dir: Path, model_version: str, image_ids: Collection[str], column: str = "label"
) -> dict[str, object]:
    """``image_id -> column`` (the predicted label by default) of one model version."""
    wanted, values = set(image_ids), {}
    columns = ["image_id", "model_version", column]
    for part in row_groups(version_files(lake_dir, "predictions", model_version), columns):
        table = part.table.filter(pc.equal(part.table["model_version"], model_version))
        for image_id, value in zip(
            table["image_id"].to_pylist(), table[column].to_pylist(), strict=True
        ):
            if image_id in wanted:
                values[image_id] = value
    return values
