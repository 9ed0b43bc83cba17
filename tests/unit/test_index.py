"""The similar-image index: recall against exact search, incremental adds, atomic persistence."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from visionloop.embeddings.index import (
    INDEX_FILE,
    KEEP_VERSIONS,
    STAGING_PREFIX,
    VERSION_PREFIX,
    VectorIndex,
    publish,
    saved_version,
    unit_rows,
)
from visionloop.embeddings.vectors import Vectors
from visionloop.settings import SimilaritySettings

SETTINGS = SimilaritySettings(dimensions=32)


def _clustered(count: int, seed: int, dimensions: int = 96) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = np.abs(rng.normal(size=(40, dimensions)))
    rows = centres[rng.integers(0, 40, count)] + 0.3 * np.abs(rng.normal(size=(count, dimensions)))
    return rows.astype(np.float32)


def _vectors(matrix: np.ndarray, start: int = 0, version: str = "v1") -> Vectors:
    return Vectors(version, [f"img-{start + i}" for i in range(len(matrix))], matrix)


def _embedding_like(count: int, seed: int, latent: int = 64, dimensions: int = 96) -> np.ndarray:
    """Clusters in a 64-dimension latent space, lifted to 96: more than the index's 32 keep."""
    shared = np.random.default_rng(100)
    lift, centres = shared.normal(size=(latent, dimensions)), shared.normal(size=(200, latent))
    rng = np.random.default_rng(seed)
    latent_rows = centres[rng.integers(0, 200, count)] + 0.5 * rng.normal(size=(count, latent))
    return (latent_rows @ lift + 0.3 * rng.normal(size=(count, dimensions))).astype(np.float32)


def _recall(found: list, exact: np.ndarray, ids: list[str]) -> float:
    return float(
        np.mean(
            [
                len({n.image_id for n in row} & {ids[i] for i in truth}) / 10
                for row, truth in zip(found, exact, strict=True)
            ]
        )
    )


def test_top10_recall_against_exact_search_on_the_full_vectors() -> None:
    """The 32-dimension projection alone loses close neighbours; re-ranking restores them."""
    lake = _vectors(_embedding_like(3000, 0))
    queries = _embedding_like(200, 1)
    exact = np.argsort(-(unit_rows(queries) @ unit_rows(lake.matrix).T), axis=1)[:, :10]
    index = VectorIndex.build(lake, SETTINGS)
    found = index.search(queries, 10)
    assert _recall(found, exact, lake.ids) >= 0.99
    assert all(row[0].similarity >= row[-1].similarity for row in found)
    assert _recall(index.search(queries, 10, rerank=10), exact, lake.ids) < 0.97  # graph alone


def test_adds_only_new_images_and_survives_a_round_trip(tmp_path: Path) -> None:
    matrix = _clustered(600, 2)
    index = VectorIndex.build(_vectors(matrix[:500]), SETTINGS)
    assert index.add(_vectors(matrix[400:], start=400)) == 100  # 400..499 are in already
    assert len(index) == 600 and "img-599" in index
    index.save(tmp_path / "v1")
    loaded = VectorIndex.load(tmp_path / "v1", SETTINGS)
    assert loaded.ids == index.ids and loaded.version == "v1"
    nearest = loaded.search(matrix[599:600], 1)[0][0]
    assert nearest.image_id == "img-599" and nearest.similarity == pytest.approx(1.0, abs=1e-3)
    assert loaded.add(_vectors(_clustered(5, 8), start=600)) == 5  # grows the saved file
    loaded.save(tmp_path / "v1")
    again = VectorIndex.load(tmp_path / "v1", SETTINGS)
    assert len(again) == 605 and again.index.ntotal == 605
    assert again.search(matrix[:5], 3) == loaded.search(matrix[:5], 3)
    mapped = VectorIndex.load(tmp_path / "v1", SETTINGS, mmap=True)
    assert mapped.search(matrix[:5], 3) == loaded.search(matrix[:5], 3)


def test_a_crash_mid_save_leaves_the_previous_index_current_and_whole(tmp_path: Path) -> None:
    import faiss

    matrix = _clustered(300, 9)
    index = VectorIndex.build(_vectors(matrix[:200]), SETTINGS)
    index.save(tmp_path / "v1")
    index.add(_vectors(matrix[200:], start=200))

    def crash_between_files(folder: Path) -> None:
        faiss.write_index(index.index, str(folder / INDEX_FILE))  # the graph, not its ids
        raise OSError("killed mid-save")

    with pytest.raises(OSError, match="killed mid-save"):
        publish(tmp_path / "v1", crash_between_files)
    loaded = VectorIndex.load(tmp_path / "v1", SETTINGS)
    assert len(loaded) == loaded.index.ntotal == 200 and "img-250" not in loaded
    assert loaded.search(matrix[199:200], 1)[0][0].image_id == "img-199"
    index.save(tmp_path / "v1")  # the next save clears the half-written folder
    assert not list((tmp_path / "v1").glob(f"{STAGING_PREFIX}*"))
    assert len(VectorIndex.load(tmp_path / "v1", SETTINGS)) == 300


def test_saves_never_touch_a_version_a_reader_has_loaded(tmp_path: Path) -> None:
    matrix = _clustered(400, 10)
    index = VectorIndex.build(_vectors(matrix[:100]), SETTINGS)
    index.save(tmp_path / "v1")
    reader = VectorIndex.load(tmp_path / "v1", SETTINGS, mmap=True)
    first = saved_version(tmp_path / "v1")
    held = open(first / INDEX_FILE, "rb")  # noqa: SIM115 - held open across the saves
    size = os.fstat(held.fileno()).st_size
    for start in (100, 200, 300):
        index.add(_vectors(matrix[start : start + 100], start=start))
        index.save(tmp_path / "v1")
    assert reader.search(matrix[:3], 2)[0][0].image_id == "img-0" and len(reader) == 100
    versions = sorted((tmp_path / "v1").glob(f"{VERSION_PREFIX}*"))
    assert len(versions) == KEEP_VERSIONS and first not in versions  # pruned, not rewritten
    assert saved_version(tmp_path / "v1") == versions[-1]
    assert os.fstat(held.fileno()).st_size == size  # unlinked, never truncated
    held.close()
    assert len(VectorIndex.load(tmp_path / "v1", SETTINGS)) == 400


def test_vectors_of_another_embedder_version_never_join() -> None:
    index = VectorIndex.build(_vectors(_clustered(100, 3)), SETTINGS)
    with pytest.raises(ValueError, match="cannot join an index of v1"):
        index.add(_vectors(_clustered(10, 4), start=1000, version="v2"))


def test_an_index_grown_far_past_its_projection_is_stale() -> None:
    index = VectorIndex.build(_vectors(_clustered(100, 5)), SETTINGS)
    index.add(_vectors(_clustered(299, 6), start=100))
    assert not index.stale
    index.add(_vectors(_clustered(1, 7), start=399))
    assert index.stale


def test_a_first_batch_smaller_than_the_projection_still_builds_an_index() -> None:
    """45 vectors of 1280 dimensions: the PCA can give 45 components, not 128."""
    rng = np.random.default_rng(0)
    matrix = rng.normal(size=(45, 1280)).astype(np.float32)
    vectors = Vectors("v1", [f"id-{i}" for i in range(45)], matrix)
    index = VectorIndex.build(vectors, SimilaritySettings())
    (found,) = index.search(matrix[3:4], 1)
    assert found[0].image_id == "id-3"
