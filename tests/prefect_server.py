"""A Prefect server on a free 127.0.0.1 port with its own home, started for a test and
stopped after it; the test process talks to it while it runs."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from prefect.events.worker import EventsWorker
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.local import free_port
from tests.waiting import wait_for

PREFECT = Path(sys.executable).parent / "prefect"


def _healthy(api: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api}/health", timeout=2):
            return True
    except OSError:
        return False


@contextmanager
def prefect_server(home: Path) -> Iterator[str]:
    """The server's API URL (also this process's Prefect API while the block runs)."""
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    environment = os.environ | {
        "PREFECT_HOME": str(home),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    server = subprocess.Popen(
        [str(PREFECT), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=environment,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: _healthy(api), 180, "Prefect server healthy", server)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            try:
                yield api
            finally:
                EventsWorker.drain_all()  # the events this process sent, before the server stops
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
