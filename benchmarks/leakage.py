"""Benchmark: leakage detection on real Fashion-MNIST test images and altered copies.

The shipped detector (:func:`visionloop.embeddings.leakage.candidates_of`, then
:func:`~visionloop.embeddings.leakage.verified_pairs` at the default ``leakage`` settings),
with the project's embedder, the real similar-image index and the stored 64 px images:
- **copies**: for ``--copies`` random test images, one copy of each kind (shifted by 1-4
  pixels in a random one of 8 directions, rotated by 2, 3, 5 or 7 degrees either way, both
  filled with black; resized, JPEG at quality 20, brightened, cropped by 2 pixels, Gaussian
  noise sigma 8, lower contrast) is checked against the lake of all 10,000 originals plus the
  copies; a copy is found when it is paired with its original;
- **distinct**: every original is checked against the other originals (its candidates are
  its nearest neighbours by embedding and by fingerprint, the hardest distinct pairs); the
  rate is the share of originals paired with any other image.
Results: ``benchmarks/results/leakage.json``.

    .venv/bin/python -m benchmarks.leakage [--copies 500]
"""

from __future__ import annotations

import argparse
import io
import json
import time
from collections.abc import Callable

import numpy as np
from PIL import Image, ImageEnhance

from benchmarks.common import write_result
from visionloop.embeddings import fingerprints
from visionloop.embeddings.embedder import embedder_source
from visionloop.embeddings.index import LakeIndexes, VectorIndex, spectrum_factory
from visionloop.embeddings.leakage import Pair, candidates_of, verified_pairs
from visionloop.embeddings.vectors import Vectors
from visionloop.embeddings.verify import Candidates
from visionloop.ingest.samples import load_part
from visionloop.preprocessing import image_options, process_image_bytes
from visionloop.settings import Settings, load_settings

DIRECTIONS = ((1, 0), (-1, 0), (0, 1), (0, -1), (1, 1), (1, -1), (-1, 1), (-1, -1))


def _png(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _shift(m: int) -> Callable[[Image.Image, np.random.Generator], bytes]:
    def copy(image: Image.Image, rng: np.random.Generator) -> bytes:
        dx, dy = DIRECTIONS[rng.integers(len(DIRECTIONS))]
        matrix = (1, 0, -m * dx, 0, 1, -m * dy)
        return _png(image.transform(image.size, Image.Transform.AFFINE, matrix, fillcolor=0))

    return copy


def _rotate(degrees: float) -> Callable[[Image.Image, np.random.Generator], bytes]:
    def copy(image: Image.Image, rng: np.random.Generator) -> bytes:
        angle = degrees if rng.random() < 0.5 else -degrees
        return _png(image.rotate(angle, Image.Resampling.BILINEAR, fillcolor=0))

    return copy


def _noisy(image: Image.Image, rng: np.random.Generator) -> bytes:
    pixels = np.asarray(image, np.float32) + rng.normal(0, 8, (image.height, image.width))
    return _png(Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)))


