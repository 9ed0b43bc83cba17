"""Pixel fingerprints that recognise a picture after resizing, re-encoding, brightening or
cropping by a few pixels: the verification step of near-duplicate and leakage detection.

Measured on Fashion-MNIST (benchmarks/README.md): the ImageNet embedder's vectors rank an
image's altered copy among its nearest neighbours, but cannot tell it from a different
image of the same class by similarity alone (a JPEG at quality 20 or a 2-pixel crop of a
28-pixel garment is less similar to its original than many other garments are). A copy
keeps the *pixels*, though: a blurred, mean/std-normalised 16x16 grey thumbnail of the
stored image is unchanged by resizing, JPEG and brightness, and a crop is the original's
thumbnail zoomed in. So each image also gets zoomed-in variants (three zooms, five
anchors), and two images' similarity is the best match of either one's variants with the
other's plain thumbnail. Copies shifted or rotated are recognised by
:mod:`visionloop.embeddings.alignment` instead.

What the lake stores per image (the embeddings table's ``fingerprint``) is the search key
that proposes pixel candidates: :func:`spectrum`, the square-rooted Fourier magnitudes of the
low frequencies of the aligned thumbnail, which a shift leaves unchanged (measured: an
image's copy shifted by 2 pixels is among its 50 nearest by spectrum 99 % of the time, by
a plain thumbnail 37 %). Pure functions over stored (preprocessed) image bytes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from functools import cache

import numpy as np
from PIL import Image

from visionloop.embeddings import alignment

SIDE = 16
BLUR = alignment.BLUR  # Gaussian radius at the stored size: one blurred image serves both
ZOOMS = (1.08, 1.17, 1.27)  # what a crop of 1, 2 or 3 pixels of a 28-pixel image looks like
ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # centre and corners
FREQUENCIES = 12  # spectrum: frequencies 0..12 (and -12..-1 vertically) of the thumbnail
SPECTRUM_SIZE = (2 * FREQUENCIES + 1) * (FREQUENCIES + 1)
BATCH = 256  # images resampled at once by variants_of
VERSION = f"fp2-{SIDE}-{BLUR}-{'-'.join(map(str, ZOOMS))}-s{alignment.SIDE}-{FREQUENCIES}"


def _boxes(size: int) -> list[tuple[float, float, float, float]]:
    boxes = [(0.0, 0.0, float(size), float(size))]
    for zoom in ZOOMS:
        side = size / zoom
        for ax, ay in ANCHORS:
            x0, y0 = ax * (size - side), ay * (size - side)
            boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def _unit_rows(rows: np.ndarray) -> np.ndarray:
    """Each row (last axis) centred and scaled to unit length (a flat row stays zero)."""
    centred = rows - rows.mean(axis=-1, keepdims=True, dtype=np.float32)
    norms = np.sqrt(np.einsum("...d,...d->...", centred, centred))[..., None]
    return centred / np.where(norms > 1e-6, norms, np.float32(1.0))


def variants(data: bytes) -> np.ndarray:
    """``(1 + zooms x anchors, SIDE*SIDE)`` unit vectors; row 0 is the plain thumbnail."""
    return variants_of([alignment.blurred(data)])[0]


def variants_of(greys: Sequence[Image.Image]) -> np.ndarray:
    """:func:`variants` of many images at once, from their blurred grey images
    (:func:`alignment.blurred`; stored images are square): ``(N, 1 + zooms x anchors,
    SIDE*SIDE)``. Each variant is PIL's antialiased bilinear resize of its box, done as two
    matrix products per image size instead of one PIL call per variant."""
    out = np.empty((len(greys), len(_boxes(SIDE)), SIDE * SIDE), np.float32)
    by_size: dict[int, list[int]] = defaultdict(list)
    for n, grey in enumerate(greys):
        by_size[grey.size[0]].append(n)
    for size, numbers in by_size.items():
        spans, boxes = _resampling(size)
        for start in range(0, len(numbers), BATCH):  # a few MB at a time
            rows = numbers[start : start + BATCH]
            pixels = np.stack([np.asarray(greys[n], np.float32) for n in rows])  # (N, S, S)
            across = (pixels @ spans.reshape(-1, size).T).reshape(len(rows), size, -1, SIDE)
            shrunk = np.stack([spans[y] @ across[:, :, x] for y, x in boxes], axis=1)
            out[rows] = _unit_rows(shrunk.reshape(len(rows), len(boxes), -1))
    return out


@cache
def _resampling(size: int) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """The distinct spans of the boxes of a ``size``-pixel image as resampling matrices
    ``(spans, SIDE, size)``, and each box as (its y span, its x span)."""
    boxes = _boxes(size)
    spans = sorted({(x0, x1) for x0, _, x1, _ in boxes} | {(y0, y1) for _, y0, _, y1 in boxes})
    matrices = np.stack([_bilinear(size, start, stop) for start, stop in spans])
    at = {span: n for n, span in enumerate(spans)}
    return matrices, tuple((at[(y0, y1)], at[(x0, x1)]) for x0, y0, x1, y1 in boxes)


def _bilinear(size: int, start: float, stop: float) -> np.ndarray:
    """``(SIDE, size)``: PIL's antialiased bilinear resampling of pixels [start, stop) to
    SIDE pixels (its triangle filter widened by the downscale factor; equal to PIL's float
    resize within 1e-4)."""
    scale = (stop - start) / SIDE
    support = max(scale, 1.0)
    centres = start + (np.arange(SIDE) + 0.5) * scale
    weights = np.clip(1 - np.abs((np.arange(size) + 0.5 - centres[:, None]) / support), 0, None)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def spectrum(data: bytes) -> np.ndarray:
    """``(SPECTRUM_SIZE,)`` unit vector: the stored fingerprint, a shift-invariant search key."""
    thumb = alignment.plain_thumbnail(data)
    side, k = alignment.SIDE, FREQUENCIES
    magnitude = np.sqrt(np.abs(np.fft.rfft2(thumb - thumb.mean(), s=(2 * side, 2 * side))))
    low = np.concatenate([magnitude[: k + 1, : k + 1], magnitude[-k:, : k + 1]])
    key = low.ravel()
    return (key / max(float(np.linalg.norm(key)), 1e-6)).astype(np.float32)


def similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Of two images' :func:`variants`: the best match of either's zooms with the other's plain
    thumbnail (so a crop matches its original whichever of the two came first)."""
    return float(similarities(a[None], b[None])[0])


def similarities(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """:func:`similarity` of each pair ``(first[p], second[p])`` of variants, ``(P,)``."""
    forward = np.einsum("pvd,pd->pv", first, second[:, 0]).max(axis=1)
    backward = np.einsum("pvd,pd->pv", second, first[:, 0]).max(axis=1)
    return np.maximum(forward, backward)
