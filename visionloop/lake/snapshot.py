"""A frozen snapshot of the lake and the one reader of its tables.

:func:`list_table` is the only place that lists a table's committed files. :func:`take`
freezes the images table and the label events into a :class:`LakeSnapshot` — the exact
files, their sizes and sha256, the label map, and the counts and training-split hash
computed from them — once per run. Planning, training (the ``torchrun`` ranks read it from
JSON), calibration, evaluation, promotion and lineage all receive that value, so a batch
committed meanwhile changes nothing they see and the lineage names exactly what was read.
Committed files are never rewritten; :meth:`LakeSnapshot.verify` refuses a snapshot whose
files have gone or changed size.

An image's label is its latest label event (ingest records the label a file came with,
label sync the annotators'); images without an event keep the ``label`` they were ingested
with. :meth:`LakeSnapshot.labels` resolves that, and every reader of labels uses it.

:func:`row_groups` is the one row-group walker: it reads only the asked-for columns, one
row group at a time, so no table is ever loaded whole.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
from collections import Counter
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.lake import label_events, label_map
from visionloop.lake.contract import PARTITION_COLUMN, SPLITS

IMAGES, LABEL_EVENTS = "images", "label_events"
_HASH_CHUNK = 1 << 20


class SnapshotError(RuntimeError):
    """The snapshot cannot be read as frozen (a file is gone or changed); the message says which."""


SUPERSEDED = "_superseded.json"


def superseded_path(table_dir: Path) -> Path:
    """Which partitions a compacted one replaced (see :mod:`visionloop.lake.compaction`)."""
    return table_dir / SUPERSEDED


def superseded(table_dir: Path) -> list[dict[str, Any]]:
    """The entries of ``_superseded.json``: ``new`` (None when retired), ``old``, ``at``."""
    path = superseded_path(table_dir)
    return json.loads(path.read_text()) if path.exists() else []


def in_effect(table_dir: Path, entry: dict[str, Any]) -> bool:
    """An entry hides its old partitions once its new one is committed (at once if retired)."""
    return entry["new"] is None or (table_dir / f"{PARTITION_COLUMN}={entry['new']}").exists()


def list_table(lake_dir: Path, table: str) -> list[Path]:
    """The committed Parquet files of a lake table, in a stable order, less the partitions
    that compaction replaced or retention retired."""
    table_dir = lake_dir / table
    files = sorted(table_dir.glob(f"{PARTITION_COLUMN}=*/*.parquet"))
    hidden = {
        f"{PARTITION_COLUMN}={old}"
        for entry in superseded(table_dir)
        if in_effect(table_dir, entry)
        for old in entry["old"]
    }
    return [path for path in files if path.parent.name not in hidden]


@dataclass(frozen=True)
class TableFile:
    """One committed Parquet file, as the snapshot saw it."""

    path: str
    batch_id: str
    rows: int
    size: int
    sha256: str

    @classmethod
    def describe(
        cls, path: Path, manifest: Mapping[str, Mapping[str, Any]] | None = None
    ) -> TableFile:
        """The file as it is now; its rows and sha256 from the partition's ``manifest``
        (see :func:`write_manifest`) when that recorded this size, else read from the file."""
        size = path.stat().st_size
        recorded = (manifest or {}).get(path.name)
        if recorded is None or recorded["size"] != size:
            recorded = _measure(path)
        return cls(
            path=str(path),
            batch_id=path.parent.name.partition("=")[2],
            rows=recorded["rows"],
            size=size,
            sha256=recorded["sha256"],
        )


#: Per partition: each Parquet file's rows, size and sha256, recorded when it is committed,
#: so a snapshot of the lake reads a small JSON per batch instead of every file's bytes.
MANIFEST = "_files.json"


def _measure(path: Path) -> dict[str, Any]:
    return {
        "rows": pq.ParquetFile(path).metadata.num_rows,
        "size": path.stat().st_size,
        "sha256": file_sha256(path),
    }


def write_manifest(partition: Path) -> None:
    """Record the rows, size and sha256 of a partition's files (atomically; idempotent)."""
    path = partition / MANIFEST
    if path.exists():
        return
    manifest = {file.name: _measure(file) for file in sorted(partition.glob("*.parquet"))}
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(manifest, indent=1))
    os.replace(temporary, path)