COPIES: dict[str, Callable[[Image.Image, np.random.Generator], bytes]] = {
    **{f"shift_{m}px": _shift(m) for m in (1, 2, 3, 4)},
    **{f"rotate_{d}deg": _rotate(d) for d in (2, 3, 5, 7)},
    "resized": lambda image, _: _png(image.resize((56, 56))),
    "jpeg_q20": lambda image, _: _png(image, "JPEG", quality=20),
    "brightened": lambda image, _: _png(ImageEnhance.Brightness(image).enhance(1.3)),
    "cropped_2px": lambda image, _: _png(image.crop((2, 2, 26, 26))),
    "noise_8": _noisy,
    "lower_contrast": lambda image, _: _png(ImageEnhance.Contrast(image).enhance(0.7)),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--copies", type=int, default=500, help="originals copied")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    settings = load_settings()
    pixels, _ = load_part("test")
    rng = np.random.default_rng(args.seed)
    raw = [_png(Image.fromarray(image)) for image in pixels]
    chosen = rng.choice(len(raw), args.copies, replace=False)
    copies = [
        (int(i), kind, make(Image.fromarray(pixels[i]), rng))
        for i in chosen
        for kind, make in COPIES.items()
    ]
    started = time.perf_counter()
    embedder = embedder_source(settings).build()
    vectors = embedder.embed(raw + [data for _, _, data in copies]).astype(np.float32)
    options = image_options(settings)
    stored = [process_image_bytes(data, options).image for data in raw]
    stored += [process_image_bytes(data, options).image for _, _, data in copies]
    embed_s = time.perf_counter() - started
    ids = [f"o{i}" for i in range(len(raw))] + [f"c{j}" for j in range(len(copies))]
    images = dict(zip(ids, stored, strict=True))
    prints = np.stack([fingerprints.spectrum(data) for data in stored])
    result = {
        "leakage": settings.leakage.model_dump(),
        "originals": len(raw),
        "embed_and_preprocess_s": round(embed_s, 1),
        "copies": _copies_found(ids, vectors, prints, images, copies, settings),
        "distinct": _distinct_flagged(ids[: len(raw)], vectors, prints, images, settings),
    }
    print(json.dumps(result, indent=2))
    write_result("leakage", result)


def _check(
    ids: list[str],
    vectors: np.ndarray,
    prints: np.ndarray,
    images: dict[str, bytes],
    query_ids: list[str],
    settings: Settings,
) -> tuple[list[Candidates], list[Pair], float]:
    """The shipped two steps over an in-memory lake of ``ids``; their time."""
    started = time.perf_counter()
    version = "bench"
    indexes = LakeIndexes(
        VectorIndex.build(Vectors(version, ids, vectors), settings.similarity),
        VectorIndex.build(
            Vectors(version, ids, prints),
            settings.similarity,
            factory=spectrum_factory(settings.similarity),
        ),
    )
    candidates = candidates_of(query_ids, indexes, settings.leakage)
    splits = {image_id: "val" if image_id.startswith("c") else "test" for image_id in ids}
    involved = set(query_ids).union(*(c.nearest for c in candidates))
    pairs = verified_pairs(
        query_ids, candidates, {i: images[i] for i in involved}, splits, settings.leakage
    )
    return candidates, pairs, time.perf_counter() - started


def _copies_found(
    ids: list[str],
    vectors: np.ndarray,
    prints: np.ndarray,
    images: dict[str, bytes],
    copies: list[tuple[int, str, bytes]],
    settings: Settings,
) -> dict:
    query_ids = ids[-len(copies) :]
    candidates, pairs, seconds = _check(ids, vectors, prints, images, query_ids, settings)
    linked = {frozenset((p.image_a, p.image_b)) for p in pairs}
    rates: dict[str, dict[str, float]] = {}
    for kind in COPIES:
        rows = [j for j, (_, k, _) in enumerate(copies) if k == kind]
        originals = [f"o{copies[j][0]}" for j in rows]
        found = [
            frozenset((query_ids[j], o)) in linked for j, o in zip(rows, originals, strict=True)
        ]
        among = [o in candidates[j].nearest for j, o in zip(rows, originals, strict=True)]
        rates[kind] = {
            "found": round(float(np.mean(found)), 4),
            "candidate": round(float(np.mean(among)), 4),
        }
    return {"per_kind": rates, "check_s": round(seconds, 1)}


def _distinct_flagged(
    ids: list[str],
    vectors: np.ndarray,
    prints: np.ndarray,
    images: dict[str, bytes],
    settings: Settings,
) -> dict:
    n = len(ids)
    _, pairs, seconds = _check(ids, vectors[:n], prints[:n], images, ids, settings)
    flagged = {i for p in pairs for i in (p.image_a, p.image_b)}
    return {
        "images": n,
        "flagged": len(flagged),
        "rate": round(len(flagged) / n, 4),
        "pairs": len(pairs),
        "check_s": round(seconds, 1),
    }


if __name__ == "__main__":
    main()
