"""Looking up a few images by id: their columns, with the effective label."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq

from tests.lakes import tiny_lake
from visionloop.lake.exclusions import exclude
from visionloop.lake.snapshot import take


def test_lookup_returns_the_asked_columns_of_the_asked_images_only(tmp_path: Path) -> None:
    settings = tiny_lake(tmp_path, labelled=80, unlabelled=10, row_group_rows=8)
    stored = pq.read_table(take(settings.lake_dir).paths[-1]).to_pylist()
    wanted = [stored[0], stored[-1]]
    exclude(settings, [wanted[0]["image_id"]], by="test", reason="lookup sees events")
    snapshot = take(settings.lake_dir)

    found = snapshot.lookup(
        [row["image_id"] for row in wanted] + ["no-such-id"], ["image", "label"]
    )
    assert set(found) == {row["image_id"] for row in wanted}
    for row in wanted:
        assert found[row["image_id"]]["image"] == row["image"]
    assert found[wanted[0]["image_id"]]["label"] is None  # excluded: the latest event decides
    assert found[wanted[1]["image_id"]]["label"] == wanted[1]["label"]
    assert snapshot.lookup([], ["image"]) == {}
    # The batch is the partition of the image's file, not a column of it.
    batches = snapshot.lookup([row["image_id"] for row in wanted], ["batch_id", "label"])
    batch = Path(snapshot.paths[-1]).parent.name.partition("=")[2]
    assert {found["batch_id"] for found in batches.values()} == {batch}
    assert batches[wanted[1]["image_id"]]["label"] == wanted[1]["label"]
