"""The similar-image index: append-only faiss shards, saved atomically.

Embeddings are searched by faiss's ``PCA<d>,L2norm,HNSW<M>,Refine(SQfp16)``: vectors scaled
to unit length (inner product is cosine similarity), projected to ``similarity.dimensions``
(PCA fitted on up to :data:`PCA_SAMPLE` of the vectors the index was built from) and back to
unit length; the HNSW graph proposes ``similarity.rerank`` candidates, which the refine stage
orders by exact inner product on the full vectors (kept as float16). Without the re-rank
recall@10 on real Fashion-MNIST embeddings is 0.78, with it 0.994; without ``L2norm`` after
the PCA it is 0.86 (benchmarks/README.md). The pixel spectra leakage searches by are a
second index of the same kind with the factory ``HNSW<M>`` (no projection).

**A night's cost follows the night.** An index is a trained, empty *template* and a list of
immutable *shards*; a night's vectors become a new shard made from the template, and shards
of one size tier are merged once :data:`MERGE_FACTOR` of them exist (each vector is merged
about log(N) times, never past :data:`MERGE_LIMIT`), so saving writes the night's shard and
a small manifest; the update opens only the shards it merges, and a reader memory-maps all.
The manifest also names the lake partitions (embedding batches) the index holds, so an update
reads only the partitions it lacks. Search asks every shard and keeps the best.

Persisted under ``<data_home>/index/<embedder version>/`` (spectra in ``spectra/`` below it):
a new embedder version gets a new index, never a mixed one. The embedding index is rebuilt
(its PCA refitted) while it holds :data:`REFIT_GROWTH` times the vectors its PCA was fitted
on and that was fewer than :data:`PCA_SAMPLE`. Every save writes new shard files and a new
version folder with the manifest, then replaces the ``CURRENT`` pointer file atomically
(:func:`publish`): a reader always loads one whole version, and a crash mid-save leaves the
previous one current. Files are never rewritten, only unlinked once no kept version names
them (a reader that mapped them keeps them).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from visionloop.embeddings.vectors import EMBEDDINGS, Vectors, embedding_batches, read_vectors
from visionloop.lake.snapshot import superseded
from visionloop.locks import exclusive
from visionloop.settings import SimilaritySettings

PCA_SAMPLE = 20_000  # vectors the projection is fitted on, at most
REFIT_GROWTH = 4  # refit a projection fitted on fewer than PCA_SAMPLE once this many times grown
MERGE_FACTOR = 8  # this many shards of one size tier are merged into one
MERGE_LIMIT = 65_536  # shards this large are never merged again
TEMPLATE_FILE, MANIFEST_FILE, SHARDS = "template.faiss", "manifest.json", "shards"
SPECTRA = "spectra"  # the spectrum index's folder, below the embedding index's


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    matrix = np.asarray(matrix, dtype=np.float32)
    out = matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(out, dtype=np.float32)


def factory_string(settings: SimilaritySettings, dimensions: int, vectors: int) -> str:
    """The faiss factory string of an index over ``vectors`` ``dimensions``-D vectors (a PCA
    fitted on n vectors has at most n components: a small first batch projects to fewer)."""
    projected = max(1, min(settings.dimensions, dimensions, vectors))
    return f"PCA{projected},L2norm,HNSW{settings.connectivity},Refine(SQfp16)"


def spectrum_factory(settings: SimilaritySettings) -> str:
    """The faiss factory string of the pixel-spectrum index: a plain HNSW graph."""
    return f"HNSW{settings.connectivity}"


@dataclass(frozen=True)
class Neighbour:
    image_id: str
    similarity: float  # cosine of the full vectors


@dataclass
class Shard:
    """An immutable part of an index: a faiss index over unit vectors and their image ids.

    A saved shard's faiss index may be opened on first use (from ``path``): growing an index
    by a night opens only the shards it merges, not the lake's."""

    name: str
    ids: list[str]
    saved: bool = False
    built: object | None = None  # the faiss index, once made or opened
    path: str = ""  # the saved faiss file, opened with ``flags``
    flags: int = 0

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def index(self) -> object:
        return self.built if self.built is not None else self.open()

    def open(self) -> object:
        """Open the saved faiss index (checked against the ids)."""
        import faiss

        self.built = faiss.read_index(self.path, self.flags)
        if self.built.ntotal != len(self.ids):
            message = f"{self.built.ntotal} vectors, {len(self.ids)} ids"
            raise ValueError(f"{self.path}: shard {self.name} has {message}")
        return self.built


