"""Hand-written rows of the images table (tiny PNGs, fixed dates) for gate and page tests."""

from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime
from functools import cache
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from visionloop.lake.contract import IMAGES_SCHEMA, split_for
from visionloop.settings import Settings, SplitFractions


@cache
def tiny_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (200, 30, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


def image_id_of(index: int) -> str:
    return hashlib.sha256(f"image-{index}".encode()).hexdigest()


def gate_rows(
    ids: range, labels: tuple[str | None, ...] = ("cat", "dog"), **fields: Any
) -> list[dict[str, Any]]:
    now = datetime(2024, 1, 1, tzinfo=UTC)
    rows = []
    for index in ids:
        image_id = image_id_of(index)
        label = labels[index % len(labels)]
        row = {
            "image_id": image_id,
            "image": tiny_png(),
            "image_format": "PNG",
            "label": label,
            "label_source": "seed" if label else None,
            "annotator": None,
            "labelled_at": now if label else None,
            "split": split_for(image_id, SplitFractions()),
            "width": 32,
            "height": 24,
            "mode": "RGB",
            "source_format": "PNG",
            "source_uri": f"file:///landing/{index}.png",
            "ingested_at": now,
        }
        rows.append(row | fields)
    return rows


def write_gate_rows(
    directory: Path, rows: list[dict[str, Any]], row_group_size: int = 1024
) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
    pq.write_table(table, directory / "part-0.parquet", row_group_size=row_group_size)


def commit_gate_rows(settings: Settings, batch_id: str, rows: list[dict[str, Any]]) -> None:
    write_gate_rows(settings.images_dir / f"batch_id={batch_id}", rows)


def stage_gate_rows(settings: Settings, batch_id: str, rows: list[dict[str, Any]]) -> None:
    write_gate_rows(settings.staging_dir / batch_id / "images", rows)
