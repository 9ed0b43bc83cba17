"""The project's wheel, and fresh interpreter environments that hold it (issue 14 §4).

An environment sees the installed third-party stack (this environment's site-packages, by a
``.pth`` line) but neither the checkout nor its editable install: ``visionloop`` is the
wheel's copy.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
from pathlib import Path

from visionloop.settings import REPO_ROOT

#: The CLI, as a file an installed environment runs (never ``python -c``: pyspark exits a
#: program whose ``__main__`` has no file).
CLI = "from visionloop.cli import app\n\napp()\n"


def build_wheel(dist: Path) -> Path:
    """``pip wheel`` of the checkout into ``dist``; the wheel's path."""
    build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
    subprocess.run([*build, "-w", str(dist), str(REPO_ROOT)], check=True, cwd=dist.parent)
    (wheel,) = dist.glob("visionloop-*.whl")
    return wheel


def install_wheel(wheel: Path, venv: Path) -> Path:
    """A fresh environment at ``venv`` with ``wheel`` installed; its ``python``."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "stack.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(site)]
    subprocess.run([*pip, str(wheel)], check=True)
    return venv / "bin" / "python"
