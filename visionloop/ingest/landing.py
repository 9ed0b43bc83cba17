"""Enumerate a landing batch: every file it names becomes exactly one :class:`LandingEntry`.

Three layouts are accepted: an ImageFolder (``root/<class>/...``), a CSV or Parquet
manifest (``uri,label``; label optional) and an unlabelled folder; a folder whose
sub-folders are all dated (``landing/2026-12-02/...``) is read as one source per date, in
the given layout. Walking is recursive, follows symlinks safely and turns what cannot be
read into an entry with a ``problem``, so nothing is silently skipped. Only metadata is
touched here (each entry carries the size and mtime the arrival ledger compares); bytes are
read by the workers.
"""

from __future__ import annotations

import csv
import errno
import os
import re
import shutil
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.lake.contract import Reason
from visionloop.settings import LandingSource, Layout

__all__ = [
    "LandingEntry",
    "LandingError",
    "LandingSource",
    "archive_placed",
    "enumerate_source",
    "resolve_layout",
]

MANIFEST_SUFFIXES = (".csv", ".parquet")
#: A dated arrival folder: 2026-12-02, 20261202, 2026-12-02T0200 …
DATED_FOLDER = re.compile(r"^\d{4}-?\d{2}-?\d{2}([T_ -].*)?$")

LISTING_SCHEMA = pa.schema(
    [
        ("entry_id", pa.int64()),
        ("uri", pa.string()),
        ("label", pa.string()),
        ("problem", pa.string()),
        ("detail", pa.string()),
        ("size", pa.int64()),  # -1 when the file could not be stat'ed
        ("mtime_ns", pa.int64()),
    ]
)
NO_STAT = -1


@dataclass(frozen=True)
class LandingEntry:
    """A file of the batch: where it is, its label, why it cannot be used (if so), and the
    size and mtime the arrival ledger compares (``NO_STAT`` when it could not be stat'ed)."""

    uri: str
    label: str | None
    problem: Reason | None = None
    detail: str = ""
    size: int = NO_STAT
    mtime_ns: int = NO_STAT


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


def dated_folders(source: LandingSource) -> list[Path]:
    """The dated sub-folders of a landing folder whose sub-folders are all dated, else []."""
    path = Path(source.path)
    if not path.is_dir():
        return []
    children = [child for child in path.iterdir() if not child.name.startswith(".")]
    dated = [child for child in children if child.is_dir() and DATED_FOLDER.match(child.name)]
    return sorted(dated) if children and len(dated) == len(children) else []


def enumerate_source(source: LandingSource) -> Iterator[LandingEntry]:
    """Yield one entry per file of ``source`` (of each dated sub-folder, if it has them)."""
    if dated := dated_folders(source):
        for folder in dated:
            yield from enumerate_source(LandingSource(path=str(folder), layout=source.layout))
        return
    layout = resolve_layout(source)
    root = Path(source.path)
    if layout == "manifest":
        yield from _manifest_entries(root)
        return
    for path, problem, detail, info in walk_files(root):
        label = _class_of(root, path) if layout == "imagefolder" else None
        yield _entry(str(path), label, problem, detail, info)


def _entry(
    uri: str, label: str | None, problem: Reason | None, detail: str, info: os.stat_result | None
) -> LandingEntry:
    if info is None:
        return LandingEntry(uri, label, problem, detail)
    return LandingEntry(uri, label, problem, detail, info.st_size, info.st_mtime_ns)


def _class_of(root: Path, path: Path) -> str | None:
    parts = path.relative_to(root).parts
    return parts[0] if len(parts) > 1 else None


WalkedFile = tuple[Path, Reason | None, str, os.stat_result | None]


def walk_files(root: Path) -> Iterator[WalkedFile]:
    """Walk ``root`` recursively, following symlinks that stay inside it, never around a loop.

    A symlink (to a file or a folder) that resolves outside the landing root is a problem
    (``outside_landing_root``), as in manifests: a landing batch cannot pull in other files.
    """
    real_root = os.path.realpath(root)
    yield from _walk(root.absolute(), real_root, {real_root})


def _inside(real: str, real_root: str) -> bool:
    return os.path.commonpath([real, real_root]) == real_root


def _walk(directory: Path, real_root: str, ancestors: set[str]) -> Iterator[WalkedFile]:
    try:
        entries = sorted(os.scandir(directory), key=lambda entry: entry.name)
    except OSError as error:
        yield directory, Reason.UNREADABLE, f"cannot list directory: {error.strerror}", None
        return
    for entry in entries:
        path = directory / entry.name
        try:
            info = os.stat(path)  # follows symlinks
        except OSError as error:
            yield path, _stat_reason(error), _stat_detail(path, error), None
            continue
        real = os.path.realpath(path)
        if not _inside(real, real_root):
            yield path, Reason.OUTSIDE_ROOT, f"links to {real}, outside {real_root}", info
            continue
        if stat.S_ISDIR(info.st_mode):
            if real in ancestors:
                yield path, Reason.SYMLINK_LOOP, f"directory link back to {real}", info
                continue
            yield from _walk(path, real_root, ancestors | {real})
        elif stat.S_ISREG(info.st_mode):
            yield path, None, "", info
        else:
            yield path, Reason.NOT_A_FILE, "not a regular file (pipe, socket or device)", info


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
        return _entry(str(candidate), label, Reason.NOT_A_FILE, "not a regular file", info)
    return _entry(str(candidate), label, None, "", info)


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
            "size": [entry.size for entry in entries],
            "mtime_ns": [entry.mtime_ns for entry in entries],
        },
        schema=LISTING_SCHEMA,
    )


def archive_placed(sources: Iterable[LandingSource], uris: Iterable[str], archive: Path) -> int:
    """Move placed files of folder sources under ``archive/<source folder>/<relative path>``.

    Nothing is deleted: a file whose archive path is taken keeps both, the newer with a
    numbered suffix. Manifest sources are left in place (the manifest still names them).
    Returns how many files were moved.
    """
    roots = [Path(s.path).absolute() for s in sources if resolve_layout(s) != "manifest"]
    moved = 0
    for uri in uris:
        path = Path(uri)
        root = next((root for root in roots if path.is_relative_to(root)), None)
        if root is None or not path.is_file():
            continue
        target = _free_path(archive / root.name / path.relative_to(root))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(path, target)
        moved += 1
    return moved


def _free_path(path: Path) -> Path:
    candidate, number = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{number}{path.suffix}")
        number += 1
    return candidate


def landing_sources(
    requested: list[LandingSource], configured: list[LandingSource]
) -> list[LandingSource]:
    """The sources an ingest drains: those asked for, else the configured landing zone."""
    sources = requested or configured
    if not sources:
        raise LandingError(
            "no landing sources: set landing.sources in the settings (e.g. "
            "VISIONLOOP_LANDING__SOURCES='[\"/data/landing\"]'), pass sources to the flow, or "
            "`visionloop run --source DIR` (`--sample` for the shipped sample)"
        )
    for source in sources:  # a wrong path fails here, before any engine starts
        if not dated_folders(source):
            resolve_layout(source)
    return sources
