"""The landing zone's pure parts: dated folders, the arrival ledger's comparison, archiving."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.corpus import touch
from visionloop.ingest import ledger
from visionloop.ingest.landing import (
    LandingError,
    LandingSource,
    archive_placed,
    enumerate_source,
    landing_sources,
    write_listing,
)
from visionloop.settings import load_settings


def test_dated_folders_are_sources_of_their_own_layout(tmp_path: Path) -> None:
    touch(tmp_path / "2026-12-01" / "bag" / "a.png")
    touch(tmp_path / "2026-12-02" / "coat" / "b.png")
    entries = list(enumerate_source(LandingSource(path=str(tmp_path))))
    assert sorted((Path(e.uri).name, e.label) for e in entries) == [
        ("a.png", "bag"),
        ("b.png", "coat"),
    ]
    flat = tmp_path / "flat"
    touch(flat / "c.png", b"abc")
    (entry,) = enumerate_source(LandingSource(path=str(flat)))
    assert entry.label is None and entry.size == 3 and entry.mtime_ns > 0


def _listed(root: Path, path: Path) -> pa.Table:
    write_listing(enumerate_source(LandingSource(path=str(root))), path)
    return pq.read_table(path)


def test_the_ledger_skips_placed_files_and_rereads_replaced_ones(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    kept, replaced = touch(root / "kept.png"), touch(root / "replaced.png")
    first = _listed(root, tmp_path / "first.parquet")
    placed = first.select(list(ledger.KEY))  # the ledger's keys, as ledger.placed() reads them

    assert ledger.unplaced(first, placed).num_rows == 0  # unlabelled (null) labels match too
    replaced.write_bytes(b"new content")
    os.utime(kept, ns=(kept.stat().st_atime_ns, kept.stat().st_mtime_ns))  # untouched
    touch(root / "new.png")
    later = ledger.unplaced(_listed(root, tmp_path / "later.parquet"), placed)
    assert sorted(Path(uri).name for uri in later["uri"].to_pylist()) == ["new.png", "replaced.png"]


def test_an_empty_lake_has_an_empty_ledger(tmp_path: Path) -> None:
    assert ledger.placed(tmp_path).num_rows == 0


def test_archive_moves_placed_files_keeping_their_class_folders(tmp_path: Path) -> None:
    root = tmp_path / "landing"
    placed = [touch(root / "bag" / "a.png"), touch(root / "bag" / "b.png")]
    waiting = touch(root / "bag" / "c.png")
    archive = tmp_path / "archive"
    touch(archive / "landing" / "bag" / "a.png", b"an earlier a.png")
    source = LandingSource(path=str(root), layout="imagefolder")
    assert archive_placed([source], [str(path) for path in placed], archive) == 2
    assert waiting.exists() and not any(path.exists() for path in placed)
    names = sorted(path.name for path in (archive / "landing" / "bag").iterdir())
    assert names == ["a.1.png", "a.png", "b.png"]  # nothing overwritten


def test_no_landing_configured_names_the_setting(tmp_path: Path) -> None:
    with pytest.raises(LandingError, match=r"landing\.sources"):
        landing_sources([], [])
    with pytest.raises(LandingError, match="does not exist"):
        landing_sources([LandingSource(path=str(tmp_path / "nowhere"))], [])


def test_landing_sources_are_read_from_plain_paths_in_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VISIONLOOP_LANDING__SOURCES", f'["{tmp_path}"]')
    settings = load_settings(data_home=tmp_path / "home")
    assert settings.landing.sources == [LandingSource(path=str(tmp_path))]
    assert settings.archive_dir == tmp_path / "home" / "landing-archive"
