"""The one preprocessing at serving time: a model sees what training decodes from the lake,
for an original file and for its stored copy, whichever storage format the lake uses."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.corpus import build_bad_corpus
from visionloop.preprocessing import (
    ImageOptions,
    Rejection,
    decode_stored,
    model_image,
    process_image_bytes,
)


@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_raw_and_stored_bytes_give_the_pixels_training_decodes(
    tmp_path: Path, image_format: str
) -> None:
    options = ImageOptions(size=32, image_format=image_format, jpeg_quality=80)
    build_bad_corpus(tmp_path)
    checked = 0
    for path in sorted(p for p in tmp_path.rglob("*") if p.is_file() and not p.is_symlink()):
        try:
            raw = path.read_bytes()
        except OSError:
            continue
        processed = process_image_bytes(raw, options)
        if isinstance(processed, Rejection):
            continue
        trained_on = np.asarray(decode_stored(processed.image))  # what the lake reader decodes
        assert np.array_equal(np.asarray(model_image(processed.image, options)), trained_on)
        assert np.array_equal(np.asarray(model_image(raw, options)), trained_on), path.name
        checked += 1
    assert checked >= 15


def test_a_stored_jpeg_preprocessed_again_would_change_its_pixels() -> None:
    """Why stored JPEGs are marked: one more encode (what serving did) moves the pixels."""
    rng = np.random.default_rng(0)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40, 24, 3), dtype=np.uint8)).save(buffer, "PNG")
    options = ImageOptions(size=32, image_format="JPEG", jpeg_quality=80)
    stored = process_image_bytes(buffer.getvalue(), options).image
    again = process_image_bytes(stored, options).image  # the old model_image path
    assert not np.array_equal(np.asarray(decode_stored(again)), np.asarray(decode_stored(stored)))
