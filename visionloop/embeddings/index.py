"""The similar-image index: faiss ``PCA<d>,L2norm,HNSW<M>,Refine(SQfp16)``, saved atomically.

Vectors are scaled to unit length, so inner product is cosine similarity. faiss projects
them to ``similarity.dimensions`` (PCA fitted on up to :data:`PCA_SAMPLE` of the vectors the
index was built from) and back to unit length; the HNSW graph over the projection proposes
``similarity.rerank`` candidates, which the refine stage orders by exact inner product on
the full vectors (kept as float16). Without the re-rank recall@10 on real Fashion-MNIST
embeddings is 0.78, with it 0.994; without ``L2norm`` after the PCA (faiss's plain
``PCA128,HNSW32,Refine(Flat)``) it is 0.86 (benchmarks/README.md).

The index is built once, then grows incrementally (only images it does not hold are added),
and is persisted under ``<data_home>/index/<embedder version>/``: a new embedder version gets
a new index, never a mixed one. It is rebuilt (and the PCA refitted) once it holds four
times the vectors its PCA was fitted on. Every save writes a complete new version folder
and then replaces the ``CURRENT`` pointer file atomically (:func:`publish`), so a reader
always loads one whole version and a crash mid-save leaves the previous one current.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionloop.embeddings.vectors import Vectors, read_vectors
from visionloop.locks import exclusive
from visionloop.settings import SimilaritySettings

PCA_SAMPLE = 20_000  # vectors the projection is fitted on, at most
REFIT_GROWTH = 4  # rebuild once the index holds this many times its fitting set
INDEX_FILE, META_FILE = "index.faiss", "meta.json"


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    out = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def factory_string(settings: SimilaritySettings, dimensions: int, vectors: int) -> str:
    """The faiss factory string of an index over ``vectors`` ``dimensions``-D vectors (a PCA
    fitted on n vectors has at most n components: a small first batch projects to fewer)."""
    projected = max(1, min(settings.dimensions, dimensions, vectors))
    return f"PCA{projected},L2norm,HNSW{settings.connectivity},Refine(SQfp16)"


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    similarity: float  # cosine of the full vectors


class VectorIndex:
    """Image ids and the faiss index over their vectors (position ``i`` is ``ids[i]``)."""

    def __init__(
        self,
        version: str,
        index: object,
        ids: list[str],
        fitted_on: int,
        settings: SimilaritySettings,
    ) -> None:
        self.version, self.index, self.ids = version, index, ids
        self.fitted_on, self.settings = fitted_on, settings
        self._positions = {image_id: i for i, image_id in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._positions

    @classmethod
    def build(cls, vectors: Vectors, settings: SimilaritySettings, seed: int = 0) -> VectorIndex:
        import faiss

        matrix = unit_rows(vectors.matrix)
        index = faiss.index_factory(
            matrix.shape[1],
            factory_string(settings, matrix.shape[1], min(len(matrix), PCA_SAMPLE)),
            faiss.METRIC_INNER_PRODUCT,
        )
        _graph(index).hnsw.efConstruction = settings.ef_construction
        sample = matrix
        if len(matrix) > PCA_SAMPLE:
            sample = matrix[np.random.default_rng(seed).choice(len(matrix), PCA_SAMPLE, False)]
        index.train(sample)
        built = cls(vectors.version, index, [], len(vectors), settings)
        built.add(vectors)
        return built

    def add(self, vectors: Vectors) -> int:
        """Add the images not yet in the index; how many were added."""
        if vectors.version != self.version:
            raise ValueError(f"vectors of {vectors.version} cannot join an index of {self.version}")
        new = [i for i, image_id in enumerate(vectors.ids) if image_id not in self._positions]
        if new:
            self.index.add(unit_rows(vectors.matrix[new]))
            for i in new:
                self._positions[vectors.ids[i]] = len(self.ids)
                self.ids.append(vectors.ids[i])
        return len(new)

    def search(
        self, matrix: np.ndarray, k: int, rerank: int | None = None
    ) -> list[list[Neighbour]]:
        """The ``k`` nearest images of each row of ``matrix`` (full embedder vectors), the
        graph's ``rerank`` best (``similarity.rerank`` by default) re-ranked on full vectors."""
        if not len(self.ids) or not len(matrix):
            return [[] for _ in range(len(matrix))]
        k = min(k, len(self.ids))
        scores, positions = self.index.search(unit_rows(matrix), k, params=self._params(k, rerank))
        return [
            [Neighbour(self.ids[p], float(s)) for s, p in zip(row_s, row_p, strict=True) if p >= 0]
            for row_s, row_p in zip(scores, positions, strict=True)
        ]

    def _params(self, k: int, rerank: int | None) -> object:
        import faiss

        candidates = max(k, self.settings.rerank if rerank is None else rerank)
        graph = faiss.SearchParametersHNSW(efSearch=max(self.settings.ef_search, candidates))
        return faiss.IndexRefineSearchParameters(
            k_factor=candidates / k,
            base_index_params=faiss.SearchParametersPreTransform(index_params=graph),
        )

    @property
    def stale(self) -> bool:
        """Whether the projection was fitted on too small a share of the index."""
        return len(self.ids) >= REFIT_GROWTH * max(self.fitted_on, 1)

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        """Publish this index as the current version under ``directory``; its folder."""
        return publish(directory, self._write)

    def _write(self, folder: Path) -> None:
        import faiss

        faiss.write_index(self.index, str(folder / INDEX_FILE))
        meta = {"version": self.version, "ids": self.ids, "fitted_on": self.fitted_on}
        (folder / META_FILE).write_text(json.dumps(meta))

    @classmethod
    def load(cls, directory: Path, settings: SimilaritySettings, mmap: bool = False) -> VectorIndex:
        """The current version under ``directory`` (memory-mapped with ``mmap``, read-only)."""
        for attempt in range(3):  # a version may be pruned between the pointer and the open
            folder = saved_version(directory)
            if folder is None:
                raise FileNotFoundError(f"no saved index under {directory}")
            try:
                return cls._read(folder, settings, mmap)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _read(cls, folder: Path, settings: SimilaritySettings, mmap: bool) -> VectorIndex:
        import faiss

        meta = json.loads((folder / META_FILE).read_text())
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        index = faiss.read_index(str(folder / INDEX_FILE), flags)
        if index.ntotal != len(meta["ids"]):
            raise ValueError(f"{folder}: {index.ntotal} vectors for {len(meta['ids'])} ids")
        return cls(meta["version"], index, meta["ids"], meta["fitted_on"], settings)


