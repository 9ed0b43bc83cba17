"""Read labelled images of a lake snapshot, sharded for DDP and workers.

The table is never loaded whole. :meth:`LakeIndex.scan` reads only the ``label`` and
``split`` columns of the snapshot's files, one row group at a time, and keeps the positions
of labelled rows (a few bytes per row); class indices are the lake's label map.
:class:`LakeDataset` then reads the ``image`` column of at most ``window`` row groups at a
time and decodes inside the DataLoader workers.

Each epoch's sample order is a pure function of ``(seed, epoch)``: the row groups are
permuted, cut into windows of ``window`` consecutive groups, and the rows of each window are
shuffled together. That sequence is cut into one contiguous, equally long slice per rank
(``drop_last`` drops the remainder, otherwise the sequence wraps around and the repeats are
flagged ``pad``), so every rank runs the same number of batches and DDP cannot hang. A
rank's batches are dealt to its workers in contiguous blocks of whole batches.
"""

from __future__ import annotations

import functools
import math
import multiprocessing
import multiprocessing.context
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from visionloop.lake.contract import SPLITS
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.preprocessing import decode_stored
from visionloop.training.distributed import seed_everything
from visionloop.training.transforms import Transform


class LakeReadError(ValueError):
    """The images table cannot feed training as asked; the message says why and what to do."""


class Sample(NamedTuple):
    """One decoded row (or, collated, one batch)."""

    image: torch.Tensor
    target: int | torch.Tensor
    row: int | torch.Tensor  # global row number in the index (file order, row-group order)
    pad: bool | torch.Tensor  # a repeat that only evens out the ranks: leave out of metrics


@dataclass(frozen=True)
class LakeIndex:
    """Where every labelled row lives, per split; built from two small columns only."""

    files: tuple[str, ...]
    group_file: np.ndarray  # (G,) index into files
    group_id: np.ndarray  # (G,) row-group number within its file
    group_offset: np.ndarray  # (G + 1,) global row number each row group starts at
    labels: tuple[str, ...]
    split_rows: dict[str, np.ndarray] = field(repr=False)  # global row numbers
    split_targets: dict[str, np.ndarray] = field(repr=False)  # class index per row

    @classmethod
    def scan(cls, snapshot: LakeSnapshot) -> LakeIndex:
        """Index the snapshot's files; class ``k`` is the label map's ``k``-th class."""
        if not snapshot.files:
            raise LakeReadError(f"the lake at {snapshot.lake_dir} has no images; ingest first")
        group_file, group_id, sizes, labels, splits = [], [], [], [], []
        for part in snapshot.row_groups(["label", "split"]):
            group_file.append(part.file)
            group_id.append(part.group)
            sizes.append(part.table.num_rows)
            labels.append(part.table.column("label").to_numpy(zero_copy_only=False))
            splits.append(part.table.column("split").to_numpy(zero_copy_only=False))
        label_column = np.concatenate(labels) if labels else np.array([], dtype=object)
        split_column = np.concatenate(splits) if splits else np.array([], dtype=object)
        label_set = _label_set(label_column, snapshot.classes)
        to_index = {label: number for number, label in enumerate(label_set)}
        split_rows, split_targets = {}, {}
        for split in SPLITS:
            rows = np.flatnonzero((split_column == split) & (label_column != None))  # noqa: E711
            split_rows[split] = rows.astype(np.int64)
            split_targets[split] = np.array(
                [to_index[label] for label in label_column[rows]], dtype=np.int64
            )
        return cls(
            files=tuple(snapshot.paths),
            group_file=np.array(group_file, dtype=np.int64),
            group_id=np.array(group_id, dtype=np.int64),
            group_offset=np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]),
            labels=label_set,
            split_rows=split_rows,
            split_targets=split_targets,
        )

    @property
    def num_groups(self) -> int:
        return len(self.group_file)

    def count(self, split: str) -> int:
        return len(self.split_rows[split])

    def group_of(self, rows: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.group_offset, rows, side="right") - 1


def _label_set(label_column: np.ndarray, classes: Sequence[str]) -> tuple[str, ...]:
    found = {label for label in label_column if label is not None}
    if not found:
        raise LakeReadError("the images table has no labelled rows; label some images first")
    unknown = found - set(classes)
    if unknown:
        raise LakeReadError(
            f"the lake has labels missing from its label map: {sorted(unknown)}; the label "
            "map is written when a batch commits, so these rows were not committed by visionloop"
        )
    return tuple(classes)


def rank_counts(
    total: int, world_size: int, batch_size: int, drop_last: bool, max_batches: int | None
) -> tuple[int, int]:
    """``(samples, batches)`` every rank gets per epoch: the same on all ranks."""
    if drop_last:
        batches = total // world_size // batch_size
        if max_batches is not None:
            batches = min(batches, max_batches)
        return batches * batch_size, batches
    samples = math.ceil(total / world_size)
    batches = math.ceil(samples / batch_size)
    if max_batches is not None and batches > max_batches:
        batches, samples = max_batches, max_batches * batch_size
    return samples, batches


def epoch_order(
    index: LakeIndex, split: str, *, shuffle: bool, seed: int, epoch: int, window: int
) -> tuple[np.ndarray, np.ndarray]:
    """Positions into the split's rows in epoch order, and the window each belongs to."""
    groups = index.group_of(index.split_rows[split])
    if not shuffle:
        return np.arange(len(groups)), groups
    rng = np.random.default_rng([seed, epoch])
    slot = np.empty(index.num_groups, dtype=np.int64)
    slot[rng.permutation(index.num_groups)] = np.arange(index.num_groups)
    windows = slot[groups] // window
    order = np.lexsort((rng.random(len(groups)), windows))
    return order, windows[order]


