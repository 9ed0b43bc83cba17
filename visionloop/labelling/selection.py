"""Which images annotators get tonight: pure functions over predictions and embeddings.

Uncertainty on the champion's calibrated probabilities — ``margin`` (in published
comparisons the simple baseline hardest to beat), ``entropy``, ``least_confidence`` — or
``random`` as the baseline. ``margin_clusters`` (the default) adds diversity: the
ten-budget most uncertain by margin are clustered (k-means on their embeddings) and the
most uncertain of each cluster is taken, so one night's batch is not a set of near-copies.
It is the default because it measured best in benchmarks/active_learning.py: it reached
random's accuracy at 2,000 labels with 600 (margin alone needed 700), on every seed. With no
model yet (cold start), the k-means medoids of the pool's embeddings are taken: typical
images first. Only eligible images compete (see :func:`eligible`); images from a drifted
batch go first.

A share of each night's budget (``labelling.test_share``) goes to unlabelled images of the
test split instead, chosen without any model (:func:`sample_test_split`), so the test split grows
as an unbiased sample of what arrives and the promotion gate's interval narrows night by
night; an uncertainty-chosen test split would measure the hard cases only.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

STRATEGIES = ("margin", "entropy", "least_confidence", "random", "margin_clusters")
CANDIDATES_PER_SLOT = 10  # margin_clusters: uncertain candidates per image selected


@dataclass(frozen=True)
class Pool:
    """The images that may be selected, with what is known of each (aligned arrays)."""

    ids: list[str]
    probabilities: np.ndarray | None  # (N, C) calibrated, or None before the first model
    embeddings: np.ndarray  # (N, D)
    drifted: np.ndarray  # (N,) bool: from a batch the drift check flagged

    def __len__(self) -> int:
        return len(self.ids)


def eligible(
    ids: Sequence[str],
    splits: Sequence[str],
    labelled: Collection[str],
    open_tasks: Collection[str],
    test: bool = False,
) -> list[int]:
    """Positions of images that may be selected: unlabelled, not in an open task, and outside
    the test split (``test``: inside it).

    Quarantined files never reach the images table, so they are never candidates.
    """
    taken = set(labelled) | set(open_tasks)
    return [
        i
        for i, (image, split) in enumerate(zip(ids, splits, strict=True))
        if image not in taken and (split == "test") == test
    ]


def sample_test_split(test_ids: Collection[str], count: int) -> list[str]:
    """``count`` of the eligible test images, uniformly: the smallest ids (an image id is
    the SHA-256 of its bytes, so its order is independent of the image)."""
    return sorted(test_ids)[: max(count, 0)]


def uncertainty(probabilities: np.ndarray, strategy: str) -> np.ndarray:
    """Higher is more uncertain."""
    ordered = np.sort(probabilities, axis=1)
    if strategy in ("margin", "margin_clusters"):
        return -(ordered[:, -1] - ordered[:, -2])
    if strategy == "entropy":
        return -(probabilities * np.log(np.clip(probabilities, 1e-12, 1))).sum(axis=1)
    if strategy == "least_confidence":
        return 1 - ordered[:, -1]
    raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")


def select(pool: Pool, budget: int, strategy: str, seed: int = 0) -> list[str]:
    """Up to ``budget`` image ids, drifted images first, then by the strategy."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {STRATEGIES}")
    if budget <= 0 or not len(pool):
        return []
    order = list(dict.fromkeys(_ranked(pool, budget, strategy, np.random.default_rng(seed))))
    drifted_first = sorted(order, key=lambda i: not pool.drifted[i])  # stable: keeps the ranking
    return [pool.ids[i] for i in drifted_first[:budget]]


def _ranked(pool: Pool, budget: int, strategy: str, rng: np.random.Generator) -> list[int]:
    if strategy == "random":
        return list(rng.permutation(len(pool)))
    if pool.probabilities is None:  # cold start: typical images of each region first
        return medoids(pool.embeddings, min(budget, len(pool)), rng) + list(
            rng.permutation(len(pool))
        )
    scores = uncertainty(pool.probabilities, strategy)
    ranked = list(np.argsort(-scores, kind="stable"))
    if strategy != "margin_clusters":
        return ranked
    candidates = ranked[: CANDIDATES_PER_SLOT * budget]
    return _most_uncertain_per_cluster(pool.embeddings, scores, candidates, budget, rng) + ranked


def medoids(embeddings: np.ndarray, count: int, rng: np.random.Generator) -> list[int]:
    """The member nearest each of ``count`` k-means centres (distinct positions)."""
    if count <= 0:
        return []
    labels, centres = _kmeans(embeddings, count, rng)
    chosen = []
    for cluster, centre in enumerate(centres):
        members = np.flatnonzero(labels == cluster)
        if len(members):
            distances = np.linalg.norm(embeddings[members] - centre, axis=1)
            chosen.append(int(members[np.argmin(distances)]))
    return chosen


def _most_uncertain_per_cluster(
    embeddings: np.ndarray,
    scores: np.ndarray,
    candidates: list[int],
    budget: int,
    rng: np.random.Generator,
) -> list[int]:
    labels, _ = _kmeans(embeddings[candidates], min(budget, len(candidates)), rng)
    best: dict[int, int] = {}
    for position, cluster in zip(candidates, labels, strict=True):
        if cluster not in best or scores[position] > scores[best[cluster]]:
            best[int(cluster)] = position
    return sorted(best.values(), key=lambda position: -scores[position])


def _kmeans(data: np.ndarray, k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.cluster import KMeans

    model = KMeans(n_clusters=k, n_init=1, random_state=int(rng.integers(2**31)))
    return model.fit_predict(data), model.cluster_centers_
