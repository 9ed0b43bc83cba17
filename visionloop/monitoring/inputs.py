"""The rows a drift check compares, read from the lake: reference and current images.

The reference is a seeded sample of the champion's training images (the train split of the
exact files of its training snapshot); the current set is the images of the batches under
test. Each row carries its vector (one embedder version), the champion's predicted label,
the image's statistics and its original size.

The reference sample is drawn from the id and split columns; only the sampled images' bytes
are read, once per champion: the frame is kept in a cache directory under a key of every
input that shapes it, so later nights read a file of ``reference_size`` rows, not the lake.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pyarrow.compute as pc

from visionloop.embeddings.vectors import read_vectors
from visionloop.lake.snapshot import LakeSnapshot, row_groups
from visionloop.monitoring.drift import PREDICTED, UNSCORED, drift_frame, image_statistics
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


def file_rows(
    paths: Collection[str], split: str | None, columns: Collection[str] = COLUMNS
) -> pd.DataFrame:
    """Images-table rows of some files (optionally one split), image bytes included unless
    ``columns`` leaves them out."""
    parts = []
    for part in row_groups(paths, columns):
        table = part.table
        if split is not None:
            table = table.filter(pc.equal(table["split"], split))
        parts.append(table.to_pandas())
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)


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
    cache_dir: Path,
) -> DriftSets:
    """Reference (the champion's training images, sampled from its training snapshot) and
    current (the batches) frames."""
    reference_frame = _reference_frame(
        snapshot, embedder_version, champion_version, reference, reference_size, seed, cache_dir
    )
    current = _sample(batch_rows(snapshot, current_batches, None), 2 * reference_size, seed)
    current_frame = _frame(current, snapshot, embedder_version, champion_version)
    ids = current_frame.pop("image_id").tolist()
    return DriftSets(reference_frame, current_frame, ids)


def _reference_frame(
    snapshot: LakeSnapshot,
    embedder_version: str,
    champion_version: str,
    reference: LakeSnapshot,
    size: int,
    seed: int,
    cache_dir: Path,
) -> pd.DataFrame:
    """The reference frame, from the cache when these exact inputs made it before."""
    inputs = [reference.id, champion_version, embedder_version, size, seed]
    key = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    cached = cache_dir / f"reference-{key}.parquet"
    if cached.exists():
        return pd.read_parquet(cached)
    rows = reference_rows(reference, size, seed)
    frame = _frame(rows, snapshot, embedder_version, champion_version).drop(columns="image_id")
    if len(frame) < len(rows) or (frame[PREDICTED] == UNSCORED).any():
        return frame  # not every image embedded and scored yet: a later night completes it
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_suffix(f".{os.getpid()}.partial")
    frame.to_parquet(partial, index=False)
    os.replace(partial, cached)  # a reader never sees half a file
    return frame


def reference_rows(reference: LakeSnapshot, size: int, seed: int) -> pd.DataFrame:
    """A seeded sample of ``size`` train rows of ``reference``: ids drawn from the id and
    split columns, bytes read only for the drawn images."""
    ids = file_rows(reference.paths, "train", columns=["image_id", "split"])
    drawn = _sample(ids, size, seed)["image_id"].tolist()
    found = reference.lookup(drawn, COLUMNS)
    return pd.DataFrame([found[image_id] for image_id in drawn], columns=COLUMNS)


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
