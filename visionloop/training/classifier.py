"""A trained classifier with its preprocessing: encoded images in, logits or probabilities out.

Built from the ``model.pt`` the training entry point writes (a plain dict, loaded with
``weights_only=True``)::

    {"model_name", "labels", "input_size", "mean", "std", "image_options", "state_dict"}

Every image goes through :class:`~visionloop.training.inputs.ModelInputs` — the ingest
preprocessing, then the evaluation transform training validates with — so an original
photo and its stored copy in the lake give the same probabilities. Evaluation, calibration,
the served MLflow model and batch scoring all predict through this class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from visionloop.preprocessing import ImageOptions
from visionloop.training.inputs import ModelInputs, run_batches
from visionloop.training.models import ModelSpec, create_model

CHECKPOINT_KEYS = ("model_name", "labels", "input_size", "mean", "std", "image_options")


class ImageClassifier:
    """A timm model, its label list, its preprocessing and a softmax temperature."""

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        options: ImageOptions,
        temperature: float = 1.0,
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}")
        self.model = model.eval()
        self.spec = spec
        self.options = options
        self.temperature = float(temperature)
        self.inputs = ModelInputs(spec, options)

    @classmethod
    def load(cls, path: Path | str, temperature: float = 1.0) -> ImageClassifier:
        """From a ``model.pt`` file (tensors and plain values only)."""
        checkpoint = torch.load(Path(path), map_location="cpu", weights_only=True)
        missing = [key for key in (*CHECKPOINT_KEYS, "state_dict") if key not in checkpoint]
        if missing:
            raise ValueError(f"{path} lacks {missing}; it is not a visionloop model.pt")
        spec = ModelSpec(
            checkpoint["model_name"],
            tuple(str(label) for label in checkpoint["labels"]),
            int(checkpoint["input_size"]),
            tuple(checkpoint["mean"]),
            tuple(checkpoint["std"]),
        )
        model = create_model(spec.model_name, spec.num_classes)
        model.load_state_dict(checkpoint["state_dict"])
        return cls(model, spec, ImageOptions(**checkpoint["image_options"]), temperature)

    @property
    def labels(self) -> list[str]:
        return list(self.spec.labels)

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """A normalised batch tensor from encoded images (see the module docstring)."""
        return self.inputs.tensor(images)

    def logits(self, images: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Raw (uncalibrated) logits, shape (N, num_classes)."""
        logits = run_batches(self.model, self.inputs, images, batch_size)
        if logits is None:
            return np.zeros((0, self.spec.num_classes), dtype=np.float32)
        return logits

    def predict_proba(self, images: Iterable[Any], batch_size: int = 64) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / temperature)``, in label order."""
        logits = torch.from_numpy(self.logits(images, batch_size)).double() / self.temperature
        return torch.softmax(logits, dim=1).numpy()
