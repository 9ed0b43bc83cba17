"""Aligned pixel similarity: recognises a copy shifted by a few pixels or rotated a few degrees.

A shifted copy keeps its pixels but moves them, so no fixed-position thumbnail matches it; a
rotated one turns them. Two images are compared at their best alignment, in two steps:

1. **coarse** (:func:`coarse_alignments`, many pairs at once): each image gets a blurred
   32x32 grey thumbnail plus zoomed-in (crops) and rotated (±3°, ±6°) variants; a pair's
   score is the highest **masked normalised cross-correlation** of one's variants with the
   other's plain thumbnail over every shift of up to :data:`MAX_SHIFT` thumbnail pixels
   (either way round), for all shifts at once by FFT (Padfield, "Masked object
   registration in the Fourier domain", 2012), the peak refined to sub-pixel precision by a
   parabola. Only the overlap of the two frames counts, so the black fill a shift brings in
   does not; overlaps under :data:`MIN_OVERLAP` of the frame are ignored.
2. **fine** (:func:`fine_similarity`, for pairs whose coarse score reaches
   :data:`COARSE_FLOOR`): the same NCC at the stored resolution, less blurred, at the coarse
   alignment and its neighbours (±half a pixel, ±1.5°). Thumbnails cannot tell two pairs of
   trousers from one pair shifted; the stored pixels can.

Pure functions over stored (preprocessed) image bytes; measured on Fashion-MNIST in
``benchmarks/leakage.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import scipy.fft
from PIL import Image, ImageFilter

from visionloop.preprocessing import decode_stored

SIDE = 32
BLUR = 1.0  # Gaussian radius at the stored size, coarse step
FINE_BLUR = 1.2  # Gaussian radius at the stored size, fine step
ZOOMS = (1.08, 1.17, 1.27)  # crops of 1, 2 or 3 pixels of a 28-pixel image
ANGLES = (3.0, -3.0, 6.0, -6.0)  # degrees
VARIANTS = 1 + len(ZOOMS) + len(ANGLES)  # plain, zooms, angles
MAX_SHIFT = 8  # thumbnail pixels, either way
MIN_OVERLAP = 0.7  # of the frame
COARSE_FLOOR = 0.98  # coarse score from which a pair gets the fine check
FINE_SHIFTS = (-0.5, 0.0, 0.5)  # stored pixels around the coarse shift
FINE_TURNS = (-1.5, 0.0, 1.5)  # degrees around the coarse rotation
_PADDED = SIDE + MAX_SHIFT  # no wrap-around within ±MAX_SHIFT
_FRAME = np.ones((SIDE, SIDE), np.float32)


@dataclass(frozen=True)
class Alignment:
    """How ``first`` best lies on ``second``: one of ``first``'s variants, moved by
    ``(dy, dx)`` thumbnail pixels; its coarse score."""

    score: float
    swapped: bool  # True: the images' roles are reversed
    variant: int
    dy: float
    dx: float


def thumbnails(grey: Image.Image) -> np.ndarray:
    """``(1 + zooms + angles, SIDE, SIDE)`` grey levels (uint8) of a :func:`blurred` stored
    image; row 0 is the plain one."""
    thumb = (SIDE, SIDE)
    rows = [_variant(grey, variant, (0,))[0] for variant in range(VARIANTS)]
    if grey.size != thumb:  # stored at another size
        rows = [row.resize(thumb, Image.Resampling.BILINEAR) for row in rows]
    pixels = np.frombuffer(b"".join(row.tobytes() for row in rows), np.uint8)
    return pixels.reshape(VARIANTS, SIDE, SIDE)


def plain_thumbnail(data: bytes) -> np.ndarray:
    """Row 0 of :func:`thumbnails` alone, as float32 grey levels in [0, 1]."""
    thumb = blurred(data).resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    return np.asarray(thumb).astype(np.float32) / 255


def blurred(data: bytes, radius: float = BLUR) -> Image.Image:
    """The stored image's grey levels, Gaussian-blurred by ``radius`` stored pixels."""
    return decode_stored(data).convert("L").filter(ImageFilter.GaussianBlur(radius))


