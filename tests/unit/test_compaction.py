"""Compaction and retention on real Parquet partitions, beside a reader that listed before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.lake.compaction import maintain
from visionloop.lake.snapshot import list_table
from visionloop.lake.versions import versioned_batch_id
from visionloop.settings import load_settings

NOW = datetime(2026, 12, 2, 2, 0, tzinfo=UTC)


def _write(lake: Path, table: str, batch_id: str, ids: list[str], version: str = "") -> None:
    folder = lake / table / f"batch_id={batch_id}"
    folder.mkdir(parents=True)
    rows = {"image_id": ids, "model_version": [version] * len(ids)}
    pq.write_table(pa.table(rows), folder / f"part-00000-{batch_id}.parquet")


def _rows(files: list[Path]) -> list[tuple[str, str]]:
    table = pa.concat_tables(pq.read_table(path) for path in files)
    ids, versions = table["image_id"].to_pylist(), table["model_version"].to_pylist()
    return sorted(zip(ids, versions, strict=True))


def test_small_partitions_merge_old_versions_retire_and_readers_keep_their_files(
    tmp_path: Path,
) -> None:
    settings = load_settings(
        data_home=tmp_path, lake_maintenance={"min_files": 3, "retention_days": 1}
    )
    lake = settings.lake_dir
    for night in range(4):
        stamp = NOW - timedelta(days=4 - night)
        for version in ("1", "2"):
            batch = versioned_batch_id("predictions", version, stamp)
            _write(
                lake, "predictions", batch, [f"{version}-{night}-{i}" for i in range(3)], version
            )
        _write(lake, "arrivals", f"{stamp:%Y%m%dT%H%M%SZ}-{night}", [f"file-{night}"])
    listed = list_table(lake, "predictions")
    before = _rows(listed)

    results = {r.table: r for r in maintain(settings, {"predictions": {"2"}}, now=NOW)}
    assert (results["predictions"].partitions_before, results["predictions"].retired) == (8, 4)
    assert results["predictions"].partitions_after == 1  # version 2's four nights, merged
    assert results["arrivals"].partitions_after == 1
    after = list_table(lake, "predictions")
    assert _rows(after) == [row for row in before if row[1] == "2"]
    assert _rows(listed) == before  # a reader that listed before still reads its files
    assert _rows(list_table(lake, "arrivals")) == [(f"file-{n}", "") for n in range(4)]

    later = {
        r.table: r for r in maintain(settings, {"predictions": {"2"}}, now=NOW + timedelta(days=2))
    }
    assert later["predictions"].removed == 8 and not any(path.exists() for path in listed)
    assert list_table(lake, "predictions") == after
    assert _rows(after) == [row for row in before if row[1] == "2"]
