"""Waiting for an event a test caused (a file, a process state), never for a fixed time."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable

POLL_S = 0.05


def wait_for(
    condition: Callable[[], object],
    timeout_s: float,
    what: str,
    process: subprocess.Popen | None = None,
) -> None:
    """Return once ``condition()`` is true; fail naming ``what`` after ``timeout_s``.

    With ``process``, fail at once if it exits first.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"{what}: the process exited with {process.returncode} first")
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} (waited {timeout_s:g} s)")
        time.sleep(POLL_S)


def stop_group(process: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM to ``process``'s group (started with ``start_new_session``), SIGKILL after
    ``timeout_s``: what a test started stops with every process of it."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
