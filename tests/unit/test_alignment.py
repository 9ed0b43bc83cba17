"""Shifted and rotated copies: the aligned similarity and the shift-invariant search key."""

from __future__ import annotations

import numpy as np
from PIL import Image

from tests.lakes import fashion_mnist, stored_image
from visionloop.embeddings import alignment, fingerprints
from visionloop.settings import LeakageSettings

THRESHOLD = LeakageSettings().aligned_threshold


def _shifted(image: Image.Image, dx: int, dy: int) -> bytes:
    return stored_image(image.transform(image.size, Image.Transform.AFFINE, (1, 0, -dx, 0, 1, -dy)))


def _scores(copies: list[bytes], originals: list[bytes]) -> np.ndarray:
    """The fine similarity at the coarse alignment (-1 below the coarse floor)."""
    thumbs = [alignment.thumbnails(alignment.blurred(data)) for data in copies + originals]
    n = len(copies)
    found = alignment.coarse_alignments(alignment.prepare(thumbs), range(n), range(n, 2 * n))
    return np.array(
        [
            alignment.fine_similarity(copy, original, coarse)
            if coarse.score >= alignment.COARSE_FLOOR
            else -1.0
            for copy, original, coarse in zip(copies, originals, found, strict=True)
        ]
    )


def test_copies_shifted_by_two_pixels_or_rotated_three_degrees_match_their_originals() -> None:
    pixels, _ = fashion_mnist(20)
    images = [Image.fromarray(image).convert("RGB") for image in pixels]
    originals = [stored_image(image) for image in images]
    shifted = [_shifted(image, 2, -2 if n % 2 else 2) for n, image in enumerate(images)]
    rotated = [
        stored_image(image.rotate(3 if n % 2 else -3, Image.Resampling.BILINEAR))
        for n, image in enumerate(images)
    ]
    # the fixed-position fingerprint misses them: the reason the aligned check exists
    fixed = [
        fingerprints.similarity(fingerprints.variants(a), fingerprints.variants(b))
        for a, b in zip(shifted, originals, strict=True)
    ]
    assert np.mean(np.array(fixed) >= LeakageSettings().threshold) < 0.5
    assert np.mean(_scores(shifted, originals) >= THRESHOLD) >= 0.8
    assert np.mean(_scores(rotated, originals) >= THRESHOLD) >= 0.8
    distinct = _scores(originals[:10], originals[10:])
    assert (distinct < THRESHOLD).all()


def test_the_stored_search_key_barely_moves_when_the_picture_shifts() -> None:
    pixels, _ = fashion_mnist(30)
    images = [Image.fromarray(image).convert("RGB") for image in pixels]
    keys = np.stack([fingerprints.spectrum(stored_image(image)) for image in images])
    shifted = np.stack([fingerprints.spectrum(_shifted(image, 3, 1)) for image in images[:10]])
    assert keys.shape[1] == fingerprints.SPECTRUM_SIZE
    nearest = (shifted @ keys.T).argmax(axis=1)
    assert (nearest == np.arange(10)).mean() >= 0.9
