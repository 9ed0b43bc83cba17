"""A real headless Chromium (Debian's package) that renders a page and hands back its DOM.

``make test`` installs ``chromium``; the flags keep it off the network it cannot reach and
out of any profile but a fresh one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from html.parser import HTMLParser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,2200",
]


def chromium() -> str:
    found = shutil.which("chromium")
    if found is None:
        raise AssertionError("chromium is not installed: run `make browser` (make test does)")
    return found


class Page(HTMLParser):
    """The rendered DOM's text, and the text of each ``<label>``."""

    def __init__(self) -> None:
        super().__init__()
        self.labels: list[str] = []
        self.texts: list[str] = []
        self._depth = 0
        self._current: list[str] = []

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self._depth += tag == "label"

    def handle_endtag(self, tag: str) -> None:
        if tag == "label" and self._depth:
            self._depth -= 1
            if not self._depth:
                self.labels.append(" ".join("".join(self._current).split()))
                self._current = []

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        if self._depth:
            self._current.append(data)

    @property
    def text(self) -> str:
        return "".join(self.texts)


def render(url: str, budget_ms: int = 10_000, timeout_s: float = 120) -> Page:
    """Load ``url``, let its scripts run for ``budget_ms`` of virtual time, parse the DOM."""
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        command = [chromium(), *FLAGS, f"--user-data-dir={profile}"]
        command += [f"--virtual-time-budget={budget_ms}", "--dump-dom", url]
        process = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        try:
            html, _ = process.communicate(timeout=timeout_s)
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    page = Page()
    page.feed(html)
    return page
