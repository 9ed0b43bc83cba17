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

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from visionloop.embeddings import alignment
from visionloop.preprocessing import decode_stored

SIDE = 16
BLUR = 1.0  # Gaussian radius at the stored size, before the (antialiased) downsampling
ZOOMS = (1.08, 1.17, 1.27)  # what a crop of 1, 2 or 3 pixels of a 28-pixel image looks like
ANCHORS = ((0.5, 0.5), (0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0))  # centre and corners
FREQUENCIES = 12  # spectrum: frequencies 0..12 (and -12..-1 vertically) of the thumbnail
SPECTRUM_SIZE = (2 * FREQUENCIES + 1) * (FREQUENCIES + 1)
VERSION = f"fp2-{SIDE}-{BLUR}-{'-'.join(map(str, ZOOMS))}-s{alignment.SIDE}-{FREQUENCIES}"


def _boxes(size: int) -> list[tuple[float, float, float, float]]:
    boxes = [(0.0, 0.0, float(size), float(size))]
    for zoom in ZOOMS:
        side = size / zoom
        for ax, ay in ANCHORS:
            x0, y0 = ax * (size - side), ay * (size - side)
            boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def _unit(pixels: np.ndarray) -> np.ndarray:
    centred = pixels - pixels.mean()
    norm = np.linalg.norm(centred)
    return centred / norm if norm > 1e-6 else centred


def variants(data: bytes) -> np.ndarray:
    """``(1 + zooms x anchors, SIDE*SIDE)`` unit vectors; row 0 is the plain thumbnail."""
    grey = decode_stored(data).convert("L").filter(ImageFilter.GaussianBlur(BLUR))
    rows = [
        np.asarray(grey.resize((SIDE, SIDE), Image.Resampling.BILINEAR, box=box), np.float32)
        for box in _boxes(grey.size[0])
    ]
    return np.stack([_unit(row.ravel()) for row in rows]).astype(np.float32)


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
    return float(max((a @ b[0]).max(), (b @ a[0]).max()))


def best_matches(queries: Sequence[np.ndarray], candidates: Sequence[np.ndarray]) -> np.ndarray:
    """Pairwise :func:`similarity` of each query with each candidate, ``(Q, C)``."""
    if not queries or not candidates:
        return np.zeros((len(queries), len(candidates)), np.float32)
    q, c = np.stack(queries), np.stack(candidates)  # (Q, V, D), (C, V, D)
    forward = np.einsum("qvd,cd->qcv", q, c[:, 0]).max(axis=2)
    backward = np.einsum("cvd,qd->qcv", c, q[:, 0]).max(axis=2)
    return np.maximum(forward, backward)
