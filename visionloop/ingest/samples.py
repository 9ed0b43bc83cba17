"""Fashion-MNIST from Debian's ``dataset-fashion-mnist`` package, written out as PNG files.

The project ships a small sample made with :func:`write_sample`; :func:`materialise`
writes the full 70k images into a landing folder when the package is installed.
"""

from __future__ import annotations

import gzip
import struct
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASS_NAMES = (
    "t-shirt",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle-boot",
)
PARTS = {"train": "train", "test": "t10k"}


class DatasetMissingError(FileNotFoundError):
    """The Debian Fashion-MNIST files are not installed."""


def _read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as handle:
        magic, count = struct.unpack(">II", handle.read(8))
        dims = [count]
        if magic == 2051:  # images: rows, cols follow
            dims += list(struct.unpack(">II", handle.read(8)))
        return np.frombuffer(handle.read(), dtype=np.uint8).reshape(dims)


def load_part(part: str, source: Path = DEBIAN_DIR) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) and labels (N,) of the ``train`` or ``test`` part."""
    prefix = PARTS[part]
    images_path = source / f"{prefix}-images-idx3-ubyte.gz"
    labels_path = source / f"{prefix}-labels-idx1-ubyte.gz"
    if not images_path.is_file() or not labels_path.is_file():
        raise DatasetMissingError(
            f"Fashion-MNIST files not found in {source}; "
            "install them with `sudo apt-get install dataset-fashion-mnist`"
        )
    return _read_idx(images_path), _read_idx(labels_path)


def iter_images(source: Path = DEBIAN_DIR) -> Iterator[tuple[str, int, np.ndarray, int]]:
    """Yield (part, index, pixels, label) for all 70k images: train first, then test."""
    for part in PARTS:
        images, labels = load_part(part, source)
        for index, (pixels, label) in enumerate(zip(images, labels, strict=True)):
            yield part, index, pixels, int(label)


def _save_png(pixels: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels, mode="L").save(path, format="PNG")


def materialise(dest: Path, limit: int | None = None, source: Path = DEBIAN_DIR) -> int:
    """Write Fashion-MNIST as an ImageFolder (``dest/<class>/<part>-<index>.png``)."""
    written = 0
    for part, index, pixels, label in iter_images(source):
        if limit is not None and written >= limit:
            break
        _save_png(pixels, dest / CLASS_NAMES[label] / f"{part}-{index:05d}.png")
        written += 1
    return written


def write_sample(dest: Path, labelled: int, unlabelled: int, source: Path = DEBIAN_DIR) -> None:
    """Write the shipped sample: ``dest/labelled/<class>/*.png`` and ``dest/unlabelled/*.png``."""
    for count, (part, index, pixels, label) in enumerate(iter_images(source)):
        if count < labelled:
            _save_png(pixels, dest / "labelled" / CLASS_NAMES[label] / f"{part}-{index:05d}.png")
        elif count < labelled + unlabelled:
            _save_png(pixels, dest / "unlabelled" / f"{part}-{index:05d}.png")
        else:
            return
