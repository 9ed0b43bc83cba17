"""Reading the embeddings table: the vectors of one embedder version, never mixed with another."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.compute as pc

from visionloop.lake.snapshot import row_groups
from visionloop.lake.versions import version_files

EMBEDDINGS = "embeddings"


@dataclass(frozen=True)
class Vectors:
    """Image ids and their vectors (one row each), of one embedder version."""

    version: str
    ids: list[str]
    matrix: np.ndarray  # (N, D) float32

    def __len__(self) -> int:
        return len(self.ids)

    def normalised(self) -> np.ndarray:
        """Rows scaled to unit length, so inner product is cosine similarity."""
        norms = np.linalg.norm(self.matrix, axis=1, keepdims=True)
        return self.matrix / np.maximum(norms, 1e-12)

    def subset(self, image_ids: Collection[str]) -> Vectors:
        wanted = set(image_ids)
        rows = [i for i, image_id in enumerate(self.ids) if image_id in wanted]
        return Vectors(self.version, [self.ids[i] for i in rows], self.matrix[rows])


def read_vectors(
    lake_dir: Path,
    version: str,
    image_ids: Collection[str] | None = None,
    exclude: Collection[str] = (),
    column: str = "vector",
) -> Vectors:
    """Vectors of ``version`` (only of ``image_ids`` when given, none of ``exclude``), read one
    row group at a time; ``column="fingerprint"`` reads the pixel fingerprints instead."""
    wanted = set(image_ids) if image_ids is not None else None
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    seen: set[str] = set(exclude)
    columns = ["image_id", "embedder_version", column]
    for part in row_groups(version_files(lake_dir, EMBEDDINGS, version), columns):
        table = part.table.filter(pc.equal(part.table["embedder_version"], version))
        if not len(table):
            continue
        batch_ids = table["image_id"].to_pylist()
        keep = [
            i
            for i, image_id in enumerate(batch_ids)
            if image_id not in seen and (wanted is None or image_id in wanted)
        ]
        if not keep:
            continue
        vectors = table[column].combine_chunks()
        matrix = vectors.flatten().to_numpy().reshape(len(table), -1)
        ids += [batch_ids[i] for i in keep]
        seen.update(batch_ids[i] for i in keep)
        chunks.append(matrix[keep])
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return Vectors(version, ids, matrix.astype(np.float32, copy=False))
