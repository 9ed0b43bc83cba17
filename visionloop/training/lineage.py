"""Lineage of a model: what lake snapshot, checks and code it was trained from.

Reads only the ``image_id``, ``label`` and ``split`` columns of the images table.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.settings import REPO_ROOT
from visionloop.training.evaluate import images_files, metric_safe

TAG_VALUE_LIMIT = 5000


def git_commit(repo: Path = REPO_ROOT) -> str:
    """``git rev-parse HEAD`` of the code, or ``"unknown"``."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=repo,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    commit = result.stdout.strip()
    return commit if result.returncode == 0 and commit else "unknown"


def _scan(images_dir: Path, with_pairs: bool) -> dict[str, Any]:
    """Row counts per batch and per split (labelled/unlabelled), and the train pairs."""
    batches: dict[str, int] = {}
    splits: dict[str, dict[str, int]] = {}
    pairs: list[tuple[str, str]] = []
    columns = ["split", "label"] + (["image_id"] if with_pairs else [])
    for path in images_files(images_dir):
        batch_id = path.parent.name.partition("=")[2]
        parquet = pq.ParquetFile(path)
        batches[batch_id] = batches.get(batch_id, 0) + parquet.metadata.num_rows
        for batch in parquet.iter_batches(columns=columns):
            split = batch.column("split")
            labelled = pc.is_valid(batch.column("label"))
            counts = (
                pa.table({"split": split, "labelled": labelled})
                .group_by(["split", "labelled"])
                .aggregate([([], "count_all")])
            )
            for row in counts.to_pylist():
                entry = splits.setdefault(str(row["split"]), {"labelled": 0, "unlabelled": 0})
                entry["labelled" if row["labelled"] else "unlabelled"] += row["count_all"]
            if with_pairs:
                mask = pc.and_(pc.fill_null(pc.equal(split, "train"), False), labelled)
                ids = batch.column("image_id").filter(mask).to_pylist()
                labels = batch.column("label").filter(mask).to_pylist()
                pairs.extend(zip(ids, labels, strict=True))
    return {"batches": batches, "splits": splits, "pairs": pairs}


def _pairs_hash(pairs: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256()
    for image_id, label in sorted(pairs):
        digest.update(f"{image_id}\t{label}\n".encode())
    return digest.hexdigest()


def training_split_hash(images_dir: Path) -> str:
    """sha256 over the sorted ``image_id<TAB>label`` lines of the labelled train rows.

    Reads only the ``image_id``, ``label`` and ``split`` columns.
    """
    return _pairs_hash(_scan(images_dir, with_pairs=True)["pairs"])


def lake_snapshot(images_dir: Path) -> dict[str, Any]:
    """What a model was trained on: batch ids, row counts, the train split's content hash."""
    scan = _scan(images_dir, with_pairs=True)
    splits = scan["splits"]
    return {
        "images_dir": str(images_dir),
        "batch_ids": sorted(scan["batches"]),
        "batch_rows": dict(sorted(scan["batches"].items())),
        "rows": sum(scan["batches"].values()),
        "split_rows": {name: splits[name] for name in sorted(splits)},
        "train_rows": len(scan["pairs"]),
        "train_hash": _pairs_hash(scan["pairs"]),
    }


def truncate(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - 20] + f"...(+{len(value) - limit + 20})"


def lineage_tags(
    snapshot: dict[str, Any] | None, expectations: dict[str, Any] | None, commit: str
) -> dict[str, str]:
    """Flat run/version tags for the lineage of a model."""
    tags = {"git.commit": commit}
    if snapshot:
        tags["lineage.batch_ids"] = ",".join(snapshot.get("batch_ids", []))
        tags["lineage.rows"] = str(snapshot.get("rows", ""))
        tags["lineage.train_rows"] = str(snapshot.get("train_rows", ""))
        tags["lineage.train_hash"] = str(snapshot.get("train_hash", ""))
        for split, counts in snapshot.get("split_rows", {}).items():
            tags[f"lineage.rows.{split}"] = str(counts.get("labelled", 0))
    if expectations is not None:
        tags["lineage.expectations.passed"] = str(bool(expectations.get("passed"))).lower()
        tags["lineage.expectations.overridden"] = str(bool(expectations.get("overridden"))).lower()
        for key, value in expectations.items():
            if key not in ("passed", "overridden") and isinstance(value, str | int | float | bool):
                tags[f"lineage.expectations.{metric_safe(str(key))}"] = str(value)
    return {key: truncate(value, TAG_VALUE_LIMIT) for key, value in tags.items()}
