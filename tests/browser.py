"""A real headless Chromium (Debian's package): a rendered DOM, or a browser to drive.

``make test`` installs ``chromium`` and ``chromium-driver``; the flags keep it off the
network it cannot reach and out of any profile but a fresh one.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from html.parser import HTMLParser
from typing import Any

from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.support.ui import WebDriverWait

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


def _installed(program: str) -> str:
    found = shutil.which(program)
    if found is None:
        raise AssertionError(f"{program} is not installed: `make debian-packages` (make test does)")
    return found


def chromium() -> str:
    return _installed("chromium")


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


@contextmanager
def driven() -> Iterator[webdriver.Chrome]:
    """A headless Chromium driven over WebDriver, closed afterwards."""
    options = webdriver.ChromeOptions()
    options.binary_location = chromium()
    with tempfile.TemporaryDirectory(prefix="chromium-") as profile:
        for flag in [*FLAGS, f"--user-data-dir={profile}"]:
            options.add_argument(flag)
        driver = webdriver.Chrome(service=Service(_installed("chromedriver")), options=options)
        try:
            yield driver
        finally:
            driver.quit()


def wait_for(driver: webdriver.Chrome, script: str, timeout_s: float = 60) -> Any:
    """The first truthy value ``script`` (JavaScript that returns one) gives on the page."""
    wait = WebDriverWait(driver, timeout_s, poll_frequency=0.5)
    return wait.until(lambda page: page.execute_script(script))
