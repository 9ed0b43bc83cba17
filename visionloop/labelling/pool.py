"""The candidates for annotation, read from the lake: unlabelled, not test, not already open.

Each carries the champion's calibrated probabilities (none before the first champion) and
its vector from the current embedder, aligned for :mod:`visionloop.labelling.selection`.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import pyarrow.compute as pc

from visionloop.embeddings.vectors import read_vectors
from visionloop.labelling.selection import Pool, eligible
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.scoring import read_predictions


def candidates(
    snapshot: LakeSnapshot, open_tasks: Collection[str], test: bool = False
) -> list[str]:
    """Unlabelled images outside the test split (``test``: inside it) that have no open task
    and are not excluded from training."""
    ids, splits, labelled = [], [], set(snapshot.excluded)
    for part in snapshot.row_groups(["image_id", "label", "split"]):
        table = part.table
        ids += table["image_id"].to_pylist()
        splits += table["split"].to_pylist()
        labelled.update(table["image_id"].filter(pc.is_valid(table["label"])).to_pylist())
    return [ids[i] for i in eligible(ids, splits, labelled, open_tasks, test)]


def build_pool(
    snapshot: LakeSnapshot,
    embedder_version: str,
    model_version: str | None,
    open_tasks: Collection[str],
    drifted: Collection[str],
) -> Pool:
    """Eligible images that have a vector (and, with a champion, a prediction)."""
    vectors = read_vectors(snapshot.lake_path, embedder_version, candidates(snapshot, open_tasks))
    if model_version is None:
        return Pool(vectors.ids, None, vectors.matrix, _flags(vectors.ids, drifted))
    scored = read_predictions(snapshot.lake_path, model_version, vectors.ids, "probabilities")
    keep = [i for i, image_id in enumerate(vectors.ids) if image_id in scored]
    ids = [vectors.ids[i] for i in keep]
    classes = len(next(iter(scored.values()))) if scored else 0
    matrix = np.asarray([scored[image_id] for image_id in ids], dtype=np.float64)
    matrix = matrix.reshape(len(ids), classes)  # (0, 0) when every image is labelled
    return Pool(ids, matrix, vectors.matrix[keep], _flags(ids, drifted))


def _flags(ids: list[str], drifted: Collection[str]) -> np.ndarray:
    chosen = set(drifted)
    return np.asarray([image_id in chosen for image_id in ids], dtype=bool)
