"""Image transforms and batch mixing for training and evaluation.

Training uses timm's ``create_transform`` (random resized crop, flip, RandAugment);
evaluation is the plain deterministic pipeline that
:class:`~visionloop.training.classifier.ImageClassifier` applies at serving time after the
ingest preprocessing (bilinear resize to ``input_size``, no crop, normalise), so validation
numbers are the numbers the served model gets.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from PIL import Image
from timm.data import Mixup, create_transform
from torchvision import transforms as T

from visionloop.training.models import ModelSpec

#: Fraction of the image area a training crop keeps. timm's ImageNet default (0.08, 1) cuts
#: most of a small, centred object (a 28 px garment letterboxed to 64 px) out of the frame.
TRAIN_CROP_SCALE = (0.5, 1.0)

Transform = Callable[[Image.Image], torch.Tensor]


def train_transform(spec: ModelSpec, rand_augment: str | None) -> Transform:
    return create_transform(
        spec.input_size,
        is_training=True,
        scale=TRAIN_CROP_SCALE,
        auto_augment=rand_augment,
        interpolation="bilinear",
        mean=spec.mean,
        std=spec.std,
    )


def eval_transform(spec: ModelSpec) -> Transform:
    return T.Compose(
        [
            T.Resize((spec.input_size, spec.input_size), T.InterpolationMode.BILINEAR),
            T.ToTensor(),
            T.Normalize(spec.mean, spec.std),
        ]
    )


def mixup(
    mixup_alpha: float, cutmix_alpha: float, num_classes: int, batch_size: int
) -> Mixup | None:
    """timm's batch mixer, or None when both alphas are 0."""
    if mixup_alpha <= 0 and cutmix_alpha <= 0:
        return None
    if batch_size % 2:
        raise ValueError(f"mixup/cutmix need an even batch size, not {batch_size}")
    return Mixup(
        mixup_alpha=mixup_alpha,
        cutmix_alpha=cutmix_alpha,
        label_smoothing=0.0,
        num_classes=num_classes,
    )
