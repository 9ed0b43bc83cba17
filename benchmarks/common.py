"""What every benchmark shares: a fresh work folder, the machine, alternating rounds, JSON out.

Every run measures afresh: :func:`fresh_workdir` is a new empty folder (nothing resumed or
reused from an earlier run). The machine is noisy, so :func:`alternate` runs baseline and
subject in turn for several rounds and reports the median ratio and its spread.
"""

from __future__ import annotations

import io
import json
import os
import platform
import statistics
import tempfile
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import psutil
from PIL import Image

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


def small_cpu_settings(home: Path, training: dict[str, Any], **extra: Any) -> Any:
    """Settings for a whole-loop benchmark on the CPU: 32 px images and embeddings, a first
    champion always promoted, the given training recipe, and ``extra`` settings."""
    from visionloop.settings import load_settings

    return load_settings(
        data_home=home,
        image_size=32,
        training=training,
        promotion={"first_model_floor": 0.0},
        embeddings={"input_size": 32},
        **extra,
    )


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps({"machine": machine(), **result}, indent=2) + "\n")
    print(f"wrote {path}")
    return path


class PeakMemory:
    """Samples RSS of this process (driver), its JVM and its Python workers."""

    def __init__(self) -> None:
        self.driver = self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.wait(0.1):
            driver, workers = me.memory_info().rss, 0
            for child in me.children(recursive=True):
                try:
                    rss = child.memory_info().rss
                    if "java" in child.name():
                        driver += rss
                    else:
                        workers += rss
                except psutil.Error:
                    continue
            self.driver, self.workers = max(self.driver, driver), max(self.workers, workers)


def fashion_mnist_embeddings(
    parts: tuple[str, ...] = ("train", "test"), limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The project's embedder vectors of Fashion-MNIST ``parts`` (the first ``limit`` of
    each) and their labels.

    Each image is encoded as the PNG file it ships as and goes through the embedder's own
    input path (ingest preprocessing, then the evaluation transform), as in the lake.
    """
    from visionloop.embeddings.embedder import embedder_source
    from visionloop.ingest.samples import load_part
    from visionloop.settings import load_settings

    embedder = embedder_source(load_settings()).build()
    images, labels = [], []
    for part in parts:
        pixels_of_part, labels_of_part = load_part(part)
        for pixels, label in zip(pixels_of_part[:limit], labels_of_part[:limit], strict=True):
            encoded = io.BytesIO()
            Image.fromarray(pixels, mode="L").save(encoded, format="PNG")
            images.append(encoded.getvalue())
            labels.append(int(label))
    return embedder.embed(images).astype(np.float32), np.asarray(labels)
