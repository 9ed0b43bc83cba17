"""Benchmark: label efficiency of the selection strategies on Fashion-MNIST.

A pool of ``--pool`` training images and ``--test`` test images are embedded by the
project's embedder (the packaged lite0, through the lake's preprocessing). Every strategy
starts from the same random ``--start`` labels per seed, then each round trains the same
recipe — a logistic-regression head on the frozen embeddings (standardised, PCA to 256
dimensions fitted once on the unlabelled pool) — scores the pool, and labels the next
``--round`` images chosen by :func:`visionloop.labelling.selection.select`, the code the
nightly hand-off runs, until ``--until`` labels. Test accuracy is recorded at each size.

For each strategy: the labels it needs to reach random's accuracy at ``--until`` (median
over seeds; the target for the default is ≤ 0.3 N). Results:
``benchmarks/results/active_learning.json`` and ``active_learning.png`` (accuracy against
labels, median with a min-max band over seeds), also published as a Prefect artifact.

    .venv/bin/python -m benchmarks.active_learning [--seeds 0 1 2] [--pool 20000]
"""

from __future__ import annotations

import argparse
import base64
import json
import statistics
import time
import warnings

import numpy as np
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from benchmarks.common import RESULTS_DIR, fashion_mnist_embeddings, write_result
from visionloop.labelling.selection import Pool, select
from visionloop.settings import LabellingSettings

STRATEGIES = ("random", "margin", "entropy", "least_confidence", "margin_clusters")
DEFAULT = LabellingSettings().strategy


def head(features: np.ndarray, labels: np.ndarray) -> LogisticRegression:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return LogisticRegression(C=0.5, max_iter=300).fit(features, labels)


def run(strategy: str, seed: int, data: dict, args: argparse.Namespace) -> list[float]:
    """Test accuracy at each label count, from the seed's random start."""
    features, labels = data["pool"], data["pool_labels"]
    rng = np.random.default_rng(seed)
    labelled = list(rng.choice(len(labels), args.start, replace=False))
    curve = []
    while True:
        model = head(features[labelled], labels[labelled])
        curve.append(float(model.score(data["test"], data["test_labels"])))
        if len(labelled) >= args.until:
            return curve
        taken = set(labelled)
        rest = np.asarray([i for i in range(len(labels)) if i not in taken])
        pool = Pool(
            ids=[str(i) for i in rest],
            probabilities=_full(model, features[rest], len(set(labels.tolist()))),
            embeddings=features[rest],
            drifted=np.zeros(len(rest), dtype=bool),
        )
        chosen = select(pool, args.round, strategy, seed=int(rng.integers(2**31)))
        labelled += [int(i) for i in chosen]


def _full(model: LogisticRegression, features: np.ndarray, classes: int) -> np.ndarray:
    """Probabilities over all classes (a class the few labels lack gets zero)."""
    out = np.zeros((len(features), classes))
    out[:, model.classes_] = model.predict_proba(features)
    return out


def labels_to_reach(curve: list[float], sizes: list[int], target: float) -> int | None:
    return next((size for size, value in zip(sizes, curve, strict=True) if value >= target), None)


def plot(sizes: list[int], curves: dict[str, list[list[float]]], path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for strategy, runs in curves.items():
        values = np.asarray(runs)
        axes.plot(sizes, np.median(values, axis=0), label=strategy)
        axes.fill_between(sizes, values.min(axis=0), values.max(axis=0), alpha=0.2)
    axes.set_xlabel("labelled images")
    axes.set_ylabel("test accuracy")
    axes.set_title("Fashion-MNIST, logistic head on frozen lite0 embeddings")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def publish(summary: dict, png: bytes) -> None:
    """The plot and the table as a Prefect markdown artifact (embedded PNG)."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    rows = "\n".join(
        f"| {name} | {item['median_labels_to_reach_random']} | {item['accuracy_at_until']} |"
        for name, item in summary["strategies"].items()
    )
    image = base64.b64encode(png).decode()
    markdown = (
        f"Labels to reach random's accuracy at {summary['until']}:\n\n"
        "| strategy | labels (median) | accuracy at the end |\n|---|---:|---:|\n"
        f"{rows}\n\n![accuracy against labels](data:image/png;base64,{image})"
    )

    @flow(name="active-learning-benchmark")
    def artifact() -> None:
        create_markdown_artifact(key="active-learning-benchmark", markdown=markdown)

    artifact()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pool", type=int, default=20_000)
    parser.add_argument("--test", type=int, default=5_000)
    parser.add_argument("--start", type=int, default=200)
    parser.add_argument("--round", type=int, default=100)
    parser.add_argument("--until", type=int, default=2_000)
    parser.add_argument("--no-artifact", action="store_true")
    args = parser.parse_args()
    started = time.perf_counter()
    pool, pool_labels = fashion_mnist_embeddings(("train",), args.pool)
    test, test_labels = fashion_mnist_embeddings(("test",), args.test)
    embed_s = time.perf_counter() - started
    scaler = StandardScaler().fit(pool)
    pca = PCA(256, random_state=0).fit(scaler.transform(pool))
    data = {
        "pool": pca.transform(scaler.transform(pool)),
        "pool_labels": pool_labels,
        "test": pca.transform(scaler.transform(test)),
        "test_labels": test_labels,
    }
    sizes = list(range(args.start, args.until + 1, args.round))
    curves: dict[str, list[list[float]]] = {}
    for strategy in STRATEGIES:
        curves[strategy] = [run(strategy, seed, data, args) for seed in args.seeds]
        print(strategy, [round(c[-1], 4) for c in curves[strategy]], flush=True)
    summary = {"until": args.until, "strategies": {}}
    for strategy, runs in curves.items():
        reached = [
            labels_to_reach(curve, sizes, random[-1])
            for curve, random in zip(runs, curves["random"], strict=True)
        ]
        known = [value for value in reached if value is not None]
        summary["strategies"][strategy] = {
            "labels_to_reach_random_per_seed": reached,
            "median_labels_to_reach_random": statistics.median(known) if known else None,
            "accuracy_at_until": round(statistics.median(c[-1] for c in runs), 4),
        }
    path = RESULTS_DIR / "active_learning.png"
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    plot(sizes, curves, path)
    write_result(
        "active_learning",
        {
            "pool": args.pool,
            "test": args.test,
            "start": args.start,
            "round": args.round,
            "seeds": args.seeds,
            "default": DEFAULT,
            "embed_seconds": round(embed_s, 1),
            "sizes": sizes,
            "curves": curves,
            "summary": summary,
        },
    )
    print(json.dumps(summary, indent=2))
    if not args.no_artifact:
        publish(summary, path.read_bytes())


if __name__ == "__main__":
    main()
