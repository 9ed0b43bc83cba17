"""Tiny, real lake tables for tests, made from the Debian Fashion-MNIST files.

``/usr/share/datasets/fashion-mnist/*.gz`` are the original idx files (read by
:mod:`visionloop.ingest.samples`). Images are stored like the ingest job stores them: RGB
PNG (grey replicated to three channels) at ``size`` x ``size``, in a hive-partitioned
Parquet images table (``images/batch_id=<id>/part-*.parquet``) with ``IMAGES_SCHEMA`` and
bounded row groups; splits come from :func:`visionloop.lake.contract.split_for`. Batches
are staged and committed through :mod:`visionloop.lake.commit`, which keeps the label map.
"""

from __future__ import annotations

import functools
import hashlib
import io
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from visionloop.ingest.samples import CLASS_NAMES, load_part
from visionloop.lake import commit as lake
from visionloop.lake.contract import IMAGES_SCHEMA, split_for
from visionloop.lake.label_events import seed_events
from visionloop.preprocessing import ImageOptions, process_image_bytes
from visionloop.settings import Settings, SplitFractions, load_settings

FASHION_CLASSES = CLASS_NAMES
_SIDE = 28
_cached_part = functools.cache(load_part)


def fashion_mnist(
    count: int, *, train: bool = True, offset: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """``(images (N, 28, 28) uint8, labels (N,) int64)``: images ``offset .. offset+count``."""
    images, labels = _cached_part("train" if train else "test")
    if offset + count > len(labels):
        raise ValueError(f"Fashion-MNIST has fewer than {offset + count} images in that part")
    window = slice(offset, offset + count)
    return images[window], labels[window].astype(np.int64)


def to_rgb_image(pixels: np.ndarray, size: int) -> Image.Image:
    image = Image.fromarray(pixels)
    if size != _SIDE:
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    return image.convert("RGB")


def encode_png(pixels: np.ndarray, size: int) -> bytes:
    buffer = io.BytesIO()
    to_rgb_image(pixels, size).save(buffer, format="PNG")
    return buffer.getvalue()


def stored_image(image: Image.Image, fmt: str = "PNG", **params: object) -> bytes:
    """``image`` saved as ``fmt``, then as the ingest job stores it (64 px PNG)."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return process_image_bytes(buffer.getvalue(), ImageOptions(size=64, image_format="PNG")).image


def image_rows(
    count: int,
    *,
    size: int = 32,
    unlabelled: int = 0,
    classes: tuple[int, ...] | None = None,
    fractions: SplitFractions | None = None,
    offset: int = 0,
) -> list[dict]:
    """Rows of the images table: ``count`` labelled ones, then ``unlabelled`` ones.

    ``classes`` keeps only those Fashion-MNIST class numbers (more images are read to get
    ``count``). Duplicate images are dropped, so ids are unique.
    """
    fractions = fractions or SplitFractions(train=0.6, val=0.2, test=0.2)
    wanted = count + unlabelled
    pixels, labels = fashion_mnist(
        min(60_000 - offset, wanted * (10 if classes else 1) + 200), offset=offset
    )
    now = datetime.now(UTC)
    rows: list[dict] = []
    seen: set[str] = set()
    for image, label in zip(pixels, labels, strict=True):
        if classes is not None and int(label) not in classes:
            continue
        image_id = hashlib.sha256(image.tobytes()).hexdigest()
        if image_id in seen:
            continue
        seen.add(image_id)
        labelled = len(rows) < count
        rows.append(
            {
                "image_id": image_id,
                "image": encode_png(image, size),
                "image_format": "PNG",
                "label": FASHION_CLASSES[int(label)] if labelled else None,
                "label_source": "seed" if labelled else None,
                "annotator": None,
                "labelled_at": now if labelled else None,
                "split": split_for(image_id, fractions),
                "width": _SIDE,
                "height": _SIDE,
                "mode": "L",
                "source_format": "PNG",
                "source_uri": f"file:///fashion-mnist/{offset + len(rows)}.png",
                "ingested_at": now,
            }
        )
        if len(rows) == wanted:
            return rows
    raise ValueError(f"could not find {wanted} distinct images of classes {classes}")


def commit_rows(
    settings: Settings,
    rows: list[dict],
    *,
    batch_id: str = "b0",
    row_group_rows: int = 1024,
    parts: int = 1,
) -> list[Path]:
    """Stage ``rows`` as ``parts`` Parquet files of one batch and commit it; the files."""
    staging = lake.stage(settings, batch_id)
    names = []
    for part, chunk in enumerate(np.array_split(np.arange(len(rows)), parts)):
        table = pa.Table.from_pylist([rows[i] for i in chunk], schema=IMAGES_SCHEMA)
        staging.table("images").mkdir(exist_ok=True)
        name = f"part-{part:05d}.parquet"
        pq.write_table(
            table, staging.table("images") / name, row_group_size=row_group_rows, compression="zstd"
        )
        names.append(name)
    events = seed_events(pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), datetime.now(UTC))
    staging.table("label_events").mkdir()
    pq.write_table(events, staging.table("label_events") / "part-00000.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id, "written": len(rows)})
    return [settings.images_dir / f"batch_id={batch_id}" / name for name in names]


def tiny_lake(
    data_home: Path,
    *,
    labelled: int = 240,
    unlabelled: int = 40,
    size: int = 32,
    row_group_rows: int = 32,
    batches: int = 2,
    classes: tuple[int, ...] | None = None,
    **overrides: object,
) -> Settings:
    """Settings whose lake holds a small images table split over ``batches`` batches."""
    settings = load_settings(data_home=data_home, image_size=size, **overrides)
    rows = image_rows(labelled, size=size, unlabelled=unlabelled, classes=classes)
    order = np.random.default_rng(0).permutation(len(rows))  # mix labelled and unlabelled
    for number, chunk in enumerate(np.array_split(order, batches)):
        commit_rows(
            settings,
            [rows[i] for i in chunk],
            batch_id=f"b{number}",
            row_group_rows=row_group_rows,
            parts=2,
        )
    return settings