def read_manifest(partition: Path) -> dict[str, dict[str, Any]]:
    """A partition's :data:`MANIFEST` (empty for one committed before manifests existed)."""
    path = partition / MANIFEST
    return json.loads(path.read_text()) if path.exists() else {}


def describe_table(lake_dir: Path, table: str) -> tuple[TableFile, ...]:
    """The committed files of ``table``, each described from its partition's manifest."""
    files = list_table(lake_dir, table)
    manifests = {folder: read_manifest(folder) for folder in {path.parent for path in files}}
    return tuple(TableFile.describe(path, manifests[path.parent]) for path in files)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class RowGroup:
    """The asked-for columns of one row group, and where it lives."""

    file: int  # index into the walked files
    group: int  # row-group number within that file
    table: pa.Table


def row_groups(paths: Sequence[str | Path], columns: Sequence[str]) -> Iterator[RowGroup]:
    """Every row group of ``paths`` in order, reading only ``columns``."""
    for number, path in enumerate(paths):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            yield RowGroup(number, group, parquet.read_row_group(group, columns=list(columns)))


def latest_labels(paths: Sequence[str | Path]) -> dict[str, tuple[str, str]]:
    """``image_id -> (label, label_source)`` of each image's latest label event."""
    latest = label_events.latest_labels(paths)
    pairs = zip(latest["label"].to_pylist(), latest["label_source"].to_pylist(), strict=True)
    return dict(zip(latest["image_id"].to_pylist(), pairs, strict=True))


@dataclass(frozen=True)
class SplitCounts:
    labelled: int = 0
    unlabelled: int = 0


