"""The similar-image index: recall against exact search, shards per night, atomic persistence."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visionloop.embeddings.index import (
    KEEP_VERSIONS,
    MERGE_FACTOR,
    STAGING_PREFIX,
    VERSION_PREFIX,
    LakeIndexes,
    VectorIndex,
    saved_version,
    spectrum_factory,
    unit_rows,
    updated_indexes,
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
    assert loaded.add(_vectors(_clustered(5, 8), start=600)) == 5  # a new shard
    loaded.save(tmp_path / "v1")
    again = VectorIndex.load(tmp_path / "v1", SETTINGS, mmap=False)
    assert len(again) == 605 and sum(s.index.ntotal for s in again.shards) == 605
    assert again.search(matrix[:5], 3) == loaded.search(matrix[:5], 3)
    stored = again.vectors_of(["img-3", "absent", "img-1"])
    assert stored.ids == ["img-3", "img-1"]
    np.testing.assert_allclose(stored.matrix, unit_rows(matrix[[3, 1]]), atol=2e-3)


def test_growing_a_loaded_index_opens_only_the_shards_it_merges(tmp_path: Path) -> None:
    """A night's update reads no shard of the lake's; readers open all of theirs at load."""
    matrix = _clustered(500 + MERGE_FACTOR * 10, 3)
    index = VectorIndex.build(_vectors(matrix[:500]), SETTINGS)
    for night in range(MERGE_FACTOR - 2):  # small shards, one short of a merge with the next
        start = 500 + 10 * night
        index.add(_vectors(matrix[start : start + 10], start=start))
    index.save(tmp_path / "v1")
    grown = VectorIndex.load(tmp_path / "v1", SETTINGS, lazily=True)
    start = 500 + 10 * (MERGE_FACTOR - 2)
    assert grown.add(_vectors(matrix[start : start + 10], start=start)) == 10
    assert [shard.built is None for shard in grown.shards] == [True] * (MERGE_FACTOR - 1) + [False]
    start += 10
    assert grown.add(_vectors(matrix[start : start + 10], start=start)) == 10  # merges the tier
    assert [len(shard) for shard in grown.shards] == [500, 10 * MERGE_FACTOR]
    assert grown.shards[0].built is None  # the lake's shard stays unopened
    grown.save(tmp_path / "v1")
    reader = VectorIndex.load(tmp_path / "v1", SETTINGS)
    assert all(shard.built is not None for shard in reader.shards)
    nearest = reader.search(matrix[[0, start]], 1)
    assert [row[0].image_id for row in nearest] == ["img-0", f"img-{start}"]


def _files(directory: Path) -> dict[str, float]:
    return {str(p.relative_to(directory)): p.stat().st_mtime_ns for p in directory.rglob("*.*")}


def test_a_save_writes_the_new_shard_and_a_manifest_not_the_index(tmp_path: Path) -> None:
    """A night's save costs the night: the shards already saved are never written again."""
    matrix = _clustered(1100, 11)
    index = VectorIndex.build(_vectors(matrix[:1000]), SETTINGS)
    index.save(tmp_path / "v1")
    before = _files(tmp_path / "v1")
    index.add(_vectors(matrix[1000:], start=1000))
    index.save(tmp_path / "v1")
    after = _files(tmp_path / "v1")
    unchanged = [name for name in before if name.startswith("shards/")]
    assert unchanged and all(after[name] == before[name] for name in unchanged)
    new_shards = {n for n in after if n.startswith("shards/")} - set(before)
    assert {Path(n).suffix for n in new_shards} == {".faiss", ".json"} and len(new_shards) == 2
    assert len(VectorIndex.load(tmp_path / "v1", SETTINGS).shards) == 2


def test_small_shards_of_one_tier_are_merged_and_stay_searchable() -> None:
    matrix = _clustered(100 + MERGE_FACTOR * 10, 12)
    index = VectorIndex.build(_vectors(matrix[:100]), SETTINGS)
    for night in range(MERGE_FACTOR):
        start = 100 + 10 * night
        index.add(_vectors(matrix[start : start + 10], start=start))
    assert len(index.shards) == 2 and len(index) == len(matrix)  # the nights merged into one
    found = index.search(matrix[-3:], 1)
    assert [row[0].image_id for row in found] == [f"img-{len(matrix) - i}" for i in (3, 2, 1)]


