"""The MLflow pyfunc that serves a visionloop classifier.

Contract: input is a pandas DataFrame with a column ``image`` holding encoded image bytes
(PNG/JPEG; a base64 ``str`` is accepted too, since JSON serving sends strings). Output is a
DataFrame with ``label`` (str), ``probabilities`` (list of floats in label order, after the
fitted temperature) and ``confidence`` (the top probability).

Artifacts: ``model_pt`` (the training checkpoint) and ``config`` (a small JSON with the
temperature and labels). This module and :mod:`visionloop.training.predict` are logged as
``code_paths``, so ``mlflow.pyfunc.load_model`` works in a fresh process that only has the
third-party stack (torch, timm, pillow, pandas, mlflow) installed.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from visionloop.training.predict import ImageClassifier

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "probabilities", "confidence")
MODEL_PT_ARTIFACT = "model_pt"
CONFIG_ARTIFACT = "config"


def write_config(path: Path, *, temperature: float, labels: list[str], **extra: Any) -> Path:
    """The JSON config artifact the pyfunc reads at load time."""
    path.write_text(
        json.dumps({"temperature": float(temperature), "labels": list(labels), **extra}, indent=2)
    )
    return path


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Images in, label + calibrated probabilities out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        self.classifier = ImageClassifier.load(
            context.artifacts[MODEL_PT_ARTIFACT], temperature=float(config["temperature"])
        )
        if config.get("labels") and list(config["labels"]) != self.classifier.labels:
            raise ValueError(
                f"config labels {config['labels']} disagree with the checkpoint's "
                f"{self.classifier.labels}"
            )
        self.config = config

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

    def predict_proba(self, images: list[Any]) -> np.ndarray:
        return self.classifier.predict_proba(images)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame(IMAGE_COLUMN)
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input:
            columns = list(getattr(model_input, "columns", []))
            raise ValueError(
                f"expected a DataFrame with an '{IMAGE_COLUMN}' column of encoded image bytes "
                f"(or base64 strings), got columns {columns}"
            )
        probabilities = self.predict_proba(list(model_input[IMAGE_COLUMN]))
        if not len(probabilities):
            return pd.DataFrame({name: [] for name in OUTPUT_COLUMNS})
        top = probabilities.argmax(axis=1)
        labels = self.classifier.labels
        return pd.DataFrame(
            {
                "label": [labels[index] for index in top],
                "probabilities": [row.tolist() for row in probabilities],
                "confidence": probabilities.max(axis=1).astype(float),
            },
            index=model_input.index,
        )
