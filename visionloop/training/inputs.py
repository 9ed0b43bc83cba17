"""Encoded images to the normalised batch a model takes: one path for every model input.

Each image goes through :func:`visionloop.preprocessing.model_image` (the ingest
preprocessing; the lake's stored bytes pass through unchanged) and then the evaluation
transform training validates with. The classifier, the embedder, evaluation, calibration,
batch scoring and the served model all use it.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from visionloop.preprocessing import ImageOptions, model_image
from visionloop.training.loop import Precision
from visionloop.training.models import ModelSpec
from visionloop.training.transforms import eval_transform


class ImageInputError(ValueError):
    """An input is not encoded image bytes (or base64 of them)."""


def image_bytes(value: Any) -> bytes:
    """Raw encoded bytes from bytes-like input or a base64 string (JSON serving sends those)."""
    if isinstance(value, bytes | bytearray | memoryview | np.bytes_):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as error:
            raise ImageInputError(f"image string is not valid base64: {error}") from error
    raise ImageInputError(
        f"expected encoded image bytes or a base64 string, got {type(value).__name__}"
    )


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


class ModelInputs:
    """The preprocessing of one model: its spec (size, mean, std) and the ingest options."""

    def __init__(self, spec: ModelSpec, options: ImageOptions) -> None:
        self.spec, self.options = spec, options
        self._transform = eval_transform(spec)

    def tensor(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.stack(
            [self._transform(model_image(image_bytes(value), self.options)) for value in images]
        )


@torch.inference_mode()
def run_batches(
    model: nn.Module, inputs: ModelInputs, images: Iterable[Any], batch_size: int
) -> np.ndarray | None:
    """``model`` over ``images`` in batches, float32 numpy out (None for no images).

    On CUDA: bf16 autocast and channels_last, as in training.
    """
    precision = Precision(next(model.parameters()).device)
    chunks = []
    for batch in batched(images, batch_size):
        tensor = inputs.tensor(batch).to(precision.device)
        if precision.channels_last:
            tensor = tensor.contiguous(memory_format=torch.channels_last)
        with precision.autocast():
            chunks.append(model(tensor).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else None
