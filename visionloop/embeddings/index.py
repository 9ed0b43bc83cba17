"""The similar-image index: HNSW (faiss) over a PCA projection, re-ranked on the full vectors.

Vectors are centred, projected to ``similarity.dimensions`` (PCA fitted on the vectors the
index was built from) and scaled to unit length, so inner product is cosine similarity. The
graph proposes ``similarity.rerank`` candidates; their exact cosine on the full, unit-length
vectors (kept beside the graph as float16) orders them, because the projection alone
reorders close neighbours (recall@10 0.78 on Fashion-MNIST without re-ranking, 0.998 with).
The index is built once, then grows incrementally (only images it does not hold are added),
and is persisted under ``<data_home>/index/<embedder version>/``: a new embedder version gets
a new index, never a mixed one. It is rebuilt (and the PCA refitted) once it holds four
times the vectors its PCA was fitted on. Chosen by measurement (benchmarks/README.md).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionloop.embeddings.vectors import Vectors, read_vectors
from visionloop.settings import SimilaritySettings

PCA_SAMPLE = 20_000  # vectors the projection is fitted on, at most
REFIT_GROWTH = 4  # rebuild once the index holds this many times its fitting set
FULL_VECTORS = "vectors.f16"  # an index saved without it (before re-ranking) is rebuilt


@dataclass(frozen=True)
class Projection:
    """Centre, project to the top principal components, scale to unit length."""

    mean: np.ndarray  # (D_in,)
    components: np.ndarray  # (D_out, D_in)

    @classmethod
    def fit(cls, matrix: np.ndarray, dimensions: int, seed: int = 0) -> Projection:
        sample = matrix
        if len(matrix) > PCA_SAMPLE:
            rows = np.random.default_rng(seed).choice(len(matrix), PCA_SAMPLE, replace=False)
            sample = matrix[rows]
        mean = sample.mean(axis=0)
        _, _, vt = np.linalg.svd(sample - mean, full_matrices=False)
        return cls(mean.astype(np.float32), vt[: min(dimensions, len(vt))].astype(np.float32))

    def __call__(self, matrix: np.ndarray) -> np.ndarray:
        projected = (np.asarray(matrix, dtype=np.float32) - self.mean) @ self.components.T
        norms = np.linalg.norm(projected, axis=1, keepdims=True)
        return np.ascontiguousarray(projected / np.maximum(norms, 1e-12), dtype=np.float32)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


class FullVectors:
    """Unit-length full vectors in index order (float16), for exact re-ranking.

    Loaded memory-mapped; new rows stay in memory until :meth:`save` appends them to the
    file (truncated first to the rows the index knows, so a save cut short heals).
    """

    def __init__(self, dimensions: int, blocks: list[np.ndarray], source: Path | None = None):
        self.dimensions, self.blocks, self.source = dimensions, blocks, source
        self.saved = len(blocks[0]) if source is not None and blocks else 0

    def __len__(self) -> int:
        return sum(len(block) for block in self.blocks)

    def append(self, matrix: np.ndarray) -> None:
        self.blocks.append(unit_rows(matrix).astype(np.float16))

    def rows(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(positions), self.dimensions), dtype=np.float32)
        start = 0
        for block in self.blocks:
            inside = (positions >= start) & (positions < start + len(block))
            out[inside] = block[positions[inside] - start]
            start += len(block)
        return out

    def save(self, path: Path) -> None:
        row_bytes = self.dimensions * 2
        appending = self.source is not None and path.resolve() == self.source.resolve()
        first = 1 if appending and self.saved else 0  # the mapped block is on disk already
        with open(path, "r+b" if appending else "wb") as handle:
            handle.truncate(self.saved * row_bytes if appending else 0)
            handle.seek(0, 2)
            for block in self.blocks[first:]:
                handle.write(np.ascontiguousarray(block).tobytes())

    @classmethod
    def load(cls, path: Path, dimensions: int, rows: int) -> FullVectors:
        if rows == 0:
            return cls(dimensions, [], path)
        mapped = np.memmap(path, dtype=np.float16, mode="r", shape=(rows, dimensions))
        return cls(dimensions, [mapped], path)


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    similarity: float  # cosine of the full vectors


class VectorIndex:
    """Image ids and an HNSW graph over their projected vectors."""

    def __init__(
        self,
        version: str,
        projection: Projection,
        index: object,
        ids: list[str],
        full: FullVectors,
        fitted_on: int,
        settings: SimilaritySettings,
    ) -> None:
        self.version, self.projection, self.index = version, projection, index
        self.ids, self.full, self.fitted_on, self.settings = ids, full, fitted_on, settings
        self._positions = {image_id: i for i, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._positions

    @classmethod
    def build(cls, vectors: Vectors, settings: SimilaritySettings) -> VectorIndex:
        import faiss

        projection = Projection.fit(vectors.matrix, settings.dimensions)
        dimensions = projection.components.shape[0]
        graph = faiss.IndexHNSWFlat(dimensions, settings.connectivity, faiss.METRIC_INNER_PRODUCT)
        graph.hnsw.efConstruction = settings.ef_construction
        full = FullVectors(vectors.matrix.shape[1], [])
        index = cls(vectors.version, projection, graph, [], full, len(vectors), settings)
        index.add(vectors)
        return index

    def add(self, vectors: Vectors) -> int:
        """Add the images not yet in the index; how many were added."""
        if vectors.version != self.version:
            raise ValueError(f"vectors of {vectors.version} cannot join an index of {self.version}")
        new = [i for i, image_id in enumerate(vectors.ids) if image_id not in self._positions]
        if new:
            self.index.add(self.projection(vectors.matrix[new]))
            self.full.append(vectors.matrix[new])
            for i in new:
                self._positions[vectors.ids[i]] = len(self.ids)
                self.ids.append(vectors.ids[i])
        return len(new)

    def search(self, matrix: np.ndarray, k: int) -> list[list[Neighbour]]:
        """The ``k`` nearest images of each row of ``matrix`` (full embedder vectors)."""
        if not len(self.ids) or not len(matrix):
            return [[] for _ in range(len(matrix))]
        candidates = min(max(k, self.settings.rerank), len(self.ids))
        self.index.hnsw.efSearch = max(self.settings.ef_search, candidates)
        _, positions = self.index.search(self.projection(matrix), candidates)
        return [
            self._reranked(query, row[row >= 0], k)
            for query, row in zip(unit_rows(matrix), positions, strict=True)
        ]

    def _reranked(self, query: np.ndarray, positions: np.ndarray, k: int) -> list[Neighbour]:
        scores = self.full.rows(positions) @ query
        order = np.argsort(-scores, kind="stable")[:k]
        return [Neighbour(self.ids[positions[i]], float(scores[i])) for i in order]

    @property
    def stale(self) -> bool:
        """Whether the projection was fitted on too small a share of the index."""
        return len(self.ids) >= REFIT_GROWTH * max(self.fitted_on, 1)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        import faiss

        directory.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.index, str(directory / "hnsw.faiss"))
        np.savez(
            directory / "projection.npz",
            mean=self.projection.mean,
            components=self.projection.components,
        )
        self.full.save(directory / FULL_VECTORS)
        meta = {
            "version": self.version,
            "ids": self.ids,
            "fitted_on": self.fitted_on,
            "dimensions": self.full.dimensions,
        }
        (directory / "ids.json").write_text(json.dumps(meta))
        return directory

    @classmethod
    def load(cls, directory: Path, settings: SimilaritySettings) -> VectorIndex:
        import faiss

        meta = json.loads((directory / "ids.json").read_text())
        arrays = np.load(directory / "projection.npz")
        index = faiss.read_index(str(directory / "hnsw.faiss"))
        projection = Projection(arrays["mean"], arrays["components"])
        full = FullVectors.load(directory / FULL_VECTORS, meta["dimensions"], len(meta["ids"]))
        return cls(
            meta["version"], projection, index, meta["ids"], full, meta["fitted_on"], settings
        )


def index_dir(root: Path, version: str) -> Path:
    return root / version


def updated_index(
    root: Path, lake_dir: Path, version: str, settings: SimilaritySettings
) -> tuple[VectorIndex, int]:
    """The persisted index of ``version`` holding every vector of it; how many were added.

    Built when missing or stale (reading all vectors), else loaded and grown by the vectors
    it lacks (reading only those); saved either way.
    """
    directory = index_dir(root, version)
    if (directory / FULL_VECTORS).exists():
        index = VectorIndex.load(directory, settings)
        added = index.add(read_vectors(lake_dir, version, exclude=set(index.ids)))
        if not index.stale:
            index.save(directory)
            return index, added
    vectors = read_vectors(lake_dir, version)
    index = VectorIndex.build(vectors, settings)
    index.save(directory)
    return index, len(vectors)
