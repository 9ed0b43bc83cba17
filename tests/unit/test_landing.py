"""Landing enumeration: layouts, manifests and the files that cannot be read."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.corpus import call_unprivileged, leases_held, shared_tmp_dir, touch
from visionloop.ingest.landing import (
    LandingError,
    LandingSource,
    enumerate_source,
    resolve_layout,
    write_listing,
)
from visionloop.lake.contract import Reason


def test_imagefolder_labels_from_class_folders(tmp_path: Path) -> None:
    touch(tmp_path / "cat" / "a.png")
    touch(tmp_path / "cat" / "nested" / "b.png")
    touch(tmp_path / "dog" / "c.png")
    source = LandingSource(path=str(tmp_path))
    assert resolve_layout(source) == "imagefolder"
    labels = {Path(e.uri).name: e.label for e in enumerate_source(source)}
    assert labels == {"a.png": "cat", "b.png": "cat", "c.png": "dog"}


def test_flat_folder_is_unlabelled(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    touch(tmp_path / "sub" / "b.png")
    entries = list(enumerate_source(LandingSource(path=str(tmp_path))))
    assert [e.label for e in entries] == [None, None]


def test_links_fifos_and_loops_become_problems(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    touch(root / "cat" / "ok.png")
    os.symlink("loop.png", root / "cat" / "loop.png")
    os.symlink("missing.png", root / "cat" / "dangling.png")
    os.mkfifo(root / "cat" / "pipe.png")
    os.symlink("..", root / "cat" / "up")
    problems = {
        Path(e.uri).name: e.problem
        for e in enumerate_source(LandingSource(path=str(root), layout="imagefolder"))
    }
    assert problems == {
        "ok.png": None,
        "loop.png": Reason.SYMLINK_LOOP,
        "dangling.png": Reason.MISSING,
        "pipe.png": Reason.NOT_A_FILE,
        "up": Reason.SYMLINK_LOOP,
    }


def test_folders_and_files_it_may_not_read_become_unreadable() -> None:
    """As a user permission bits apply to (``nobody`` when the tests run as root): a folder
    it may not list, and files it may not stat (their folder may be listed, not searched)."""
    with shared_tmp_dir() as shared:
        root = shared / "landing"
        for path in ("cat/ok.png", "cat/sealed/a.png", "dog/b.png"):
            touch(root / path)
        for folder, mode in (("", 0o755), ("cat", 0o755), ("cat/sealed", 0), ("dog", 0o644)):
            (root / folder).chmod(mode)
        (root / "cat" / "ok.png").chmod(0o644)
        source = LandingSource(path=str(root), layout="imagefolder")
        entries = call_unprivileged(lambda: list(enumerate_source(source)))
    denied = os.strerror(errno.EACCES)
    found = {Path(e.uri).relative_to(root).as_posix(): (e.label, e.problem) for e in entries}
    assert found == {
        "cat/ok.png": ("cat", None),
        "cat/sealed": ("cat", Reason.UNREADABLE),
        "dog/b.png": ("dog", Reason.UNREADABLE),
    }
    details = {Path(e.uri).name: e.detail for e in entries}
    assert details["sealed"] == f"cannot list directory: {denied}"
    assert details["b.png"] == denied


def test_a_file_it_can_stat_but_not_open_is_listed_for_the_workers(tmp_path: Path) -> None:
    """Listing only stats: a file no one can open now (another process's write lease) is an
    ordinary entry; the worker's read finds it unreadable (see test_imaging, test_ingest_spark).
    """
    touch(tmp_path / "cat" / "leased.png", b"12345")
    with leases_held(tmp_path, ["cat/leased.png"]):
        entries = list(enumerate_source(LandingSource(path=str(tmp_path))))
    assert [(Path(e.uri).name, e.label, e.problem) for e in entries] == [
        ("leased.png", "cat", None)
    ]


def test_imagefolder_links_out_of_the_root_are_quarantined(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    outside = tmp_path / "elsewhere"
    touch(root / "cat" / "ok.png")
    touch(outside / "secret.png")
    touch(outside / "more" / "x.png")
    os.symlink(outside / "secret.png", root / "cat" / "secret.png")
    os.symlink(outside / "more", root / "cat" / "more")
    os.symlink("ok.png", root / "cat" / "alias.png")  # inside the root: fine
    problems = {
        Path(e.uri).name: e.problem
        for e in enumerate_source(LandingSource(path=str(root), layout="imagefolder"))
    }
    assert problems == {
        "ok.png": None,
        "alias.png": None,
        "secret.png": Reason.OUTSIDE_ROOT,
        "more": Reason.OUTSIDE_ROOT,  # the folder link itself; nothing under it is read
    }


def test_manifest_rejects_paths_outside_the_root(tmp_path: Path) -> None:
    touch(tmp_path / "images" / "a.png")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "uri,label\nimages/a.png,cat\n../../etc/passwd,cat\n/etc/hostname,\nimages/gone.png,\n"
    )
    entries = list(enumerate_source(LandingSource(path=str(manifest))))
    assert [(e.label, e.problem) for e in entries] == [
        ("cat", None),
        ("cat", Reason.OUTSIDE_ROOT),
        (None, Reason.OUTSIDE_ROOT),
        (None, Reason.MISSING),
    ]


def test_manifest_without_uri_column_is_a_clear_error(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("path,label\na.png,cat\n")
    with pytest.raises(LandingError, match="uri"):
        list(enumerate_source(LandingSource(path=str(manifest))))
    with pytest.raises(LandingError, match="does not exist"):
        list(enumerate_source(LandingSource(path=str(tmp_path / "nowhere"))))


def test_listing_numbers_every_entry(tmp_path: Path) -> None:
    for index in range(5):
        touch(tmp_path / "in" / f"{index}.png")
    entries = enumerate_source(LandingSource(path=str(tmp_path / "in")))
    count = write_listing(entries, tmp_path / "listing.parquet", chunk_rows=2)
    table = pq.read_table(tmp_path / "listing.parquet")
    assert count == 5
    assert table.column("entry_id").to_pylist() == [0, 1, 2, 3, 4]


def test_parquet_manifest_with_optional_labels(tmp_path: Path) -> None:
    touch(tmp_path / "a.png")
    touch(tmp_path / "b.png")
    manifest = tmp_path / "manifest.parquet"
    pq.write_table(pa.table({"uri": ["a.png", "b.png"], "label": ["cat", None]}), manifest)
    entries = list(enumerate_source(LandingSource(path=str(manifest))))
    assert [(Path(e.uri).name, e.label, e.problem) for e in entries] == [
        ("a.png", "cat", None),
        ("b.png", None, None),
    ]
