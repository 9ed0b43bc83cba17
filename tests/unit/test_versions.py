"""Model outputs kept apart by version: a reader lists only its version's partitions."""

from __future__ import annotations

from pathlib import Path

from visionloop.lake.versions import version_files, version_key, versioned_batch_id


def _partition(lake: Path, table: str, batch_id: str) -> Path:
    path = lake / table / f"batch_id={batch_id}" / "part-0.parquet"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"")
    return path


def test_a_version_reads_its_own_partitions_and_the_unkeyed_ones(tmp_path: Path) -> None:
    mine = _partition(tmp_path, "predictions", versioned_batch_id("predictions", "3"))
    _partition(tmp_path, "predictions", versioned_batch_id("predictions", "4"))
    legacy = _partition(tmp_path, "predictions", "20261101T020000Z-predictions-1a2b3c")
    assert version_files(tmp_path, "predictions", "3") == sorted([mine, legacy])
    assert version_key("3") != version_key("4") and version_key("3").isalnum()
