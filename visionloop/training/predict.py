"""Inference on encoded images from a training checkpoint (``model.pt``).

The checkpoint is the dict the training step saves::

    {"model_name", "num_classes", "labels", "input_size", "mean", "std", "state_dict"}

Preprocessing is deliberately plain and deterministic: decode, convert to RGB, resize to
``input_size`` x ``input_size`` (bilinear, no crop), scale to [0, 1], normalise with
``mean``/``std``. It must match the training loop's evaluation transform.

This module imports nothing else from visionloop: it is shipped inside the logged MLflow
model (``code_paths``) together with :mod:`visionloop.training.pyfunc`.
"""

from __future__ import annotations

import base64
import binascii
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

ImageInput = bytes | bytearray | memoryview | str

CHECKPOINT_KEYS = ("model_name", "num_classes", "labels", "input_size", "mean", "std", "state_dict")


class ImageDecodeError(ValueError):
    """An input could not be decoded as an image."""


def image_bytes(value: Any) -> bytes:
    """Raw encoded bytes from bytes-like input or a base64 string (JSON serving sends those)."""
    if isinstance(value, bytes | bytearray | memoryview):
        return bytes(value)
    if isinstance(value, np.bytes_):
        return bytes(value)
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=False)
        except (binascii.Error, ValueError) as error:
            raise ImageDecodeError(f"image string is not valid base64: {error}") from error
    raise ImageDecodeError(
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


class ImageClassifier:
    """A timm classifier rebuilt from a checkpoint, with its preprocessing and labels."""

    def __init__(self, checkpoint: dict[str, Any], temperature: float = 1.0) -> None:
        import timm

        missing = [key for key in CHECKPOINT_KEYS if key not in checkpoint]
        if missing:
            raise ValueError(f"checkpoint lacks {missing}; expected keys {list(CHECKPOINT_KEYS)}")
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model_name: str = checkpoint["model_name"]
        self.labels: list[str] = [str(label) for label in checkpoint["labels"]]
        self.input_size: int = int(checkpoint["input_size"])
        self.temperature = float(temperature)
        if len(self.labels) != int(checkpoint["num_classes"]):
            raise ValueError(
                f"checkpoint has {len(self.labels)} labels but num_classes="
                f"{checkpoint['num_classes']}"
            )
        self._mean = np.asarray(checkpoint["mean"], dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(checkpoint["std"], dtype=np.float32).reshape(3, 1, 1)
        self.model = timm.create_model(
            self.model_name, num_classes=len(self.labels), pretrained=False
        )
        self.model.load_state_dict(checkpoint["state_dict"])
        self.model.eval()

    @classmethod
    def load(cls, path: Path | str, temperature: float = 1.0) -> ImageClassifier:
        """From a ``model.pt`` file (plain dict of str/int/lists/tensors: ``weights_only``)."""
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
        return cls(checkpoint, temperature=temperature)

    @classmethod
    def from_module(
        cls,
        model: torch.nn.Module,
        *,
        model_name: str,
        labels: Sequence[str],
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        temperature: float = 1.0,
    ) -> ImageClassifier:
        """Wrap an in-memory model (e.g. right after training) without a checkpoint round trip.

        The module is put in eval mode and used as is (same device as its parameters).
        """
        self = cls.__new__(cls)
        self.model_name = model_name
        self.labels = [str(label) for label in labels]
        self.input_size = int(input_size)
        self.temperature = float(temperature)
        self._mean = np.asarray(mean, dtype=np.float32).reshape(3, 1, 1)
        self._std = np.asarray(std, dtype=np.float32).reshape(3, 1, 1)
        self.model = model.eval()
        return self

    def preprocess_one(self, value: Any) -> np.ndarray:
        data = image_bytes(value)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image = image.convert("RGB")
                if image.size != (self.input_size, self.input_size):
                    image = image.resize(
                        (self.input_size, self.input_size), Image.Resampling.BILINEAR
                    )
                pixels = np.asarray(image, dtype=np.float32)
        except (OSError, SyntaxError, Image.DecompressionBombError) as error:
            raise ImageDecodeError(f"cannot decode image ({len(data)} bytes): {error}") from error
        chw = pixels.transpose(2, 0, 1) / 255.0
        return (chw - self._mean) / self._std

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        return torch.from_numpy(np.stack([self.preprocess_one(value) for value in images]))

    @torch.inference_mode()
    def logits(self, images: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Raw (uncalibrated) logits, shape (N, num_classes)."""
        device = next(self.model.parameters()).device
        chunks = [
            self.model(self.preprocess(batch).to(device)).float().cpu().numpy()
            for batch in batched(images, batch_size)
        ]
        if not chunks:
            return np.zeros((0, len(self.labels)), dtype=np.float32)
        return np.concatenate(chunks)

    def predict_proba(self, images: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / temperature)``, in label order."""
        logits = torch.from_numpy(self.logits(images, batch_size)) / self.temperature
        return torch.softmax(logits.double(), dim=1).numpy()
