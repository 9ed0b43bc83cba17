"""Selection for annotation: uncertainty, eligibility, drifted first, diversity, cold start."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.labelling.selection import Pool, eligible, sample_test_split, select, uncertainty


def _pool(probabilities, drifted=None, embeddings=None) -> Pool:
    probabilities = None if probabilities is None else np.asarray(probabilities, dtype=float)
    count = len(probabilities) if probabilities is not None else len(embeddings)
    embeddings = (
        np.random.default_rng(0).normal(size=(count, 4)) if embeddings is None else embeddings
    )
    flags = np.zeros(count, bool) if drifted is None else np.asarray(drifted)
    return Pool([f"i{n}" for n in range(count)], probabilities, embeddings, flags)


def test_each_strategy_ranks_the_uncertain_first() -> None:
    probabilities = np.array([[0.9, 0.05, 0.05], [0.5, 0.45, 0.05], [0.4, 0.3, 0.3]])
    assert np.argsort(-uncertainty(probabilities, "margin")).tolist()[0] == 1  # 0.05 apart
    assert np.argsort(-uncertainty(probabilities, "entropy")).tolist()[0] == 2
    assert np.argsort(-uncertainty(probabilities, "least_confidence")).tolist()[0] == 2
    assert select(_pool(probabilities), 2, "margin") == ["i1", "i2"]
    with pytest.raises(ValueError, match="unknown strategy"):
        select(_pool(probabilities), 1, "loudest")


def test_drifted_images_go_first_within_the_budget() -> None:
    probabilities = [[0.5, 0.5], [0.99, 0.01], [0.6, 0.4], [0.98, 0.02]]
    chosen = select(_pool(probabilities, drifted=[False, True, False, True]), 3, "margin")
    assert chosen == ["i3", "i1", "i0"]  # drifted (by uncertainty), then the most uncertain


def test_only_unlabelled_images_outside_test_without_open_tasks_compete() -> None:
    ids = ["a", "b", "c", "d", "e"]
    splits = ["train", "test", "val", "train", "train"]
    assert eligible(ids, splits, labelled={"d"}, open_tasks={"e"}) == [0, 2]
    assert eligible(ids, splits, labelled={"d"}, open_tasks={"e"}, test=True) == [1]


def test_the_test_share_is_a_model_free_sample_of_the_test_split() -> None:
    ids = [f"{n:064x}" for n in (7, 3, 9, 1)]
    assert sample_test_split(set(ids), 2) == [f"{1:064x}", f"{3:064x}"]  # by id, not by any score
    assert sample_test_split(ids, 0) == [] and len(sample_test_split(ids, 10)) == 4


def test_clustered_margin_spreads_over_clusters_and_random_is_seeded() -> None:
    rng = np.random.default_rng(1)
    embeddings = np.vstack([rng.normal(loc, 0.01, size=(20, 2)) for loc in (0.0, 5.0, 10.0)])
    top = np.linspace(0.5, 0.54, 60)  # cluster 0 the most uncertain, cluster 2 the least
    pool = _pool(np.column_stack([top, 1 - top]), embeddings=embeddings)
    assert {int(i[1:]) // 20 for i in select(pool, 6, "margin")} == {0}  # one cluster only
    assert {int(i[1:]) // 20 for i in select(pool, 6, "margin_clusters")} == {0, 1, 2}
    assert select(pool, 5, "random", seed=3) == select(pool, 5, "random", seed=3)
    assert select(pool, 5, "random", seed=3) != select(pool, 5, "random", seed=4)


def test_cold_start_takes_typical_images_of_each_region() -> None:
    rng = np.random.default_rng(2)
    embeddings = np.vstack([rng.normal(loc, 0.01, size=(30, 2)) for loc in (0.0, 5.0, 10.0)])
    chosen = select(_pool(None, embeddings=embeddings), 3, "margin")
    assert {int(i[1:]) // 30 for i in chosen} == {0, 1, 2}
