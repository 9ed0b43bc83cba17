"""The lake writer lock across processes (as across machines): a Prefect global concurrency
limit on a real Prefect server on 127.0.0.1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.local import free_port
from tests.prefect_server import prefect_server
from tests.waiting import wait_for
from visionloop.lake import commit as lake
from visionloop.locks import LockBusyError
from visionloop.settings import Settings, load_settings
from visionloop.shared_lock import LEASE_S, SharedLockUnavailableError

HOLDER = Path(__file__).with_name("hold_lake_writer.py")
pytestmark = pytest.mark.slow


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    with prefect_server(tmp_path / "prefect") as url:
        yield url


def _settings(home: Path, timeout_s: float = 2) -> Settings:
    return load_settings(data_home=home, lake_lock="prefect", lake_lock_timeout_s=timeout_s)


def _hold(settings: Settings, folder: Path, api: str) -> tuple[subprocess.Popen, Path]:
    """Another process holding the lake's writer lock; the file that lets it go."""
    folder.mkdir()
    config = settings.save(folder / "config")
    held, release = folder / "held", folder / "release"
    holder = subprocess.Popen(
        [sys.executable, str(HOLDER), str(config), str(held), str(release)],
        env=os.environ | {"PREFECT_API_URL": api},
        start_new_session=True,
    )
    wait_for(held.exists, 120, "the other process holds the writer lock", holder)
    return holder, release


def test_writers_of_one_lake_wait_for_each_other_and_other_lakes_do_not(
    tmp_path: Path, api: str
) -> None:
    settings = _settings(tmp_path / "home")
    holder, release = _hold(settings, tmp_path / "holder", api)
    busy = pytest.raises(LockBusyError, match=r"visionloop-lake-writer-.*held by another writer")
    with busy, lake.writer(settings, "this test"):
        pass
    with lake.writer(_settings(tmp_path / "another-home"), "another lake"):
        pass  # a limit per lake
    release.touch()
    assert holder.wait(timeout=60) == 0
    with lake.writer(settings, "this test"):
        pass


def test_a_killed_holder_frees_the_lock_when_its_lease_runs_out(tmp_path: Path, api: str) -> None:
    settings = _settings(tmp_path / "home", timeout_s=4 * LEASE_S)
    holder, _ = _hold(settings, tmp_path / "holder", api)
    os.killpg(holder.pid, signal.SIGKILL)
    holder.wait()
    started = time.monotonic()
    with lake.writer(settings, "after the kill"):
        waited = time.monotonic() - started
    assert waited < 4 * LEASE_S


def test_an_unreachable_prefect_server_is_named_with_the_fix(tmp_path: Path) -> None:
    closed = f"http://127.0.0.1:{free_port()}/api"
    unreachable = pytest.raises(SharedLockUnavailableError, match=r"127\.0\.0\.1.*PREFECT_API_URL")
    with (
        temporary_settings(updates={PREFECT_API_URL: closed}),
        unreachable,
        lake.writer(_settings(tmp_path / "home"), "this test"),
    ):
        pass
