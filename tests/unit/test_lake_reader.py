"""The lake reader: exact DDP x worker sharding, per-epoch order, bounded memory."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.lakes import tiny_lake
from visionloop.lake.snapshot import take
from visionloop.training.lake_reader import (
    LakeDataset,
    LakeIndex,
    LakeReadError,
    make_loader,
    rank_counts,
)
from visionloop.training.models import ModelSpec
from visionloop.training.transforms import eval_transform, train_transform

SIZE = 16


@pytest.fixture(scope="module")
def lake(tmp_path_factory: pytest.TempPathFactory) -> tuple[LakeIndex, pa.Table]:
    """~360 rows (60 unlabelled) in 2 batches x 2 files, row groups of 25 rows."""
    settings = tiny_lake(
        tmp_path_factory.mktemp("lake"), labelled=300, unlabelled=60, size=SIZE, row_group_rows=25
    )
    snapshot = take(settings.lake_dir)
    # The whole table, read here only to check the reader against it (tests only).
    table = pa.concat_tables(
        pq.read_table(path, columns=["image_id", "label", "split"]) for path in snapshot.paths
    )
    return LakeIndex.scan(snapshot), table


def _spec(index: LakeIndex) -> ModelSpec:
    return ModelSpec("resnet10t", index.labels, SIZE, (0.5,) * 3, (0.5,) * 3)


def _dataset(index: LakeIndex, split: str = "train", **options: object) -> LakeDataset:
    options = {"batch_size": 8, **options}
    return LakeDataset(index, split, eval_transform(_spec(index)), **options)  # type: ignore[arg-type]


def _read(dataset: LakeDataset, workers: int) -> tuple[list[int], list[bool], int]:
    """Rows, pad flags and the number of batches one rank's DataLoader yields."""
    rows, pads, batches = [], [], 0
    for batch in make_loader(dataset, workers):
        rows += batch.row.tolist()
        pads += batch.pad.tolist()
        batches += 1
    return rows, pads, batches


def test_index_holds_exactly_the_labelled_rows_of_each_split(lake) -> None:
    index, table = lake
    labels = table.column("label").to_pylist()
    splits = table.column("split").to_pylist()
    assert index.group_offset[-1] == table.num_rows
    assert index.num_groups > 12  # several files, several bounded row groups each
    for split in ("train", "val", "test"):
        expected = [
            i for i, (lb, sp) in enumerate(zip(labels, splits, strict=True)) if lb and sp == split
        ]
        assert index.split_rows[split].tolist() == expected
        assert [index.labels[t] for t in index.split_targets[split]] == [
            labels[i] for i in expected
        ]
    assert sum(index.count(s) for s in ("train", "val", "test")) == 300


@pytest.mark.parametrize("world_size,workers", [(2, 2), (3, 1)])
def test_ranks_and_workers_partition_a_split_exactly(lake, world_size, workers) -> None:
    index, table = lake
    labels = table.column("label").to_pylist()
    for split in ("train", "val"):
        seen, per_rank = [], set()
        for rank in range(world_size):
            dataset = _dataset(
                index, split, rank=rank, world_size=world_size, shuffle=True, window=3, seed=7
            )
            rows, pads, batches = _read(dataset, workers)
            assert batches == dataset.batches
            per_rank.add((len(rows), batches))
            seen += [row for row, pad in zip(rows, pads, strict=True) if not pad]
        assert len(per_rank) == 1  # same samples and batches on every rank: no DDP hang
        assert sorted(seen) == index.split_rows[split].tolist()  # no overlap, nothing lost
        assert all(labels[row] is not None for row in seen)  # the unlabelled pool never shows


def test_drop_last_gives_every_rank_the_same_full_batches_without_overlap(lake) -> None:
    index, _ = lake
    total = index.count("train")
    seen = []
    for rank in range(3):
        dataset = _dataset(index, rank=rank, world_size=3, shuffle=True, drop_last=True)
        rows, pads, batches = _read(dataset, workers=2)
        assert batches == total // 3 // 8 and len(rows) == batches * 8 and not any(pads)
        seen += rows
    assert len(set(seen)) == len(seen)
    assert set(seen) <= set(index.split_rows["train"].tolist())


def test_max_batches_caps_every_rank_alike(lake) -> None:
    index, _ = lake
    for rank in range(2):
        dataset = _dataset(index, rank=rank, world_size=2, drop_last=True, max_batches=3)
        assert _read(dataset, workers=2)[2] == 3


def test_order_is_a_function_of_seed_and_epoch(lake) -> None:
    index, _ = lake

    def order(seed: int, epoch: int) -> list[int]:
        dataset = _dataset(index, shuffle=True, seed=seed, window=2)
        dataset.set_epoch(epoch)
        rows, _, _ = _read(dataset, workers=2)
        return rows

    first = order(seed=1, epoch=0)
    assert order(seed=1, epoch=0) == first
    assert sorted(first) == index.split_rows["train"].tolist()
    assert order(seed=1, epoch=1) != first
    assert order(seed=2, epoch=0) != first


