"""Enumerate a landing batch: every file it names becomes exactly one :class:`LandingEntry`.

Three layouts are accepted: an ImageFolder (``root/<class>/...``), a CSV or Parquet
manifest (``uri,label``; label optional) and an unlabelled folder. Walking is recursive,
follows symlinks safely and turns what cannot be read into an entry with a ``problem``, so
nothing is silently skipped. Only metadata is touched here; bytes are read by the workers.
"""

from __future__ import annotations

import csv
import errno
import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel

from visionloop.lake.contract import Reason

Layout = Literal["auto", "imagefolder", "manifest", "unlabelled"]
MANIFEST_SUFFIXES = (".csv", ".parquet")

LISTING_SCHEMA = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("uri", pa.string()),
        ("label", pa.string()),
        ("problem", pa.string()),
        ("detail", pa.string()),
    ]
)


class LandingSource(BaseModel):
    """One place to ingest from, and how its files are laid out."""

    path: str
    layout: Layout = "auto"


@dataclass(frozen=True)
class LandingEntry:
    """A file of the batch: where it is, its label, and why it cannot be used (if so)."""

    uri: str
    label: str | None
    problem: Reason | None = None
    detail: str = ""


class LandingError(ValueError):
    """The landing source itself is unusable (missing root, unreadable manifest)."""


def resolve_layout(source: LandingSource) -> Layout:
    """Pick a layout for ``auto``: manifest file, class folders, or a flat unlabelled folder."""
    path = Path(source.path)
    if not path.exists():
        raise LandingError(f"landing path {path} does not exist; check the path you passed")
    if source.layout != "auto":
        return source.layout
    if path.is_file():
        if path.suffix.lower() in MANIFEST_SUFFIXES:
            return "manifest"
        raise LandingError(f"{path} is a file but not a .csv/.parquet manifest")
    children = [child for child in path.iterdir() if not child.name.startswith(".")]
    if children and all(child.is_dir() for child in children):
        return "imagefolder"
    return "unlabelled"


def enumerate_source(source: LandingSource) -> Iterator[LandingEntry]:
    """Yield one entry per file of ``source``."""
    layout = resolve_layout(source)
    root = Path(source.path)
    if layout == "manifest":
        yield from _manifest_entries(root)
        return
    for path, problem, detail in walk_files(root):
        label = _class_of(root, path) if layout == "imagefolder" else None
        yield LandingEntry(str(path), label, problem, detail)


def _class_of(root: Path, path: Path) -> str | None:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


def walk_files(root: Path) -> Iterator[tuple[Path, Reason | None, str]]:
    """Walk ``root`` recursively, following symlinks that stay inside it, never around a loop.

    A symlink (to a file or a folder) that resolves outside the landing root is a problem
    (``outside_landing_root``), as in manifests: a landing batch cannot pull in other files.
    """
    real_root = os.path.realpath(root)
    yield from _walk(root.absolute(), real_root, {real_root})


def _inside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) == real_root


def _walk(
    directory: Path, real_root: str, ancestors: set[str]
) -> Iterator[tuple[Path, Reason | None, str]]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        yield directory, Reason.UNREADABLE, f"cannot list directory: {error.strerror}"
        return
    for entry in entries:
        path = directory / entry.name
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as error:
            yield path, _stat_reason(error), _stat_detail(path, error)
            continue
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            yield path, Reason.OUTSIDE_ROOT, f"links to {real}, outside {real_root}"
            continue
        if stat.S_ISDIR(info.st_mode):
            if real in ancestors:
                yield path, Reason.SYMLINK_LOOP, f"directory link back to {real}"
                continue
            yield from _walk(path, real_root, ancestors | {real})
        elif stat.S_ISREG(info.st_mode):
            yield path, None, ""
        else:
            yield path, Reason.NOT_A_FILE, "not a regular file (pipe, socket or device)"


def _stat_reason(error: OSError) -> Reason:
    if error.errno == errno.ELOOP:
        return Reason.SYMLINK_LOOP
    if error.errno == errno.ENOENT:
        return Reason.MISSING
    return Reason.UNREADABLE


def _stat_detail(path: Path, error: OSError) -> str:
    if error.errno == errno.ENOENT and path.is_symlink():
        return f"dangling symlink to {os.readlink(path)}"
    return error.strerror or str(error)


def _manifest_entries(manifest: Path) -> Iterator[LandingEntry]:
    root = manifest.parent.absolute()
    for uri, label in _manifest_rows(manifest):
        yield _manifest_entry(root, uri, label or None)


def _manifest_rows(manifest: Path) -> Iterator[tuple[str, str | None]]:
    try:
        if manifest.suffix.lower() == ".parquet":
            table = pq.read_table(manifest)
            if "uri" not in table.column_names:
                raise LandingError(f"manifest {manifest} has no 'uri' column")
            labels = table.column("label").to_pylist() if "label" in table.column_names else None
            for index, uri in enumerate(table.column("uri").to_pylist()):
                yield uri, labels[index] if labels else None
            return
        with manifest.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or "uri" not in reader.fieldnames:
                raise LandingError(f"manifest {manifest} has no 'uri' header (expected uri,label)")
            for row in reader:
                yield row["uri"], row.get("label")
    except (OSError, UnicodeDecodeError, pa.ArrowInvalid) as error:
        raise LandingError(f"cannot read manifest {manifest}: {error}") from error


def _manifest_entry(root: Path, uri: str, label: str | None) -> LandingEntry:
    raw = uri.removeprefix("file://")
    candidate = Path(raw) if os.path.isabs(raw) else root / raw
    real = os.path.realpath(candidate)
    if os.path.commonpath([real, os.path.realpath(root)]) != os.path.realpath(root):
        return LandingEntry(uri, label, Reason.OUTSIDE_ROOT, f"resolves to {real}, outside {root}")
    try:
        info = os.stat(candidate)
    except OSError as error:
        return LandingEntry(
            str(candidate), label, _stat_reason(error), _stat_detail(candidate, error)
        )
    if not stat.S_ISREG(info.st_mode):
        return LandingEntry(str(candidate), label, Reason.NOT_A_FILE, "not a regular file")
    return LandingEntry(str(candidate), label)


def write_listing(entries: Iterable[LandingEntry], path: Path, chunk_rows: int = 50_000) -> int:
    """Stream entries into a numbered Parquet listing (bounded memory); returns the count."""
    path.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    with pq.ParquetWriter(path, LISTING_SCHEMA) as writer:
        chunk: list[LandingEntry] = []
        for entry in entries:
            chunk.append(entry)
            if len(chunk) >= chunk_rows:
                writer.write_table(_listing_table(chunk, count))
                count += len(chunk)
                chunk = []
        writer.write_table(_listing_table(chunk, count))
        count += len(chunk)
    return count


def _listing_table(entries: list[LandingEntry], first_id: int) -> pa.Table:
    return pa.table(
        {
            "entry_id": range(first_id, first_id + len(entries)),
            "uri": [entry.uri for entry in entries],
            "label": [entry.label for entry in entries],
            "problem": [entry.problem.value if entry.problem else None for entry in entries],
            "detail": [entry.detail for entry in entries],
        },
        schema=LISTING_SCHEMA,
    )
