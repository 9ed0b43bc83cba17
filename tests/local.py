"""Servers a test starts on 127.0.0.1: a free port for one, and whether it answers."""

from __future__ import annotations

import socket
import urllib.request


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def answers(url: str, timeout_s: float = 5) -> bool:
    """Whether ``url`` answers a GET with 200 (False while nothing listens, or on an error)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return response.status == 200
    except OSError:
        return False
