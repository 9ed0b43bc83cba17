"""Advisory locks on a file (``flock``): released by the kernel when the holder exits.

A killed holder never leaves a stale lock behind. The lock file also records who holds
it (pid, host, what, since), so a process that has to wait can say for whom.
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

LOGGER = logging.getLogger(__name__)


class LockBusyError(RuntimeError):
    """Another live process held the lock for longer than the caller would wait."""


def try_lock(path: Path, holder: str) -> int | None:
    """A descriptor holding an exclusive lock on ``path``, or None if another process has it.

    ``holder`` (what the lock is held for) is written into the file for waiting processes.
    The lock lasts until the descriptor is closed or the process exits.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(descriptor)
        return None
    since = datetime.now(UTC).isoformat(timespec="seconds")
    note = f"pid {os.getpid()} on {socket.gethostname()}, {holder}, since {since}\n"
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, note.encode(), 0)
    return descriptor


def holder_of(path: Path) -> str:
    """Who holds (or last held) the lock at ``path``, as its holder wrote it."""
    try:
        return path.read_text().strip() or "unknown holder"
    except OSError:
        return "unknown holder"


@contextmanager
def exclusive(path: Path, holder: str, *, timeout_s: float, poll_s: float = 0.5) -> Iterator[None]:
    """Hold the lock at ``path`` for the ``with`` block, waiting up to ``timeout_s`` for it.

    Raises :class:`LockBusyError`, naming the holder, when the wait runs out.
    """
    deadline = time.monotonic() + timeout_s
    waiting = False
    while (descriptor := try_lock(path, holder)) is None:
        if not waiting:
            LOGGER.warning(
                "waiting up to %g s for %s, held by %s", timeout_s, path, holder_of(path)
            )
            waiting = True
        if time.monotonic() >= deadline:
            raise LockBusyError(
                f"{path} is locked by {holder_of(path)}; waited {timeout_s:g} s. Wait for that "
                "process to finish (or stop it) and run again."
            )
        time.sleep(poll_s)
    try:
        yield
    finally:
        os.close(descriptor)