@dataclass(frozen=True)
class LakeSnapshot:
    """The images table and label events as they were at ``taken_at``, and what follows."""

    lake_dir: str
    taken_at: str
    files: tuple[TableFile, ...]  # of the images table
    classes: tuple[str, ...]  # the label map, in index order
    label_events: tuple[TableFile, ...] = ()
    split_counts: dict[str, SplitCounts] = field(default_factory=dict)
    train_rows: int = 0
    train_hash: str = ""  # sha256 of the sorted "image_id<TAB>label" lines of labelled train rows

    # ------------------------------------------------------------------ identity

    @property
    def id(self) -> str:
        """A content identity: the same files (by hash) give the same id."""
        digest = hashlib.sha256()
        for item in (*self.files, *self.label_events):
            digest.update(f"{item.path}:{item.sha256}\n".encode())
        return digest.hexdigest()[:16]

    @property
    def lake_path(self) -> Path:
        return Path(self.lake_dir)

    @property
    def paths(self) -> list[str]:
        return [item.path for item in self.files]

    @property
    def batch_rows(self) -> dict[str, int]:
        rows: dict[str, int] = {}
        for item in self.files:
            rows[item.batch_id] = rows.get(item.batch_id, 0) + item.rows
        return dict(sorted(rows.items()))

    @property
    def rows(self) -> int:
        return sum(item.rows for item in self.files)

    def labelled_count(self, split: str) -> int:
        return self.split_counts.get(split, SplitCounts()).labelled

    def verify(self) -> None:
        """Raise :class:`SnapshotError` if a file is gone or no longer the size it was."""
        for item in (*self.files, *self.label_events):
            path = Path(item.path)
            if not path.exists():
                raise SnapshotError(
                    f"{path} of lake snapshot {self.id} is gone; the lake was changed by hand. "
                    "Take a new snapshot (rerun the flow)"
                )
            if path.stat().st_size != item.size:
                raise SnapshotError(f"{path} changed size since snapshot {self.id} was taken")

    # ------------------------------------------------------------------ labels

    @functools.cached_property
    def _events(self) -> dict[str, tuple[str, str]]:
        return latest_labels([item.path for item in self.label_events])

    def labels(self, table: pa.Table) -> pa.Array:
        """The effective label of each row of ``table`` (``image_id`` and ``label`` columns)."""
        events = self._events
        if not events:
            return table["label"].combine_chunks()
        ids, seed = table["image_id"].to_pylist(), table["label"].to_pylist()
        resolved = [events[i][0] if i in events else s for i, s in zip(ids, seed, strict=True)]
        return pa.array(resolved, pa.string())

    def label_sources(self) -> Mapping[str, tuple[str, str]]:
        """``image_id -> (label, label_source)`` of images that have label events."""
        return self._events

    @property
    def annotator_labels(self) -> int:
        """Images whose label came from annotators."""
        return sum(source == "annotator" for _, source in self._events.values())

    @property
    def excluded(self) -> set[str]:
        """Images excluded from training (see :mod:`visionloop.lake.exclusions`)."""
        return {image for image, (_, source) in self._events.items() if source == "excluded"}

    # ------------------------------------------------------------------ reading

    def row_groups(self, columns: Sequence[str]) -> Iterator[RowGroup]:
        """Row groups of the images table; ``label`` (when asked for) is the effective label."""
        wanted = list(dict.fromkeys([*columns, *(["image_id"] if "label" in columns else [])]))
        for part in row_groups(self.paths, wanted):
            table = part.table
            if "label" in columns:
                index = table.column_names.index("label")
                table = table.set_column(index, "label", self.labels(table))
            yield RowGroup(part.file, part.group, table.select(list(columns)))

    def labelled(
        self, split: str, batch_size: int = 256, columns: Sequence[str] = ("image",)
    ) -> Iterator[dict[str, list[Any]]]:
        """Batches of a split's labelled rows: ``{"image_id", "label", *columns}`` lists.

        The small key columns are read first; ``columns`` only for row groups that hold
        wanted rows.
        """
        pending: dict[str, list[Any]] = {name: [] for name in ("image_id", "label", *columns)}
        for part in self.row_groups(["image_id", "label", "split"]):
            mask = labelled_mask(part.table, split)
            if not pc.any(mask).as_py():
                continue
            pending["image_id"] += part.table["image_id"].filter(mask).to_pylist()
            pending["label"] += part.table["label"].filter(mask).to_pylist()
            if columns:
                wanted = self._read_group(part, columns).filter(mask)
                for name in columns:
                    pending[name] += wanted[name].to_pylist()
            while len(pending["image_id"]) >= batch_size:
                yield {name: values[:batch_size] for name, values in pending.items()}
                pending = {name: values[batch_size:] for name, values in pending.items()}
        if pending["image_id"]:
            yield pending

    def lookup(self, image_ids: Collection[str], columns: Sequence[str]) -> dict[str, dict]:
        """``image_id -> {column: value}`` of some images (``label`` is the effective label,
        ``batch_id`` the partition of the image's file).

        Only the id column of each row group is scanned; the asked-for columns (image bytes,
        say) are read only from the row groups that hold a wanted image.
        """
        wanted = pa.array(sorted(set(image_ids)), pa.string())
        found: dict[str, dict] = {}
        if not len(wanted):
            return found
        names = list(dict.fromkeys(["image_id", *columns]))
        stored = [name for name in names if name != "batch_id"]  # not in the files themselves
        for part in row_groups(self.paths, ["image_id"]):
            mask = pc.is_in(part.table["image_id"], value_set=wanted)
            if not pc.any(mask).as_py():
                continue
            table = self._read_group(part, stored).filter(mask)
            if "batch_id" in names:
                batch = pa.array([self.files[part.file].batch_id] * len(table), pa.string())
                table = table.append_column("batch_id", batch)
            if "label" in names:
                column = table.schema.get_field_index("label")
                table = table.set_column(column, "label", self.labels(table))
            found.update((row["image_id"], row) for row in table.to_pylist())
        return found

    def _read_group(self, part: RowGroup, columns: Sequence[str]) -> pa.Table:
        return pq.ParquetFile(self.files[part.file].path).read_row_group(
            part.group, columns=list(columns)
        )

    # ------------------------------------------------------------------ serialising

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LakeSnapshot:
        return cls(
            lake_dir=data["lake_dir"],
            taken_at=data["taken_at"],
            files=tuple(TableFile(**item) for item in data["files"]),
            classes=tuple(data["classes"]),
            label_events=tuple(TableFile(**item) for item in data.get("label_events", ())),
            split_counts={
                split: SplitCounts(**counts) for split, counts in data["split_counts"].items()
            },
            train_rows=data["train_rows"],
            train_hash=data["train_hash"],
        )

    def save(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    @classmethod
    def load(cls, path: Path) -> LakeSnapshot:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def summary(self) -> dict[str, Any]:
        """What a reader of lineage wants: which batches, how many rows, the training hash."""
        return {
            "snapshot_id": self.id,
            "taken_at": self.taken_at,
            "batch_ids": list(self.batch_rows),
            "batch_rows": self.batch_rows,
            "rows": self.rows,
            "label_event_files": len(self.label_events),
            "split_rows": {split: asdict(counts) for split, counts in self.split_counts.items()},
            "train_rows": self.train_rows,
            "train_hash": self.train_hash,
            "classes": list(self.classes),
        }


def labelled_mask(table: pa.Table, split: str | None) -> pa.ChunkedArray:
    """Rows of ``table`` (with ``label``, and ``split`` when given) that are labelled [in split]."""
    mask = pc.is_valid(table["label"])
    if split is not None:
        mask = pc.and_(mask, pc.fill_null(pc.equal(table["split"], pa.scalar(split)), False))
    return mask


def take(lake_dir: Path) -> LakeSnapshot:
    """Freeze the images table and label events as they are now, with counts and hashes."""
    frozen = LakeSnapshot(
        lake_dir=str(lake_dir),
        taken_at=datetime.now(UTC).isoformat(timespec="seconds"),
        files=describe_table(lake_dir, IMAGES),
        classes=label_map.read(lake_dir),
        label_events=describe_table(lake_dir, LABEL_EVENTS),
    )
    counts, pairs = _scan(frozen)
    return dataclasses.replace(
        frozen, split_counts=counts, train_rows=len(pairs), train_hash=pairs_hash(pairs)
    )


def with_label_events(snapshot: LakeSnapshot, batch_ids: Collection[str]) -> LakeSnapshot:
    """``snapshot`` plus the label events that batches ``batch_ids`` committed after it was
    taken (a night's own leakage exclusions, which that night's training must see), its
    counts and training-split hash recomputed; its images and other events unchanged."""
    wanted = set(batch_ids) - {item.batch_id for item in snapshot.label_events}
    added = [
        item for item in describe_table(snapshot.lake_path, LABEL_EVENTS) if item.batch_id in wanted
    ]
    if not added:
        return snapshot
    events = tuple(sorted((*snapshot.label_events, *added), key=lambda item: Path(item.path)))
    grown = dataclasses.replace(snapshot, label_events=events)
    counts, pairs = _scan(grown)
    return dataclasses.replace(
        grown, split_counts=counts, train_rows=len(pairs), train_hash=pairs_hash(pairs)
    )


def _scan(snapshot: LakeSnapshot) -> tuple[dict[str, SplitCounts], list[tuple[str, str]]]:
    labelled: Counter[str] = Counter()
    unlabelled: Counter[str] = Counter()
    pairs: list[tuple[str, str]] = []
    for part in snapshot.row_groups(["image_id", "label", "split"]):
        table = part.table
        has_label = pc.is_valid(table["label"]).to_pylist()
        for split, is_labelled in zip(table["split"].to_pylist(), has_label, strict=True):
            (labelled if is_labelled else unlabelled)[split] += 1
        train = labelled_mask(table, "train")
        pairs += zip(
            table["image_id"].filter(train).to_pylist(),
            table["label"].filter(train).to_pylist(),
            strict=True,
        )
    splits = sorted(set(SPLITS) | set(labelled) | set(unlabelled))
    counts = {split: SplitCounts(labelled[split], unlabelled[split]) for split in splits}
    return counts, pairs


def pairs_hash(pairs: Sequence[tuple[str, str]]) -> str:
    """sha256 over sorted ``image_id<TAB>label`` lines: the identity of a labelled split."""
    digest = hashlib.sha256()
    for image_id, label in sorted(pairs):
        digest.update(f"{image_id}\t{label}\n".encode())
    return digest.hexdigest()