class LakeDataset(IterableDataset):
    """The labelled rows of one split, for one rank; iterate once per epoch."""

    def __init__(
        self,
        index: LakeIndex,
        split: str,
        transform: Transform,
        *,
        batch_size: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = False,
        drop_last: bool = False,
        seed: int = 0,
        window: int = 1,
        max_batches: int | None = None,
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world size {world_size}")
        self.index, self.split, self.transform = index, split, transform
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.shuffle, self.drop_last, self.seed = shuffle, drop_last, seed
        self.window, self.max_batches = window, max_batches
        # Shared with the (persistent) workers, so set_epoch reaches their copies too.
        self._epoch = worker_context().RawValue("q", 0)
        self.samples, self.batches = rank_counts(
            index.count(split), world_size, batch_size, drop_last, max_batches
        )
        self.groups_read = 0
        self.max_groups_held = 0

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def set_epoch(self, epoch: int) -> None:
        """Call before each ``iter(loader)``; workers read it when their epoch starts."""
        self._epoch.value = epoch

    def __len__(self) -> int:
        return self.samples

    def plan(self, worker: int = 0, workers: int = 1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(positions, windows, pad)`` this rank's ``worker`` reads this epoch."""
        order, windows = epoch_order(
            self.index,
            self.split,
            shuffle=self.shuffle,
            seed=self.seed,
            epoch=self.epoch,
            window=self.window,
        )
        total = len(order)
        start = self.rank * self.samples
        span = np.arange(start, start + self.samples)
        pad = span >= total
        span = span % max(total, 1)
        first = worker * self.batches // workers * self.batch_size
        last = min((worker + 1) * self.batches // workers * self.batch_size, self.samples)
        span, pad = span[first:last], pad[first:last]
        return order[span], windows[span], pad

    def __iter__(self) -> Iterator[Sample]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info else (0, 1)
        if info is not None:  # augmentations repeat exactly for a given (seed, epoch)
            seed_everything(self.seed, self.epoch, self.rank, worker)
        positions, windows, pad = self.plan(worker, workers)
        rows = self.index.split_rows[self.split][positions]
        targets = self.index.split_targets[self.split][positions]
        groups = self.index.group_of(rows)
        for run in _runs(windows):
            images = self._read_groups(np.unique(groups[run]))
            for i in run:
                group_row = int(rows[i] - self.index.group_offset[groups[i]])
                data = images[int(groups[i])][group_row].as_py()
                yield Sample(self._decode(data), int(targets[i]), int(rows[i]), bool(pad[i]))
            del images

    def _read_groups(self, groups: np.ndarray) -> dict[int, pa.BinaryArray]:
        images = {}
        for group in groups:
            path = self.index.files[self.index.group_file[group]]
            table = pq.ParquetFile(path).read_row_group(
                int(self.index.group_id[group]), columns=["image"]
            )
            images[int(group)] = table.column("image").combine_chunks()
        self.groups_read += len(images)
        self.max_groups_held = max(self.max_groups_held, len(images))
        return images

    def _decode(self, data: bytes) -> torch.Tensor:
        return self.transform(decode_stored(data))


def _runs(windows: np.ndarray) -> list[np.ndarray]:
    """Index ranges of consecutive samples that share a window."""
    if len(windows) == 0:
        return []
    cuts = np.flatnonzero(np.diff(windows)) + 1
    return np.split(np.arange(len(windows)), cuts)


#: A worker that sends no batch for this long is taken as hung: an error, not a DDP stall.
WORKER_TIMEOUT_S = 600


def worker_context() -> multiprocessing.context.BaseContext:
    """Workers start from a fork server, never by forking the training process itself.

    A rank is multi-threaded (gloo, pyarrow, the feeder threads of the last epoch's
    loaders); ``fork()`` while one of those Python threads is exiting leaves the child
    blocked forever in ``PyOS_AfterFork_Child`` (seen here: a hang at epoch 2). The fork
    server is a fresh, single-threaded process with these modules already imported.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def _owner_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except FileNotFoundError:
        return False
    except OSError:  # no procfs: fall back to a signal-0 probe
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True


def _watch_owner(owner: int, _worker_id: int) -> None:
    """Exit this worker once the process that made the loader is gone.

    Workers are children of the fork server, so torch's own check (is my parent alive?)
    does not notice a SIGKILLed rank, and the fork server lives on while its children do.
    """

    def watch() -> None:
        while _owner_alive(owner):
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, name="owner-watchdog", daemon=True).start()


def make_loader(
    dataset: LakeDataset,
    num_workers: int,
    *,
    pin_memory: bool = False,
) -> DataLoader:
    """A DataLoader whose batches are exactly the dataset's planned batches.

    Make it once and iterate it once per epoch after ``dataset.set_epoch``: its workers
    persist across epochs (starting a dozen workers costs ~1.5 s per epoch on the GPU box).
    """
    return DataLoader(
        dataset,
        batch_size=dataset.batch_size,
        num_workers=num_workers,
        pin_memory=pin_memory,
        prefetch_factor=2 if num_workers else None,
        persistent_workers=num_workers > 0,
        multiprocessing_context=worker_context() if num_workers else None,
        worker_init_fn=functools.partial(_watch_owner, os.getpid()) if num_workers else None,
        timeout=WORKER_TIMEOUT_S if num_workers else 0,
    )
