"""Folders of the files shipped with the package: the checkout's folders, or their copies in
an installed wheel (the Feast repository, the expectation suites, the Prefect deployments)."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def folder(package: str) -> Path:
    """Where the files of ``package`` (``visionloop.expectations``, say) are on disk."""
    return Path(str(files(package)))