def _variant(grey: Image.Image, variant: int, turns: Sequence[float]) -> list[Image.Image]:
    """Variant ``variant`` of :func:`thumbnails` (plain, zooms, angles) at the stored size,
    turned by each of ``turns`` (a zoom: the image alone)."""
    if 1 <= variant <= len(ZOOMS):
        size = grey.size[0]
        start = (size - size / ZOOMS[variant - 1]) / 2
        box = (start, start, size - start, size - start)
        return [grey.resize(grey.size, Image.Resampling.BICUBIC, box=box)]
    angle = ANGLES[variant - 1 - len(ZOOMS)] if variant else 0.0
    return [grey.rotate(angle + t, Image.Resampling.BICUBIC) if angle + t else grey for t in turns]


@dataclass(frozen=True)
class Prepared:
    """What the pair scores need of some images, computed once per image: the spectra of
    their variants, and the sums and energies of each variant (and of the plain thumbnail,
    as the other side) over the overlap at every shift."""

    spectra: np.ndarray  # (M, V, P, P // 2 + 1)
    sums: np.ndarray  # (M, V, P, P)
    spreads: np.ndarray  # (M, V, P, P): energy - sum**2 / overlap
    plain_sums: np.ndarray  # (M, P, P)
    plain_spreads: np.ndarray  # (M, P, P)


def prepare(thumbs: Sequence[np.ndarray]) -> Prepared:
    """:class:`Prepared` for each image's :func:`thumbnails`."""
    pixels = np.stack(thumbs).astype(np.float32) / 255
    spectra, squares = _spectrum(pixels), _spectrum(pixels * pixels)
    frame, overlap = _spectrum(_FRAME), _overlap()
    sums, energies = _correlate(spectra, frame), _correlate(squares, frame)
    plain_sums = _correlate(frame, spectra[:, 0])
    plain_energies = _correlate(frame, squares[:, 0])
    return Prepared(
        spectra,
        sums,
        energies - sums**2 / overlap,
        plain_sums,
        plain_energies - plain_sums**2 / overlap,
    )


def coarse_alignments(prepared: Prepared, a: Sequence[int], b: Sequence[int]) -> list[Alignment]:
    """The best coarse alignment of each pair of prepared images ``(a[i], b[i])``."""
    if not len(a):
        return []
    first, second = np.asarray(a), np.asarray(b)
    forward = _best_alignment(prepared, first, second)
    backward = _best_alignment(prepared, second, first)
    return [
        Alignment(float(f[0]), False, *f[1:])
        if f[0] >= g[0]
        else Alignment(float(g[0]), True, *g[1:])
        for f, g in zip(forward, backward, strict=True)
    ]


def fine_similarity(first: bytes, second: bytes, alignment: Alignment) -> float:
    """The masked NCC of two stored images at the stored resolution, at ``alignment`` and
    its neighbours (:data:`FINE_SHIFTS`, :data:`FINE_TURNS`): the best, in [-1, 1]."""
    moved, fixed = (second, first) if alignment.swapped else (first, second)
    target = np.asarray(blurred(fixed, FINE_BLUR), np.float32)
    scale = target.shape[0] / SIDE
    best = -1.0
    for image in _variant(blurred(moved, FINE_BLUR), alignment.variant, FINE_TURNS):
        for ddy in FINE_SHIFTS:
            for ddx in FINE_SHIFTS:
                shift = (alignment.dx * scale + ddx, alignment.dy * scale + ddy)
                best = max(best, _masked_ncc(image, target, shift))
    return best


