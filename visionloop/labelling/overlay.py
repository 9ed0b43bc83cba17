"""A Grad-CAM overlay of the predicted class: where the model looked, for annotators.

Uses ``pytorch-grad-cam`` on the classifier's last convolution, on exactly the input the
model sees (the one model-input path), and blends the heat map over the stored image.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
from PIL import Image
from torch import nn

from visionloop.preprocessing import decode_stored
from visionloop.training.classifier import ImageClassifier


def last_convolution(model: nn.Module) -> nn.Module:
    convolutions = [module for module in model.modules() if isinstance(module, nn.Conv2d)]
    if not convolutions:
        raise ValueError(f"{type(model).__name__} has no convolution for Grad-CAM to look at")
    return convolutions[-1]


def overlays(classifier: ImageClassifier, images: Sequence[bytes]) -> list[bytes]:
    """PNG overlays (stored image size) of each image's predicted class."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if not images:
        return []
    batch = classifier.preprocess(list(images))
    predicted = classifier.predict_proba(list(images)).argmax(axis=1)
    with GradCAM(model=classifier.model, target_layers=[last_convolution(classifier.model)]) as cam:
        maps = cam(input_tensor=batch, targets=[ClassifierOutputTarget(int(c)) for c in predicted])
    rendered = []
    for data, heat in zip(images, maps, strict=True):
        base = decode_stored(data)
        heat = np.asarray(Image.fromarray(np.uint8(heat * 255)).resize(base.size)) / 255.0
        blended = show_cam_on_image(np.asarray(base, np.float32) / 255.0, heat, use_rgb=True)
        buffer = io.BytesIO()
        Image.fromarray(blended).save(buffer, "PNG")
        rendered.append(buffer.getvalue())
    return rendered
