"""File locks between real processes: waiting, naming the holder, release on death."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from visionloop import locks
from visionloop.lake import commit as lake
from visionloop.settings import load_settings
from visionloop.training.checkpoint import RunLockedError, lock_run

HOLD = """
import sys, time
from pathlib import Path
from visionloop.locks import try_lock
assert try_lock(Path(sys.argv[1]), "the other batch") is not None
print("held", flush=True)
time.sleep(600)
"""


@pytest.fixture
def other_process_holding(tmp_path: Path):
    """Start a process that holds ``settings.lake_dir/.writer.lock``; yields (settings, proc)."""
    settings = load_settings(data_home=tmp_path, lake_lock_timeout_s=0.3)
    path = settings.lake_dir / ".writer.lock"
    process = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert process.stdout.readline().strip() == "held"
        yield settings, process
    finally:
        process.kill()
        process.wait()


def test_a_second_lake_writer_waits_then_names_the_holder(other_process_holding) -> None:
    settings, process = other_process_holding
    with pytest.raises(locks.LockBusyError) as error, lake.writer(settings, "this batch"):
        pytest.fail("entered while another process held the lock")
    message = str(error.value)
    assert f"pid {process.pid}" in message and "the other batch" in message
    assert "waited 0.3 s" in message


def test_the_lock_dies_with_its_holder(other_process_holding) -> None:
    settings, process = other_process_holding
    process.send_signal(signal.SIGKILL)
    process.wait()
    with lake.writer(settings, "this batch"):
        assert f"pid {os.getpid()}" in locks.holder_of(settings.lake_dir / ".writer.lock")


def test_the_lock_is_released_when_the_block_raises(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    with pytest.raises(ValueError), locks.exclusive(path, "first", timeout_s=0):
        raise ValueError("boom")
    descriptor = locks.try_lock(path, "second")
    assert descriptor is not None
    os.close(descriptor)


def test_a_second_training_run_into_one_directory_is_refused(tmp_path: Path) -> None:
    descriptor = lock_run(tmp_path / "run")
    try:
        with pytest.raises(RunLockedError, match=f"pid {os.getpid()}"):
            lock_run(tmp_path / "run")
    finally:
        os.close(descriptor)
