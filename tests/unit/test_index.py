"""The similar-image index: recall against exact search, incremental adds, persistence."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from visionloop.embeddings.index import VectorIndex, unit_rows
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
    graph_only = VectorIndex(*_parts(index), SETTINGS.model_copy(update={"rerank": 10}))
    assert _recall(graph_only.search(queries, 10), exact, lake.ids) < 0.97


def _parts(index: VectorIndex) -> tuple:
    return index.version, index.projection, index.index, index.ids, index.full, index.fitted_on


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
    assert len(again) == 605 and (tmp_path / "v1" / "vectors.f16").stat().st_size == 605 * 96 * 2
    assert again.search(matrix[:5], 3) == loaded.search(matrix[:5], 3)


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