def _masked_ncc(image: Image.Image, target: np.ndarray, shift: tuple[float, float]) -> float:
    """NCC of ``image`` sampled at ``x + shift`` with ``target`` at ``x``, over the overlap."""
    matrix = (1, 0, shift[0], 0, 1, shift[1])
    moved = image.transform(image.size, Image.Transform.AFFINE, matrix, Image.Resampling.BICUBIC)
    width, height = image.size
    columns = (np.arange(width) + shift[0] >= 0) & (np.arange(width) + shift[0] <= width - 1)
    rows = (np.arange(height) + shift[1] >= 0) & (np.arange(height) + shift[1] <= height - 1)
    inside = rows[:, None] & columns[None, :]
    if inside.mean() < MIN_OVERLAP:
        return -1.0
    u, w = np.asarray(moved, np.float32)[inside], target[inside]
    u, w = u - u.mean(), w - w.mean()
    return float(u @ w / np.sqrt(max(float((u @ u) * (w @ w)), 1e-12)))


def _spectrum(pixels: np.ndarray) -> np.ndarray:
    return scipy.fft.rfft2(pixels, s=(_PADDED, _PADDED), workers=-1)


def _correlate(f: np.ndarray, g: np.ndarray) -> np.ndarray:
    """``out[..., s] = sum_x a(x + s) b(x)`` from the spectra of ``a`` and ``b``."""
    return scipy.fft.irfft2(f * np.conj(g), s=(_PADDED, _PADDED), workers=-1)


def _best_alignment(prepared: Prepared, a: np.ndarray, b: np.ndarray) -> list[tuple]:
    """Per pair: the best masked NCC of image ``a[i]``'s variants against ``b[i]``'s plain
    thumbnail, as ``(score, variant, dy, dx)``."""
    p, overlap = prepared, _overlap()
    cross = _correlate(p.spectra[a], p.spectra[b, :1])
    centred = cross - p.sums[a] * p.plain_sums[b, None] / overlap
    spread = p.spreads[a] * p.plain_spreads[b, None]
    ncc = centred / np.sqrt(np.maximum(spread, 1e-12))
    return _refined_peak(np.where(overlap >= MIN_OVERLAP * SIDE * SIDE, ncc, -1.0))


@cache
def _overlap() -> np.ndarray:
    """Pixels of the two frames that overlap at each shift (at least 1)."""
    frame = _spectrum(_FRAME)
    return np.maximum(np.rint(_correlate(frame, frame)), 1.0)


def _refined_peak(ncc: np.ndarray) -> list[tuple]:
    """Each pair's highest value over (variant, shift) and where, refined by a parabola per
    axis: ``(score, variant, dy, dx)`` with the shift in thumbnail pixels."""
    pairs, shape = len(ncc), ncc.shape[1:]
    flat = ncc.reshape(pairs, -1)
    at = flat.argmax(axis=1)
    variant, y, x = np.unravel_index(at, shape)
    rows = np.arange(pairs)
    peak = flat[rows, at]
    gain, offsets = np.zeros(pairs), []
    for dy, dx in ((1, 0), (0, 1)):
        before = ncc[rows, variant, (y - dy) % _PADDED, (x - dx) % _PADDED]
        after = ncc[rows, variant, (y + dy) % _PADDED, (x + dx) % _PADDED]
        curvature = before - 2 * peak + after
        fits = (curvature < -1e-9) & (before > -1) & (after > -1)
        offset = np.where(fits, 0.5 * (before - after) / np.where(fits, curvature, -1.0), 0.0)
        gain += np.where(fits, -0.25 * (before - after) * offset, 0.0)
        offsets.append(offset)
    score = np.minimum(peak + gain, 1.0)
    wrapped = lambda index: np.where(index > _PADDED // 2, index - _PADDED, index)  # noqa: E731
    shift_y, shift_x = wrapped(y) + offsets[0], wrapped(x) + offsets[1]
    return [
        (float(score[i]), int(variant[i]), float(shift_y[i]), float(shift_x[i]))
        for i in range(pairs)
    ]
