"""Lineage of a model: the lake snapshot, the recipe and the code it was trained from.

A model's **training fingerprint** hashes the three things that decide what training
produces: the labelled training split (the snapshot's ``train_hash``), the recipe (training
settings, class list, preprocessing) and the code that turns them into a model (a hash of
the modules in :data:`TRAINING_CODE`, not of the whole package: editing CLI help or the
labelling client must not retrain). It is stored as a tag on the run and the registered
version, so a later run can tell whether training again could produce anything new.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.preprocessing import PREPROCESSING_VERSION, image_options
from visionloop.settings import REPO_ROOT, Settings
from visionloop.training.evaluate import metric_safe

TAG_VALUE_LIMIT = 5000
FINGERPRINT_TAG = "lineage.fingerprint"

#: The code that decides what model a training split and recipe become (a package stands
#: for every module under it). Chosen by what the model depends on:
#:
#: * ``visionloop.spark_jobs.preprocess_images`` and ``visionloop.preprocessing``: the
#:   ingest job and the one preprocessing function write the stored pixels a model trains on
#:   (``image_id`` hashes the original file, so the training split's hash cannot see them);
#: * ``visionloop.lake.contract``, ``.snapshot``, ``.label_events``, ``.label_map``: the
#:   table's meaning and which rows, with which effective labels and class order, a
#:   snapshot hands to training;
#: * ``visionloop.training``: model factory, transforms, lake reader, loop, schedule, DDP,
#:   checkpoints, the calibration and evaluation that are registered with the model.
#:
#: Left out on purpose: CLI, flows and tasks, settings (the recipe hashes their values),
#: registry and serving (they wrap a model, they do not make it), embeddings, monitoring,
#: labelling and quality (they decide whether to train, not what training makes).
TRAINING_CODE = (
    "visionloop.spark_jobs.preprocess_images",
    "visionloop.preprocessing",
    "visionloop.lake.contract",
    "visionloop.lake.snapshot",
    "visionloop.lake.label_events",
    "visionloop.lake.label_map",
    "visionloop.training",
)


def git_commit(repo: Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the code, or ``"unknown"``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def code_sources(
    modules: tuple[str, ...] = TRAINING_CODE, root: Path | None = None
) -> dict[str, Path]:
    """``key -> source file`` of the modules (a package: every ``.py`` under it).

    Found by import (wherever ``visionloop`` is installed), or under ``root`` laid out by
    module name (``root/visionloop/training/...``, ``root/visionloop/spark_jobs/...``).
    """
    sources: dict[str, Path] = {}
    for module in modules:
        path = _module_path(module, root)
        if path.name == "__init__.py":
            for file in sorted(path.parent.rglob("*.py")):
                if "__pycache__" not in file.parts:
                    sources[f"{module}/{file.relative_to(path.parent).as_posix()}"] = file
        else:
            sources[module] = path
    return sources


def _module_path(module: str, root: Path | None) -> Path:
    if root is None:
        spec = importlib.util.find_spec(module)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"training code module {module} is not importable")
        return Path(spec.origin)
    base = root.joinpath(*module.split("."))
    for path in (base / "__init__.py", base.with_suffix(".py")):
        if path.is_file():
            return path
    raise FileNotFoundError(f"training code module {module} is not under {root}")


def code_hash(sources: dict[str, Path] | None = None) -> str:
    """sha256 over the training code's sources (key and content): uncommitted edits count."""
    digest = hashlib.sha256()
    for key, path in sorted((sources or code_sources()).items()):
        digest.update(f"{key}\n".encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def recipe(settings: Settings) -> dict[str, Any]:
    """The settings that decide what training makes of a given training split."""
    return {
        "training": settings.training.model_dump(mode="json"),
        "classes": settings.classes,
        "preprocessing": {**image_options(settings).to_dict(), "version": PREPROCESSING_VERSION},
    }


def _sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


@dataclass(frozen=True)
class Fingerprint:
    """The three parts of a training fingerprint, and their combined hash."""

    train_hash: str
    recipe_hash: str
    code_hash: str

    @classmethod
    def of(cls, snapshot: LakeSnapshot, settings: Settings, code: str | None = None) -> Fingerprint:
        recipe_json = json.dumps(recipe(settings), sort_keys=True)
        return cls(snapshot.train_hash, _sha(recipe_json), code or code_hash())

    @property
    def value(self) -> str:
        return _sha(f"{self.train_hash}|{self.recipe_hash}|{self.code_hash}")[:32]

    def tags(self) -> dict[str, str]:
        return {
            FINGERPRINT_TAG: self.value,
            "lineage.train_hash": self.train_hash,
            "lineage.recipe_hash": self.recipe_hash,
            "lineage.code_hash": self.code_hash,
        }


def truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - 20] + f"...(+{len(value) - limit + 20})"


def lineage_tags(
    snapshot: LakeSnapshot,
    fingerprint: Fingerprint,
    expectations: dict[str, Any] | None,
    commit: str,
) -> dict[str, str]:
    """Flat run/version tags for the lineage of a model."""
    tags = {
        "git.commit": commit,
        "lineage.snapshot_id": snapshot.id,
        "lineage.batch_ids": ",".join(snapshot.batch_rows),
        "lineage.rows": str(snapshot.rows),
        "lineage.train_rows": str(snapshot.train_rows),
        "lineage.excluded_images": str(len(snapshot.excluded)),
        **fingerprint.tags(),
    }
    for split, counts in snapshot.split_counts.items():
        tags[f"lineage.rows.{split}"] = str(counts.labelled)
    if expectations is not None:
        tags["lineage.expectations.passed"] = str(bool(expectations.get("passed"))).lower()
        tags["lineage.expectations.overridden"] = str(bool(expectations.get("overridden"))).lower()
        for key, value in expectations.items():
            if key not in ("passed", "overridden") and isinstance(value, str | int | float | bool):
                tags[f"lineage.expectations.{metric_safe(str(key))}"] = str(value)
    return {key: truncate(value, TAG_VALUE_LIMIT) for key, value in tags.items()}
