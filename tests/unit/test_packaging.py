"""The wheel holds every package the flows import (a worker runs from the installed wheel)."""

from __future__ import annotations

import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _configured() -> tuple[set[str], dict[str, str]]:
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return set(setuptools["packages"]), setuptools["package-dir"]


def test_every_package_of_the_source_tree_is_in_the_wheel() -> None:
    packages, folders = _configured()
    roots = {"visionloop": REPO / "visionloop"} | {name: REPO / f for name, f in folders.items()}
    found = set()
    for name, root in roots.items():
        for init in root.rglob("__init__.py"):
            relative = init.parent.relative_to(root).parts
            found.add(".".join((name, *relative)))
    assert found - packages == set(), "add these to [tool.setuptools] packages in pyproject.toml"
    assert packages - found == set(), "these listed packages have no folder"
