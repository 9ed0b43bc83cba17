"""The files handed to Label Studio: what it is given is what it can show."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from visionloop.labelling.handoff import (
    LABEL_STUDIO_MIN_IMAGE_BYTES,
    Selected,
    choices,
    servable,
    task,
)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_tiny_png_is_padded_and_still_decodes_to_the_same_pixels() -> None:
    blank = _png(np.zeros((32, 32, 3), np.uint8))
    assert len(blank) < LABEL_STUDIO_MIN_IMAGE_BYTES
    padded = servable(blank)
    assert len(padded) >= LABEL_STUDIO_MIN_IMAGE_BYTES
    decoded = Image.open(io.BytesIO(padded))
    decoded.load()  # verifies every chunk's CRC
    assert np.array_equal(np.asarray(decoded), np.zeros((32, 32, 3), np.uint8))


def test_an_ordinary_image_is_served_unchanged() -> None:
    noisy = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert servable(noisy) == noisy


def test_a_task_names_jpeg_bytes_as_jpeg_and_carries_the_prediction() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    item = Selected("abc", buffer.getvalue(), b"\x89PNG...", "bag", 0.7)
    entry = task(item, "visionloop", "3")
    assert entry["data"]["image"].endswith("/images/abc.jpg")
    assert entry["data"]["overlay"].endswith("/overlays/3/abc.png")
    (prediction,) = entry["predictions"]
    assert prediction["model_version"] == "3" and prediction["score"] == 0.7
    assert prediction["result"][0]["value"]["choices"] == ["bag"]


def test_classes_the_data_team_adds_join_the_models_choices_in_order() -> None:
    model = ["t-shirt", "trouser"]
    assert choices(model, None) == model
    assert choices(model, ["trouser", "scarf", "t-shirt", "hat"]) == [*model, "scarf", "hat"]
