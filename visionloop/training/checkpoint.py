"""Checkpoints: atomic writes, the resumable training state, RNG states, weight hashes.

``checkpoint-last.pt`` is replaced at the end of every epoch by writing a temporary file
and renaming it over the old one, so a kill at any moment leaves either the previous or
the new checkpoint, never a torn one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from visionloop.locks import holder_of, try_lock


class RunLockedError(RuntimeError):
    """Another live process is training into the same output directory."""


def lock_run(directory: Path) -> int:
    """Hold an exclusive lock on ``directory`` until this process exits (even by SIGKILL)."""
    descriptor = try_lock(directory / ".lock", f"training into {directory}")
    if descriptor is None:
        raise RunLockedError(
            f"another process is training into {directory} ({holder_of(directory / '.lock')}); "
            "wait for it or stop it first"
        )
    return descriptor


def atomic_write_bytes(path: Path, data: bytes) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as stream:
        stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def atomic_torch_save(obj: Any, path: Path) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as stream:
        torch.save(obj, stream)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)


def write_json(path: Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, default=str) + "\n")


@dataclass
class TrainState:
    """What, besides tensors, a resumed run must know."""

    epoch: int = 0  # last completed epoch (1-based); 0 before the first
    best_epoch: int = 0
    best_score: list[float] | None = None  # compared as a tuple; higher is better
    epochs_since_best: int = 0
    history: list[dict[str, float]] = field(default_factory=list)  # one metrics row per epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, value: Mapping[str, Any]) -> TrainState:
        return cls(**value)

    def record(self, row: dict[str, float], score: tuple[float, ...]) -> bool:
        """Add an epoch's metrics; returns whether it is the best so far."""
        self.history.append(row)
        self.epoch = int(row["epoch"])
        improved = self.best_score is None or score > tuple(self.best_score)
        if improved:
            self.best_epoch, self.best_score, self.epochs_since_best = self.epoch, list(score), 0
        else:
            self.epochs_since_best += 1
        return improved


def rng_state() -> dict[str, Any]:
    """Every RNG's state as tensors and plain values, so checkpoints load ``weights_only``."""
    version, internal, gauss = random.getstate()
    name, key, position, has_gauss, cached = np.random.get_state(legacy=True)
    state = {
        "python": [version, torch.tensor(internal, dtype=torch.int64), gauss],
        "numpy": [name, torch.from_numpy(key.astype(np.int64)), position, has_gauss, cached],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, key, position, has_gauss, cached = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def state_hash(state_dict: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in key order."""
    digest = hashlib.sha256()
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def load(path: Path) -> dict[str, Any]:
    """A checkpoint: tensors and plain values only (``weights_only``), never arbitrary pickles."""
    return torch.load(path, map_location="cpu", weights_only=True)
