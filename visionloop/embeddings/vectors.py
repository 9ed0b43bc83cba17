"""Reading the embeddings table: the vectors of one embedder version, never mixed with another."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

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


def embedding_batches(lake_dir: Path, version: str) -> list[str]:
    """The committed partitions (batch ids) of the embeddings table that may hold ``version``."""
    return sorted({_batch_of(path) for path in version_files(lake_dir, EMBEDDINGS, version)})


def read_vectors(
    lake_dir: Path,
    version: str,
    image_ids: Collection[str] | None = None,
    exclude: Collection[str] = (),
    column: str = "vector",
    batch_ids: Collection[str] | None = None,
) -> Vectors:
    """Vectors of ``version`` (only of ``image_ids`` when given, none of ``exclude``; only
    from the partitions ``batch_ids`` when given), read one row group at a time:
    ``column="fingerprint"`` reads the pixel spectra instead. With ``image_ids`` the id
    column is scanned first and vectors are read only from row groups that hold one."""
    wanted = set(image_ids) if image_ids is not None else None
    files = version_files(lake_dir, EMBEDDINGS, version)
    if batch_ids is not None:
        files = [path for path in files if _batch_of(path) in set(batch_ids)]
    ids: list[str] = []
    chunks: list[np.ndarray] = []
    seen: set[str] = set(exclude)
    keys = ["image_id", "embedder_version"]
    for part in row_groups(files, keys if wanted is not None else [*keys, column]):
        table = part.table
        row_ids = table["image_id"].to_pylist()
        keep = [
            i
            for i, (image_id, of) in enumerate(
                zip(row_ids, table["embedder_version"].to_pylist(), strict=True)
            )
            if of == version and image_id not in seen and (wanted is None or image_id in wanted)
        ]
        if not keep:
            continue
        if wanted is not None:
            table = pq.ParquetFile(files[part.file]).read_row_group(part.group, columns=[column])
        vectors = table[column].combine_chunks()
        matrix = vectors.flatten().to_numpy().reshape(len(table), -1)
        ids += [row_ids[i] for i in keep]
        seen.update(row_ids[i] for i in keep)
        chunks.append(matrix[keep])
    matrix = np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
    return Vectors(version, ids, matrix.astype(np.float32, copy=False))


def _batch_of(path: Path) -> str:
    return path.parent.name.partition("=")[2]
