"""Benchmark: how often the drift decision is wrong, on Fashion-MNIST.

Images go through the project's paths: ingest preprocessing (``process_image_bytes``),
the embedder, :func:`image_statistics`, then :func:`drift_report` with the default
``DriftSettings`` (a reference of ``reference_size`` training images against a batch).
- **false positives**: ``--splits`` random reference/current splits of the same images —
  drift should be flagged at most once in 20;
- **detection**: batches that really changed — every image inverted, blurred (Gaussian,
  radius 2), rotated 90°, or drawn from two classes only — ``--shifted`` runs each, with a
  fresh random reference and batch every run; drift should be flagged every time.
No model is involved (predicted labels are "unscored", as before the first champion): the
decision comes from the embedding tests alone. Results: ``benchmarks/results/drift.json``.

    .venv/bin/python -m benchmarks.drift [--splits 20] [--shifted 5] [--batch 500]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
from PIL import Image, ImageFilter, ImageOps

from benchmarks.common import write_result
from visionloop.embeddings.embedder import embedder_source
from visionloop.ingest.samples import load_part
from visionloop.monitoring.drift import drift_frame, drift_report, image_statistics
from visionloop.preprocessing import image_options, process_image_bytes
from visionloop.settings import load_settings

Shift = Callable[[Image.Image], Image.Image]
SHIFTS: dict[str, Shift] = {
    "inverted": ImageOps.invert,
    "blurred": lambda image: image.filter(ImageFilter.GaussianBlur(2)),
    "rotated_90": lambda image: image.rotate(90),
}


class Images:
    """Fashion-MNIST pixels and labels, turned into drift frames through the project's code."""

    def __init__(self, limit: int) -> None:
        pixels, labels = load_part("train")
        self.pixels, self.labels = pixels[:limit], labels[:limit]
        settings = load_settings()
        self.options = image_options(settings)
        self.embedder = embedder_source(settings).build()
        self.unchanged = self.frame(np.arange(limit))  # every image as it is, once

    def rows(self, rows: np.ndarray) -> pd.DataFrame:
        return self.unchanged.iloc[rows].reset_index(drop=True)

    def frame(self, rows: np.ndarray, shift: Shift | None = None) -> pd.DataFrame:
        stored, sizes = [], []
        for row in rows:
            image = Image.fromarray(self.pixels[row], mode="L")
            image = shift(image) if shift else image
            encoded = io.BytesIO()
            image.save(encoded, format="PNG")
            processed = process_image_bytes(encoded.getvalue(), self.options)
            stored.append(processed.image)
            sizes.append((processed.width, processed.height))
        vectors = self.embedder.embed(stored)
        return drift_frame(
            vectors,
            image_statistics(stored),
            pd.DataFrame(sizes, columns=["width", "height"]),
            [None] * len(stored),
        )


def judge(images: Images, reference: np.ndarray, current: pd.DataFrame, settings) -> dict:
    started = time.perf_counter()
    result, _ = drift_report(images.rows(reference), current, settings.drift)
    return {
        "drifted": result.drifted,
        "scores": {m.method: round(m.score, 4) for m in result.methods},
        "seconds": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--splits", type=int, default=20)
    parser.add_argument("--shifted", type=int, default=5)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--pool", type=int, default=10_000)
    args = parser.parse_args()
    settings = load_settings()
    images = Images(args.pool)
    size = settings.drift.reference_size

    def split(seed: int, current_pool: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        order = np.random.default_rng(seed).permutation(len(images.labels))
        reference = order[:size]
        rest = order[size:] if current_pool is None else np.setdiff1d(current_pool, reference)
        return reference, np.random.default_rng(seed + 1).permutation(rest)[: args.batch]

    runs: dict[str, list[dict]] = {"same_distribution": []}
    for seed in range(args.splits):
        reference, current = split(seed)
        runs["same_distribution"].append(judge(images, reference, images.rows(current), settings))
        print("same", runs["same_distribution"][-1], flush=True)
    two_classes = np.flatnonzero(np.isin(images.labels, [0, 1]))
    for name, shift in [*SHIFTS.items(), ("two_classes", None)]:
        runs[name] = []
        for seed in range(100, 100 + args.shifted):
            pool = two_classes if name == "two_classes" else None
            reference, current = split(seed, pool)
            batch = images.frame(current, shift) if shift else images.rows(current)
            runs[name].append(judge(images, reference, batch, settings))
            print(name, runs[name][-1], flush=True)
    rates = {
        name: sum(run["drifted"] for run in items) / len(items) for name, items in runs.items()
    }
    write_result(
        "drift",
        {
            "reference_size": size,
            "batch": args.batch,
            "settings": settings.drift.model_dump(),
            "flag_rate": rates,
            "flagged": {name: sum(run["drifted"] for run in items) for name, items in runs.items()},
            "runs": runs,
        },
    )
    print(json.dumps(rates))


if __name__ == "__main__":
    main()
