"""What every benchmark shares: a fresh work folder, the machine, alternating rounds, JSON out.

Every run measures afresh: :func:`fresh_workdir` is a new empty folder (nothing resumed or
reused from an earlier run). The machine is noisy, so :func:`alternate` runs baseline and
subject in turn for several rounds and reports the median ratio and its spread.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import tempfile
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def fresh_workdir(name: str) -> Path:
    """A new, empty folder for one benchmark run."""
    return Path(tempfile.mkdtemp(prefix=f"vl-bench-{name}-"))


def machine() -> dict[str, Any]:
    import torch

    return {
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 2**30),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def spread(values: list[float]) -> dict[str, float]:
    return {
        "median": round(statistics.median(values), 4),
        "min": round(min(values), 4),
        "max": round(max(values), 4),
    }


def alternate(
    baseline: Callable[[], float], subject: Callable[[], float], rounds: int
) -> dict[str, Any]:
    """Run ``baseline`` then ``subject`` ``rounds`` times; both return a rate (higher is better).

    The ratio is subject / baseline within each round, so both see the same machine state.
    """
    baselines, subjects = [], []
    for _ in range(rounds):
        baselines.append(baseline())
        subjects.append(subject())
    ratios = [s / b for s, b in zip(subjects, baselines, strict=True)]
    return {
        "baseline": [round(value, 2) for value in baselines],
        "subject": [round(value, 2) for value in subjects],
        "ratio": spread(ratios),
    }


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(f"wrote {path}")
    return path