def test_persistent_workers_follow_set_epoch_and_repeat_augmentations(lake) -> None:
    """One loader for the whole run: its workers see each epoch and reseed per epoch."""
    index, _ = lake
    transform = train_transform(_spec(index), "rand-m9-n2-mstd0.5")

    def dataset() -> LakeDataset:
        return LakeDataset(index, "train", transform, batch_size=8, shuffle=True, seed=5)

    def epoch(loader, data: LakeDataset, number: int) -> tuple[list[int], torch.Tensor]:
        data.set_epoch(number)
        batches = list(loader)
        rows = torch.cat([b.row for b in batches]).tolist()
        return rows, torch.cat([b.image for b in batches])

    data = dataset()
    loader = make_loader(data, num_workers=2)
    rows0, images0 = epoch(loader, data, 0)
    rows1, images1 = epoch(loader, data, 1)
    again_rows0, again_images0 = epoch(loader, data, 0)
    assert rows1 != rows0 and again_rows0 == rows0
    assert torch.equal(again_images0, images0)  # same augmentations for the same epoch
    fresh = dataset()
    fresh_rows1, fresh_images1 = epoch(make_loader(fresh, num_workers=2), fresh, 1)
    assert fresh_rows1 == rows1 and torch.equal(fresh_images1, images1)  # as after a resume


def test_worker_count_does_not_change_the_batches(lake) -> None:
    index, _ = lake
    dataset = _dataset(index, shuffle=True, seed=3)
    by_batch = {w: _read(dataset, workers=w)[0] for w in (0, 1)}
    assert by_batch[0] == by_batch[1]
    # two workers deal whole batches in contiguous blocks: same batches, interleaved
    two = _read(dataset, workers=2)[0]
    assert sorted(two) == sorted(by_batch[0])


def test_reading_holds_at_most_a_window_of_row_groups(tmp_path: Path) -> None:
    """The reader's own count, and pyarrow's memory pool, where a materialised table must live.

    1600 rows of 64 px images in 32 row groups (~150 KB of encoded images each). The pool
    also sees the Parquet reader's transient buffers (a few hundred KB, freed
    asynchronously, more under CPU load), so its peak is held to a third of the table:
    far below a materialised table, with room for those buffers.
    """
    settings = tiny_lake(tmp_path, labelled=1600, unlabelled=0, size=64, row_group_rows=50)
    index = LakeIndex.scan(take(settings.lake_dir))
    table_bytes = sum(pq.ParquetFile(path).read(columns=["image"]).nbytes for path in index.files)
    assert index.num_groups >= 32
    spec = ModelSpec("resnet10t", index.labels, 64, (0.5,) * 3, (0.5,) * 3)
    for window in (1, 4):
        dataset = LakeDataset(
            index, "train", eval_transform(spec), batch_size=8, shuffle=True, window=window
        )
        for _ in dataset:  # warm-up epoch: the first reads set up reader state once
            pass
        dataset.set_epoch(1)
        baseline, peak, count = pa.total_allocated_bytes(), 0, 0
        for _ in dataset:  # in this process, so the pool is observable
            peak = max(peak, pa.total_allocated_bytes() - baseline)
            count += 1
        assert count == index.count("train")
        assert 1 <= dataset.max_groups_held <= window
        assert peak < table_bytes / 3, (window, peak, table_bytes)


def test_samples_decode_to_normalised_tensors_with_their_labels(lake) -> None:
    index, table = lake
    labels = table.column("label").to_pylist()
    dataset = LakeDataset(
        index, "val", train_transform(_spec(index), "rand-m6-n2-mstd0.5"), batch_size=4
    )
    batch = next(iter(make_loader(dataset, num_workers=1)))
    assert batch.image.shape == (4, 3, SIZE, SIZE) and batch.image.dtype == torch.float32
    assert batch.image.min() >= -1.0 - 1e-6 and batch.image.max() <= 1.0 + 1e-6
    assert [index.labels[t] for t in batch.target] == [labels[r] for r in batch.row]


@pytest.mark.parametrize(
    "total,world,batch,drop_last,cap,expected",
    [
        (101, 2, 8, True, None, (48, 6)),
        (101, 2, 8, False, None, (51, 7)),
        (101, 4, 8, False, 2, (16, 2)),
        (3, 4, 8, False, None, (1, 1)),
        (10, 2, 8, True, None, (0, 0)),
    ],
)
def test_rank_counts(total, world, batch, drop_last, cap, expected) -> None:
    assert rank_counts(total, world, batch, drop_last, cap) == expected


def test_classes_follow_the_label_map_and_errors_are_clear(lake, tmp_path: Path) -> None:
    with pytest.raises(LakeReadError, match="has no images"):
        LakeIndex.scan(take(tmp_path / "nowhere"))
    index, table = lake
    snapshot = take(Path(index.files[0]).parents[2])
    assert index.labels == snapshot.classes  # the label map's order, not re-sorted
    assert set(index.labels) == set(table.column("label").drop_null().to_pylist())
    partial = dataclasses.replace(snapshot, classes=("bag",))
    with pytest.raises(LakeReadError, match="missing from its label map"):
        LakeIndex.scan(partial)
    assert np.all(index.group_offset[1:] > index.group_offset[:-1])