def test_a_crash_mid_save_leaves_the_previous_index_current_and_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    matrix = _clustered(300, 9)
    index = VectorIndex.build(_vectors(matrix[:200]), SETTINGS)
    index.save(tmp_path / "v1")
    index.add(_vectors(matrix[200:], start=200))

    def killed(folder: Path) -> None:  # the new shard is on disk, its manifest is not
        raise OSError("killed mid-save")

    monkeypatch.setattr(index, "_write_manifest", killed)
    with pytest.raises(OSError, match="killed mid-save"):
        index.save(tmp_path / "v1")
    loaded = VectorIndex.load(tmp_path / "v1", SETTINGS)
    assert len(loaded) == 200 and "img-250" not in loaded
    assert loaded.search(matrix[199:200], 1)[0][0].image_id == "img-199"
    loaded.add(_vectors(matrix[200:210], start=200))
    loaded.save(tmp_path / "v1")  # another writer: the crashed save's shard is unnamed, removed
    shard_files = {p.name for p in (tmp_path / "v1" / "shards").iterdir()}
    assert not list((tmp_path / "v1").glob(f"{STAGING_PREFIX}*"))
    assert len(shard_files) == 1 + 2 * len(loaded.shards)  # the template, then each shard's two
    assert len(VectorIndex.load(tmp_path / "v1", SETTINGS)) == 210


def test_saves_never_touch_a_version_a_reader_has_loaded(tmp_path: Path) -> None:
    matrix = _clustered(400, 10)
    index = VectorIndex.build(_vectors(matrix[:100]), SETTINGS)
    index.save(tmp_path / "v1")
    reader = VectorIndex.load(tmp_path / "v1", SETTINGS)
    first = saved_version(tmp_path / "v1")
    (shard,) = (tmp_path / "v1" / "shards").glob("*-100.faiss")  # named by its size
    held = open(shard, "rb")  # noqa: SIM115 - held open across the saves
    size = os.fstat(held.fileno()).st_size
    for start in (100, 200, 300):
        index.add(_vectors(matrix[start : start + 100], start=start))
        index.save(tmp_path / "v1")
    assert reader.search(matrix[:3], 2)[0][0].image_id == "img-0" and len(reader) == 100
    versions = sorted((tmp_path / "v1").glob(f"{VERSION_PREFIX}*"))
    assert len(versions) == KEEP_VERSIONS and first not in versions  # pruned, not rewritten
    assert saved_version(tmp_path / "v1") == versions[-1]
    assert os.fstat(held.fileno()).st_size == size  # never rewritten
    held.close()
    assert len(VectorIndex.load(tmp_path / "v1", SETTINGS)) == 400


def test_the_spectrum_graph_finds_the_exact_nearest(tmp_path: Path) -> None:
    """The plain HNSW graph the pixel spectra are searched by, against exact search at 50."""
    lake = _vectors(_embedding_like(3000, 13))
    index = VectorIndex.build(lake, SETTINGS, factory=spectrum_factory(SETTINGS))
    queries = lake.matrix[:100]
    exact = np.argsort(-(unit_rows(queries) @ unit_rows(lake.matrix).T), axis=1)[:, :50]
    found = index.search(queries, 50)
    recall = np.mean(
        [
            len({n.image_id for n in row} & {lake.ids[i] for i in truth}) / 50
            for row, truth in zip(found, exact, strict=True)
        ]
    )
    assert recall >= 0.97
    assert not index.stale  # a plain graph has no projection to refit


def _write_partition(lake: Path, batch: str, vectors: Vectors, spectra: np.ndarray) -> Path:
    folder = lake / "embeddings" / f"batch_id={batch}"
    folder.mkdir(parents=True)
    table = pa.table(
        {
            "image_id": vectors.ids,
            "embedder_version": [vectors.version] * len(vectors),
            "vector": [row.tolist() for row in vectors.matrix],
            "fingerprint": [row.tolist() for row in spectra],
        }
    )
    pq.write_table(table, folder / "part-0.parquet")
    return folder / "part-0.parquet"


def test_an_update_reads_only_the_partitions_the_indexes_lack(tmp_path: Path) -> None:
    lake, root = tmp_path / "lake", tmp_path / "index"
    matrix, spectra = _clustered(700, 14), _clustered(700, 15, dimensions=40)
    first = _write_partition(lake, "20261201-a", _vectors(matrix[:600]), spectra[:600])
    indexes, added = updated_indexes(root, lake, "v1", SETTINGS)
    assert added == 600 and len(indexes.spectra) == 600
    first.write_bytes(b"not parquet any more")  # read again, the update would fail
    _write_partition(lake, "20261202-b", _vectors(matrix[600:], start=600), spectra[600:])
    indexes, added = updated_indexes(root, lake, "v1", SETTINGS)
    assert added == 100 and len(indexes.vectors) == len(indexes.spectra) == 700
    again = LakeIndexes.load(root, "v1", SETTINGS)
    assert again.spectra.search(spectra[650:651], 1)[0][0].image_id == "img-650"
    assert updated_indexes(root, lake, "v1", SETTINGS)[1] == 0  # nothing new, nothing read


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
