"""The rows a drift check compares, read from the lake: reference and current images.

The reference is a seeded sample of the champion's training images (the train split of the
exact files of its training snapshot); the current set is the images of the batches under
test. Each
row carries its vector (one embedder version), the champion's predicted label, the image's
statistics and its original size.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

import pandas as pd
import pyarrow.compute as pc

from visionloop.embeddings.vectors import read_vectors
from visionloop.lake.snapshot import LakeSnapshot, row_groups
from visionloop.monitoring.drift import drift_frame, image_statistics
from visionloop.registry.scoring import read_predictions

COLUMNS = ["image_id", "image", "split", "width", "height"]


@dataclass(frozen=True)
class DriftSets:
    reference: pd.DataFrame
    current: pd.DataFrame
    current_ids: list[str]


def batch_rows(
    snapshot: LakeSnapshot, batch_ids: Collection[str], split: str | None
) -> pd.DataFrame:
    """Images-table rows of some batches (optionally one split), image bytes included."""
    return file_rows(
        [item.path for item in snapshot.files if item.batch_id in set(batch_ids)], split
    )


def file_rows(paths: Collection[str], split: str | None) -> pd.DataFrame:
    """Images-table rows of some files (optionally one split), image bytes included."""
    parts = []
    for part in row_groups(paths, COLUMNS):
        table = part.table
        if split is not None:
            table = table.filter(pc.equal(table["split"], split))
        parts.append(table.to_pandas())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)


def _sample(rows: pd.DataFrame, size: int, seed: int) -> pd.DataFrame:
    if len(rows) <= size:
        return rows
    return rows.sample(n=size, random_state=seed).reset_index(drop=True)


def _frame(
    rows: pd.DataFrame, snapshot: LakeSnapshot, embedder_version: str, champion_version: str
) -> pd.DataFrame:
    vectors = read_vectors(snapshot.lake_path, embedder_version, rows["image_id"])
    rows = rows.set_index("image_id").loc[vectors.ids].reset_index()
    predicted = read_predictions(snapshot.lake_path, champion_version, vectors.ids)
    return drift_frame(
        vectors.matrix,
        image_statistics(rows["image"].tolist()),
        rows[["width", "height"]],
        [predicted.get(image_id) for image_id in vectors.ids],
    ).assign(image_id=vectors.ids)


def drift_sets(
    snapshot: LakeSnapshot,
    embedder_version: str,
    champion_version: str,
    reference: LakeSnapshot,
    current_batches: Collection[str],
    reference_size: int,
    seed: int,
) -> DriftSets:
    """Reference (the champion's training images, sampled from its training snapshot) and
    current (the batches) frames."""
    reference = _sample(file_rows(reference.paths, "train"), reference_size, seed)
    current = _sample(batch_rows(snapshot, current_batches, None), 2 * reference_size, seed)
    reference_frame = _frame(reference, snapshot, embedder_version, champion_version)
    current_frame = _frame(current, snapshot, embedder_version, champion_version)
    ids = current_frame.pop("image_id").tolist()
    reference_frame.pop("image_id")
    return DriftSets(reference_frame, current_frame, ids)
