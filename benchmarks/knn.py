"""Benchmark: the similar-image index (faiss PCA + HNSW + refine) against exact search.

Sizes: synthetic embeddings (default 10k, 100k, 1M; 1,280-D like lite0's pooled features,
drawn from a 64-D Gaussian mixture mapped linearly into 1,280-D, so they have the low
intrinsic dimension real embeddings have) and the real Fashion-MNIST 70k embedded by the
project's embedder (500 held out as queries). For each:
- **build**: :meth:`VectorIndex.build` on all but the last 1 % (PCA fit included), then
  **add**: :meth:`VectorIndex.add` of that 1 % (incremental growth), both timed;
- **recall@10** of the index against exact cosine top-10 in the full 1,280-D space, and of
  the graph alone (its own top 10, no re-ranking on the full vectors), to show the re-rank;
- **latency**: one query at a time (projection and re-ranking included), p50 and p95,
  alternating with exact numpy search (a matrix-vector product and a partial sort) for
  ``--rounds``.
Results: ``benchmarks/results/knn.json``.

    .venv/bin/python -m benchmarks.knn [--sizes 10000 100000 1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from benchmarks.common import alternate, fashion_mnist_embeddings, write_result
from visionloop.embeddings.index import VectorIndex
from visionloop.embeddings.vectors import Vectors
from visionloop.settings import SimilaritySettings

DIMENSIONS, LATENT, CLUSTERS = 1280, 64, 1000
QUERIES, K = 500, 10


def synthetic(count: int, seed: int = 0) -> np.ndarray:
    """``count`` unit vectors of a clustered low-dimensional distribution, in 1,280-D."""
    rng = np.random.default_rng(seed)
    lift = rng.standard_normal((LATENT, DIMENSIONS)).astype(np.float32)
    centres = rng.standard_normal((CLUSTERS, LATENT)).astype(np.float32)
    out = np.empty((count, DIMENSIONS), dtype=np.float32)
    for start in range(0, count, 100_000):
        rows = min(100_000, count - start)
        latent = centres[rng.integers(CLUSTERS, size=rows)]
        latent += 0.6 * rng.standard_normal((rows, LATENT)).astype(np.float32)
        out[start : start + rows] = latent @ lift
        out[start : start + rows] += 0.5 * rng.standard_normal((rows, DIMENSIONS), np.float32)
    return _unit(out)


def _unit(matrix: np.ndarray) -> np.ndarray:
    matrix /= np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)
    return matrix


def exact_top(base: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Exact cosine top-k positions (rows are unit vectors), in chunks of the base."""
    best_scores = np.full((len(queries), k), -np.inf, dtype=np.float32)
    best = np.zeros((len(queries), k), dtype=np.int64)
    for start in range(0, len(base), 200_000):
        scores = queries @ base[start : start + 200_000].T
        top = np.argpartition(-scores, k, axis=1)[:, :k]
        merged_scores = np.concatenate([best_scores, np.take_along_axis(scores, top, 1)], 1)
        merged = np.concatenate([best, top + start], 1)
        order = np.argsort(-merged_scores, axis=1)[:, :k]
        best_scores = np.take_along_axis(merged_scores, order, 1)
        best = np.take_along_axis(merged, order, 1)
    return best


def exact_rate(base: np.ndarray, queries: np.ndarray, timings: list[float]) -> float:
    """Queries/s of exact search, one query at a time (each latency appended to timings)."""
    started = time.perf_counter()
    for query in queries:
        begun = time.perf_counter()
        scores = base @ query
        np.argpartition(-scores, K)[:K]
        timings.append(time.perf_counter() - begun)
    return len(queries) / (time.perf_counter() - started)


def index_rate(index: VectorIndex, queries: np.ndarray, timings: list[float]) -> float:
    started = time.perf_counter()
    for query in queries:
        begun = time.perf_counter()
        index.search(query[None, :], K)
        timings.append(time.perf_counter() - begun)
    return len(queries) / (time.perf_counter() - started)


def recall(
    index: VectorIndex, queries: np.ndarray, truth: np.ndarray, rerank: int | None = None
) -> float:
    found = index.search(queries, K, rerank=rerank)
    hits = [
        len({int(n.image_id) for n in row} & set(expected.tolist()))
        for row, expected in zip(found, truth, strict=True)
    ]
    return sum(hits) / (K * len(queries))


def _ms(values: list[float], q: float) -> float:
    return round(float(np.quantile(values, q)) * 1000, 3)


def measure(name: str, base: np.ndarray, queries: np.ndarray, rounds: int) -> dict:
    settings = SimilaritySettings()
    held = max(1, len(base) // 100)
    ids = [str(i) for i in range(len(base))]
    started = time.perf_counter()
    index = VectorIndex.build(Vectors("bench", ids[:-held], base[:-held]), settings)
    build_s = time.perf_counter() - started
    started = time.perf_counter()
    index.add(Vectors("bench", ids[-held:], base[-held:]))
    add_s = time.perf_counter() - started
    truth = exact_top(base, queries, K)
    exact_ms: list[float] = []
    index_ms: list[float] = []
    exact_queries = queries[: 50 if len(base) > 200_000 else len(queries)]
    rates = alternate(
        lambda: exact_rate(base, exact_queries, exact_ms),
        lambda: index_rate(index, queries, index_ms),
        rounds,
    )
    result = {
        "data": name,
        "vectors": len(base),
        "recall_at_10": round(recall(index, queries, truth), 4),
        "recall_at_10_graph_only": round(recall(index, queries, truth, rerank=K), 4),
        "build_s": round(build_s, 2),
        "add": {
            "vectors": held,
            "seconds": round(add_s, 3),
            "per_vector_ms": round(add_s / held * 1000, 3),
        },
        "index_latency_ms": {"p50": _ms(index_ms, 0.5), "p95": _ms(index_ms, 0.95)},
        "exact_latency_ms": {"p50": _ms(exact_ms, 0.5), "p95": _ms(exact_ms, 0.95)},
        "speedup_over_exact": rates["ratio"],
        "settings": settings.model_dump(),
    }
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--no-real", action="store_true", help="skip the Fashion-MNIST 70k")
    args = parser.parse_args()
    results = []
    for count in args.sizes:
        vectors = synthetic(count + QUERIES, seed=count)
        results.append(measure("synthetic", vectors[QUERIES:], vectors[:QUERIES], args.rounds))
        del vectors
    if not args.no_real:
        real, _ = fashion_mnist_embeddings()
        real = _unit(real)
        rng = np.random.default_rng(0)
        order = rng.permutation(len(real))
        queries, base = real[order[:QUERIES]], real[order[QUERIES:]]
        results.append(measure("fashion-mnist", base, queries, args.rounds))
    summary = {"p50_ms_by_size": {r["vectors"]: r["index_latency_ms"]["p50"] for r in results}}
    summary["median_recall"] = statistics.median(r["recall_at_10"] for r in results)
    write_result("knn", {"results": results, "summary": summary})


if __name__ == "__main__":
    main()
