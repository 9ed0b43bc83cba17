"""Folders of the files shipped with the package: the checkout's folders, or their copies in
an installed wheel (the Feast repository, the expectation suites, the Prefect deployments)."""

from __future__ import annotations

import os
from importlib.resources import files
from pathlib import Path


def folder(package: str) -> Path:
    """Where the files of ``package`` (``visionloop.expectations``, say) are on disk."""
    return Path(str(files(package)))


def code_root() -> Path:
    """The folder the deployments' entrypoints (``flows/nightly.py``) are relative to: the
    checkout, or the installed package's folder."""
    return folder("visionloop.flows").parent


def enter_code_root() -> dict[str, str]:
    """The deployments' Prefect pull step: work in this environment's :func:`code_root`.

    It runs in the flow run's process on the worker, so each worker runs the flows of its own
    installation; a deployment names no folder of the machine it was deployed from.
    """
    root = code_root()
    os.chdir(root)
    return {"directory": str(root)}