class VectorIndex:
    """Image ids and the faiss shards over their vectors, of one embedder version."""

    def __init__(
        self,
        version: str,
        template: bytes,
        shards: list[Shard],
        fitted_on: int,
        settings: SimilaritySettings,
        batches: Collection[str] = (),
    ) -> None:
        self.version, self.template, self.shards = version, template, shards
        self.fitted_on, self.settings = fitted_on, settings
        self.batches = set(batches)  # the lake partitions whose vectors it holds
        self._where: dict[str, tuple[int, int]] | None = None

    def __len__(self) -> int:
        return sum(len(shard) for shard in self.shards)

    def __contains__(self, image_id: str) -> bool:
        return image_id in self._positions()

    @property
    def ids(self) -> list[str]:
        return [image_id for shard in self.shards for image_id in shard.ids]

    def _positions(self) -> dict[str, tuple[int, int]]:
        if self._where is None:
            self._where = {
                image_id: (s, i)
                for s, shard in enumerate(self.shards)
                for i, image_id in enumerate(shard.ids)
            }
        return self._where

    # ------------------------------------------------------------------ building, growing

    @classmethod
    def build(
        cls,
        vectors: Vectors,
        settings: SimilaritySettings,
        seed: int = 0,
        factory: str | None = None,
        batches: Collection[str] = (),
    ) -> VectorIndex:
        """A new index over ``vectors`` (its projection fitted on them, unless ``factory``
        names one without training)."""
        import faiss

        matrix = unit_rows(vectors.matrix)
        sample = matrix
        if len(matrix) > PCA_SAMPLE:
            sample = matrix[np.random.default_rng(seed).choice(len(matrix), PCA_SAMPLE, False)]
        spec = factory or factory_string(settings, matrix.shape[1], len(sample))
        empty = faiss.index_factory(matrix.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
        if not empty.is_trained:
            empty.train(sample)
        built = cls(vectors.version, faiss.serialize_index(empty).tobytes(), [], 0, settings)
        built.fitted_on = len(vectors)
        built.add(vectors, batches)
        return built

    def add(self, vectors: Vectors, batches: Collection[str] = ()) -> int:
        """Add the images not yet in the index as a new shard (then merge full size tiers);
        how many were added. ``batches`` are the lake partitions ``vectors`` came from."""
        if vectors.version != self.version:
            raise ValueError(f"vectors of {vectors.version} cannot join an index of {self.version}")
        held, seen = self._positions(), set()
        new = []
        for i, image_id in enumerate(vectors.ids):
            if image_id not in held and image_id not in seen:
                seen.add(image_id)
                new.append(i)
        self.batches.update(batches)
        if new:
            ids = [vectors.ids[i] for i in new]
            self.shards.append(self._shard(ids, unit_rows(vectors.matrix[new])))
            self._merge_full_tiers()
            self._where = None
        return len(new)

    def _shard(self, ids: list[str], matrix: np.ndarray) -> Shard:
        import faiss

        index = faiss.deserialize_index(np.frombuffer(self.template, dtype=np.uint8))
        graph = _graph(index)
        graph.hnsw.efConstruction = self.settings.ef_construction
        index.add(matrix)
        return Shard(f"{time.time_ns():020d}-{os.getpid()}-{len(ids)}", ids, built=index)

    def _merge_full_tiers(self) -> None:
        while True:
            tiers: dict[int, list[int]] = {}
            for position, shard in enumerate(self.shards):
                if len(shard) < MERGE_LIMIT:
                    tiers.setdefault(_tier(len(shard)), []).append(position)
            full = next((group for group in tiers.values() if len(group) >= MERGE_FACTOR), None)
            if full is None:
                return
            parts = [self.shards[p] for p in full]
            ids = [image_id for part in parts for image_id in part.ids]
            matrix = np.concatenate([_all_vectors(part.index) for part in parts])
            merged = self._shard(ids, unit_rows(matrix))
            self.shards = [s for p, s in enumerate(self.shards) if p not in set(full)] + [merged]

    @property
    def stale(self) -> bool:
        """Whether the projection was fitted on too small a share of the index."""
        small = self.fitted_on < PCA_SAMPLE and _trains(self.template)
        return small and len(self) >= REFIT_GROWTH * max(self.fitted_on, 1)

    # ------------------------------------------------------------------ reading

    def search(
        self, matrix: np.ndarray, k: int, rerank: int | None = None
    ) -> list[list[Neighbour]]:
        """The ``k`` nearest images of each row of ``matrix`` (full vectors), each shard's
        graph's ``rerank`` best (``similarity.rerank`` by default) re-ranked on full vectors."""
        total = len(self)
        if not total or not len(matrix):
            return [[] for _ in range(len(matrix))]
        k, query = min(k, total), unit_rows(matrix)
        rows: list[list[Neighbour]] = [[] for _ in range(len(matrix))]
        for shard in self.shards:
            kk = min(k, len(shard))
            params = self._params(shard, kk, rerank)
            scores, positions = shard.index.search(query, kk, params=params)
            for row, row_s, row_p in zip(rows, scores, positions, strict=True):
                row += [
                    Neighbour(shard.ids[p], float(s))
                    for s, p in zip(row_s, row_p, strict=True)
                    if p >= 0
                ]
        return [sorted(row, key=lambda n: -n.similarity)[:k] for row in rows]

    def _params(self, shard: Shard, k: int, rerank: int | None) -> object:
        import faiss

        candidates = max(k, self.settings.rerank if rerank is None else rerank)
        if not hasattr(shard.index, "k_factor"):  # a plain graph (the spectra): no re-rank
            return faiss.SearchParametersHNSW(efSearch=max(self.settings.ef_search, 2 * k))
        graph = faiss.SearchParametersHNSW(efSearch=max(self.settings.ef_search, candidates))
        return faiss.IndexRefineSearchParameters(
            k_factor=candidates / k,
            base_index_params=faiss.SearchParametersPreTransform(index_params=graph),
        )

    def vectors_of(self, image_ids: Sequence[str]) -> Vectors:
        """The stored unit vectors of those of ``image_ids`` the index holds (float16-exact
        for embeddings), in the order asked."""
        where = self._positions()
        held = [image_id for image_id in image_ids if image_id in where]
        rows = [self.shards[s].index.reconstruct(i) for s, i in (where[h] for h in held)]
        dimensions = _dimensions(self.template)
        matrix = np.stack(rows) if rows else np.zeros((0, dimensions), np.float32)
        return Vectors(self.version, held, matrix.astype(np.float32, copy=False))

    # ------------------------------------------------------------------ persistence

    def save(self, directory: Path) -> Path:
        """Write the unsaved shards and publish this index as the current version under
        ``directory``; the version's folder."""
        directory.mkdir(parents=True, exist_ok=True)
        with exclusive(directory / ".writer.lock", "saving the index", timeout_s=LOCK_TIMEOUT_S):
            shards = directory / SHARDS
            shards.mkdir(exist_ok=True)
            template = shards / TEMPLATE_FILE
            if not template.exists():
                _write_atomically(template, lambda path: path.write_bytes(self.template))
            for shard in self.shards:
                if not shard.saved:
                    _save_shard(shards, shard)
            folder = publish(directory, self._write_manifest, locked=True)
            _remove_unnamed_shards(directory)
        return folder

    def _write_manifest(self, folder: Path) -> None:
        manifest = {
            "version": self.version,
            "fitted_on": self.fitted_on,
            "shards": [shard.name for shard in self.shards],
            "batches": sorted(self.batches),
        }
        (folder / MANIFEST_FILE).write_text(json.dumps(manifest))

    @classmethod
    def load(
        cls,
        directory: Path,
        settings: SimilaritySettings,
        mmap: bool = True,
        lazily: bool = False,
    ) -> VectorIndex:
        """The current version under ``directory``; its shards memory-mapped read-only unless
        ``mmap`` is off (shards are never written again either way). ``lazily``: each shard
        is opened on first use (for the writer, which uses few of them); else all at once,
        so a reader keeps them however long it searches."""
        for attempt in range(3):  # a version may be pruned between the pointer and the open
            folder = saved_version(directory)
            if folder is None or not (folder / MANIFEST_FILE).exists():
                raise FileNotFoundError(f"no saved index under {directory}")
            try:
                return cls._read(directory, folder, settings, mmap, lazily)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _read(
        cls, directory: Path, folder: Path, settings: SimilaritySettings, mmap: bool, lazily: bool
    ) -> VectorIndex:
        import faiss

        manifest = json.loads((folder / MANIFEST_FILE).read_text())
        flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
        shards = []
        for name in manifest["shards"]:
            ids = json.loads((directory / SHARDS / f"{name}.ids.json").read_text())
            path = str(directory / SHARDS / f"{name}.faiss")
            shard = Shard(name, ids, saved=True, path=path, flags=flags)
            if not lazily:
                shard.open()
            shards.append(shard)
        template = (directory / SHARDS / TEMPLATE_FILE).read_bytes()
        return cls(
            manifest["version"],
            template,
            shards,
            manifest["fitted_on"],
            settings,
            manifest["batches"],
        )


def _tier(size: int) -> int:
    """The size tier of a shard: shards within a factor of :data:`MERGE_FACTOR` share one."""
    return int(np.log(max(size, 1)) / np.log(MERGE_FACTOR))


def _graph(index: object) -> object:
    """The HNSW index of a shard (inside ``Refine(PreTransform(HNSW))``, or itself)."""
    import faiss

    index = faiss.downcast_index(index)
    if hasattr(index, "base_index"):
        index = faiss.downcast_index(faiss.downcast_index(index.base_index).index)
    return index


def _all_vectors(index: object) -> np.ndarray:
    return index.reconstruct_n(0, index.ntotal)


def _trains(template: bytes) -> bool:
    """Whether the template's index was fitted (a projection), not a plain graph."""
    import faiss

    return hasattr(faiss.deserialize_index(np.frombuffer(template, np.uint8)), "k_factor")


def _dimensions(template: bytes) -> int:
    import faiss

    return faiss.deserialize_index(np.frombuffer(template, np.uint8)).d


def _save_shard(shards: Path, shard: Shard) -> None:
    import faiss

    name = shard.name
    _write_atomically(shards / f"{name}.faiss", lambda p: faiss.write_index(shard.index, str(p)))
    _write_atomically(shards / f"{name}.ids.json", lambda p: p.write_text(json.dumps(shard.ids)))
    shard.saved = True


def _write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    write(temporary)
    with open(temporary, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def _remove_unnamed_shards(directory: Path) -> None:
    """Unlink shard files no kept version names (written by a crashed save, or merged)."""
    named = {TEMPLATE_FILE}
    for folder in directory.glob(f"{VERSION_PREFIX}*"):
        manifest = folder / MANIFEST_FILE
        if manifest.exists():
            for name in json.loads(manifest.read_text())["shards"]:
                named.update({f"{name}.faiss", f"{name}.ids.json"})
    for path in (directory / SHARDS).iterdir():
        if path.name not in named and not path.name.startswith("."):
            path.unlink(missing_ok=True)


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


def publish(directory: Path, write: Callable[[Path], None], locked: bool = False) -> Path:
    """Write a new version with ``write(folder)`` into a folder of its own, then make it current.

    The folder is flushed to disk and renamed, then the pointer file is replaced
    (``os.replace``): a crash at any point leaves the previous version current and whole.
    Saved versions are never written again; versions older than :data:`KEEP_VERSIONS` are
    removed (a reader that has them open or mapped keeps them until it closes them).
    ``locked``: the caller holds the writer lock already.
    """
    directory.mkdir(parents=True, exist_ok=True)
    if not locked:
        with exclusive(directory / ".writer.lock", "saving the index", timeout_s=LOCK_TIMEOUT_S):
            return publish(directory, write, locked=True)
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


# ------------------------------------------------------------------ the lake's two indexes


@dataclass(frozen=True)
class LakeIndexes:
    """The two indexes of an embedder version: embeddings and pixel spectra."""

    vectors: VectorIndex
    spectra: VectorIndex

    @classmethod
    def load(cls, root: Path, version: str, settings: SimilaritySettings) -> LakeIndexes:
        directory = index_dir(root, version)
        return cls(
            VectorIndex.load(directory, settings), VectorIndex.load(directory / SPECTRA, settings)
        )


def updated_indexes(
    root: Path, lake_dir: Path, version: str, settings: SimilaritySettings
) -> tuple[LakeIndexes, int]:
    """The persisted indexes of ``version`` holding every vector of it; how many joined.

    Each reads only the embedding partitions it does not hold yet (a new shard); it is
    built from all of them when missing, from before shards, or (the embeddings') stale.
    """
    directory = index_dir(root, version)
    partitions = embedding_batches(lake_dir, version)
    vectors, added = _updated(directory, lake_dir, version, settings, partitions, "vector")
    spectra, _ = _updated(
        directory / SPECTRA, lake_dir, version, settings, partitions, "fingerprint"
    )
    return LakeIndexes(vectors, spectra), added


def _updated(
    directory: Path,
    lake_dir: Path,
    version: str,
    settings: SimilaritySettings,
    partitions: list[str],
    column: str,
) -> tuple[VectorIndex, int]:
    factory = spectrum_factory(settings) if column == "fingerprint" else None
    try:
        index = VectorIndex.load(directory, settings, lazily=True)
    except FileNotFoundError:  # none yet, or saved before shards
        index = None
    if index is not None and not index.stale:
        held = held_batches(index, lake_dir)
        new = [batch for batch in partitions if batch not in held]
        vectors = read_vectors(lake_dir, version, column=column, batch_ids=new)
        added = index.add(vectors, new) if len(vectors) else 0
        index.batches.update(new)
    else:
        vectors = read_vectors(lake_dir, version, column=column, batch_ids=partitions)
        index = VectorIndex.build(vectors, settings, factory=factory, batches=partitions)
        added = len(vectors)
    index.save(directory)
    return index, added


def held_batches(index: VectorIndex, lake_dir: Path) -> set[str]:
    """The embedding partitions whose rows the index holds: those it read, and those that
    compaction made of partitions it read only."""
    held = set(index.batches)
    for entry in superseded(lake_dir / EMBEDDINGS):
        if entry["new"] is not None and set(entry["old"]) <= held:
            held.add(entry["new"])
    return held