def _graph(index: object) -> object:
    """The HNSW index inside ``Refine(PreTransform(HNSW))``."""
    import faiss

    return faiss.downcast_index(faiss.downcast_index(index.base_index).index)


# ------------------------------------------------------------------ atomic versions on disk

POINTER = "CURRENT"  # names the complete version readers load; replaced atomically
VERSION_PREFIX, STAGING_PREFIX = "v-", ".staging-"
KEEP_VERSIONS = 2  # the current one and the one before (a reader may have just read the pointer)
LOCK_TIMEOUT_S = 600.0


def saved_version(directory: Path) -> Path | None:
    """The folder of the complete saved version under ``directory`` (None when none is)."""
    try:
        name = (directory / POINTER).read_text().strip()
    except FileNotFoundError:
        return None
    return directory / name if name else None


def publish(directory: Path, write: Callable[[Path], None]) -> Path:
    """Write a new version with ``write(folder)`` into a folder of its own, then make it current.

    The folder is flushed to disk and renamed, then the pointer file is replaced
    (``os.replace``): a crash at any point leaves the previous version current and whole.
    Saved versions are never written again; versions older than :data:`KEEP_VERSIONS` are
    removed (a reader that has them open or mapped keeps them until it closes them).
    """
    directory.mkdir(parents=True, exist_ok=True)
    with exclusive(directory / ".writer.lock", "saving the index", timeout_s=LOCK_TIMEOUT_S):
        _remove(directory.glob(f"{STAGING_PREFIX}*"))  # cut short by a crash
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=directory))
        write(staging)
        _sync(staging)
        final = directory / f"{VERSION_PREFIX}{time.time_ns():020d}"
        staging.rename(final)
        _replace_pointer(directory, final.name)
        versions = sorted(directory.glob(f"{VERSION_PREFIX}*"))
        _remove(path for path in versions[:-KEEP_VERSIONS] if path != final)
    return final


def _sync(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as handle:
            os.fsync(handle.fileno())
    _sync_dir(folder)


def _sync_dir(folder: Path) -> None:
    descriptor = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _replace_pointer(directory: Path, name: str) -> None:
    temporary = directory / f".{POINTER}.{os.getpid()}"
    with open(temporary, "w") as handle:
        handle.write(name + "\n")
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, directory / POINTER)
    _sync_dir(directory)


def _remove(paths: Iterable[Path]) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def index_dir(root: Path, version: str) -> Path:
    return root / version


LEGACY_FILES = ("hnsw.faiss", "projection.npz", "vectors.f16", "ids.json")  # before versions


def updated_index(
    root: Path, lake_dir: Path, version: str, settings: SimilaritySettings
) -> tuple[VectorIndex, int]:
    """The persisted index of ``version`` holding every vector of it; how many were added.

    Built when missing or stale (reading all vectors), else loaded and grown by the vectors
    it lacks (reading only those); saved either way.
    """
    directory = index_dir(root, version)
    if saved_version(directory) is not None:
        index = VectorIndex.load(directory, settings)
        added = index.add(read_vectors(lake_dir, version, exclude=set(index.ids)))
        if not index.stale:
            index.save(directory)
            return index, added
    vectors = read_vectors(lake_dir, version)
    index = VectorIndex.build(vectors, settings)
    index.save(directory)
    for name in LEGACY_FILES:  # unlinked, never truncated: a reader keeps what it mapped
        (directory / name).unlink(missing_ok=True)
    return index, len(vectors)
