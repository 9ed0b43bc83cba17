"""Near-duplicate pairs: the pure pair finder and the pixel fingerprints it verifies with."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageEnhance

from tests.lakes import fashion_mnist
from visionloop.embeddings import fingerprints
from visionloop.embeddings.leakage import LEAKAGE, NEAR_DUPLICATE, find_pairs, summarise
from visionloop.preprocessing import ImageOptions, process_image_bytes

OPTIONS = ImageOptions(size=64, image_format="PNG")


def _stored(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return process_image_bytes(buffer.getvalue(), OPTIONS).image


def test_pairs_above_the_threshold_once_each_with_their_kind() -> None:
    scores = {frozenset(("a", "b")): 0.99, frozenset(("a", "c")): 0.5, frozenset(("b", "d")): 0.98}
    splits = {"a": "train", "b": "test", "c": "train", "d": "test"}
    pairs = find_pairs(
        ["a", "b"],
        [{"b", "c", "a"}, {"a", "d"}],
        lambda x, y: scores[frozenset((x, y))],
        splits,
        threshold=0.95,
    )
    assert [(p.image_a, p.image_b, p.kind) for p in pairs] == [
        ("a", "b", LEAKAGE),
        ("b", "d", NEAR_DUPLICATE),
    ]
    summary = summarise(["a", "b", "e"], pairs)
    assert (summary.images, summary.leaked_images, summary.leakage_rate) == (3, 2, 2 / 3)
    assert (summary.leakage_pairs, summary.near_duplicate_pairs) == (1, 1)


def test_fingerprints_see_through_resizing_jpeg_brightness_and_crops() -> None:
    pixels, _ = fashion_mnist(40)
    originals = [Image.fromarray(image).convert("RGB") for image in pixels]
    for number, image in enumerate(originals[:10]):
        source = fingerprints.variants(_stored(image))
        copies = {
            "resized": _stored(image.resize((56, 56))),
            "jpeg": _stored(image, "JPEG", quality=20),
            "brightened": _stored(ImageEnhance.Brightness(image).enhance(1.3)),
            "cropped": _stored(image.crop((2, 2, 26, 26))),
        }
        for name, copy in copies.items():
            score = fingerprints.similarity(source, fingerprints.variants(copy))
            assert score >= 0.99, (number, name, score)
    others = [fingerprints.variants(_stored(image)) for image in originals[10:]]
    distinct = fingerprints.best_matches(others[:10], others[10:])
    assert np.median(distinct) < 0.9  # different garments are far apart
