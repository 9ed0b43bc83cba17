"""Lineage of a model: the lake snapshot, the recipe and the code it was trained from.

A model's **training fingerprint** hashes the three things that decide what training
produces: the labelled training split (the snapshot's ``train_hash``), the recipe (training
settings, class list, preprocessing) and the code (a hash of the ``visionloop`` package
sources). It is stored as a tag on the run and the registered version, so a later run can
tell whether training again could produce anything new.
"""

from __future__ import annotations

import hashlib
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
PACKAGE_DIR = Path(__file__).resolve().parents[1]
FINGERPRINT_TAG = "lineage.fingerprint"


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


def code_hash(package: Path = PACKAGE_DIR) -> str:
    """sha256 over the package's Python sources (path and content): uncommitted edits count."""
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")):
        digest.update(f"{path.relative_to(package).as_posix()}\n".encode())
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
