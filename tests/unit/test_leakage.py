"""Near-duplicate pairs: the pure pair finder and the pixel fingerprints it verifies with."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from tests.lakes import fashion_mnist, stored_image
from visionloop.embeddings import fingerprints, verify
from visionloop.embeddings.leakage import LEAKAGE, NEAR_DUPLICATE, Pair, summarise
from visionloop.settings import LeakageSettings


def test_a_pair_across_splits_is_leakage_and_the_summary_counts_checked_images_once() -> None:
    pairs = [Pair("a", "b", "train", "test", 0.99), Pair("b", "d", "test", "test", 0.98)]
    assert [p.kind for p in pairs] == [LEAKAGE, NEAR_DUPLICATE]
    summary = summarise(["a", "b", "e"], pairs)
    assert (summary.images, summary.leaked_images, summary.leakage_rate) == (3, 2, 2 / 3)
    assert (summary.leakage_pairs, summary.near_duplicate_pairs) == (1, 1)


def test_verification_finds_each_copy_once_in_chunks_and_no_distinct_pair(monkeypatch) -> None:
    """Queries with copies among many candidates (each query also a candidate of the other):
    the same pairs whatever the chunk sizes, once each, the fine check capped per query."""
    pixels, _ = fashion_mnist(60)
    originals = [Image.fromarray(image).convert("RGB") for image in pixels]
    images = {f"o{n}": stored_image(image) for n, image in enumerate(originals)}
    shifted = originals[0].transform((28, 28), Image.Transform.AFFINE, (1, 0, -2, 0, 1, 0))
    copies = {
        "q-crop": stored_image(originals[1].crop((2, 2, 26, 26))),
        "q-shift": stored_image(shifted),
    }
    images |= copies
    everything = frozenset(images)
    candidates = [verify.Candidates(everything, everything) for _ in copies]
    settings = LeakageSettings(fine_checks=2)

    def found() -> list[tuple[str, str]]:
        pairs = verify.verified_pairs(list(copies), candidates, images, settings)
        return [(pair.a, pair.b) for pair in pairs]

    whole = found()
    assert sorted(whole) == [("o0", "q-shift"), ("o1", "q-crop")]
    for name, size in (("CHUNK", 7), ("ALIGNED_CHUNK", 5), ("PAIRS_CHUNK", 3)):
        monkeypatch.setattr(verify, name, size)
    assert found() == whole


def test_fingerprints_see_through_resizing_jpeg_brightness_and_crops() -> None:
    pixels, _ = fashion_mnist(40)
    originals = [Image.fromarray(image).convert("RGB") for image in pixels]
    for number, image in enumerate(originals[:10]):
        source = fingerprints.variants(stored_image(image))
        copies = {
            "resized": stored_image(image.resize((56, 56))),
            "jpeg": stored_image(image, "JPEG", quality=20),
            "brightened": stored_image(ImageEnhance.Brightness(image).enhance(1.3)),
            "cropped": stored_image(image.crop((2, 2, 26, 26))),
        }
        for name, copy in copies.items():
            score = fingerprints.similarity(source, fingerprints.variants(copy))
            assert score >= 0.99, (number, name, score)
    others = [fingerprints.variants(stored_image(image)) for image in originals[10:]]
    pairs = [(a, b) for a in others[:10] for b in others[10:]]
    distinct = fingerprints.similarities(*map(np.stack, zip(*pairs, strict=True)))
    assert np.median(distinct) < 0.9  # different garments are far apart
