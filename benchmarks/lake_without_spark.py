"""Write Fashion-MNIST into a lake where Spark cannot run (the lent GPU machine has no Java).

Every image goes through the same per-file preprocessing as the Spark job
(``visionloop.preprocessing``), gets its split from ``visionloop.lake.contract.split_for``
and is committed through ``visionloop.lake.commit`` (which keeps the label map) into an
images table of the same contract, so the training pipeline reads it unchanged. It does not
deduplicate or quarantine: use the Spark job for real ingestion.

    python -m benchmarks.lake_without_spark --source /usr/share/datasets/fashion-mnist \
        --data-home /tmp/fmnist-home [--limit N]
"""

from __future__ import annotations

import argparse
import io
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from visionloop.ingest.samples import CLASS_NAMES, DEBIAN_DIR, iter_images
from visionloop.lake import commit as lake
from visionloop.lake.contract import IMAGES_SCHEMA, split_for
from visionloop.preprocessing import ProcessedImage, image_options, process_image_bytes
from visionloop.settings import Settings, load_settings

ROWS_PER_FILE = 10_000
BATCH_ID = "fashion-mnist"


def png_bytes(pixels) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def image_row(pixels, label: int, source_uri: str, settings: Settings, now: datetime) -> dict:
    """One images-table row, preprocessed as the Spark job does (no dedup, no quarantine)."""
    result = process_image_bytes(png_bytes(pixels), image_options(settings))
    assert isinstance(result, ProcessedImage), result
    return {
        "image_id": result.image_id,
        "image": result.image,
        "image_format": result.image_format,
        "label": CLASS_NAMES[label],
        "label_source": "seed",
        "labelled_at": now,
        "split": split_for(result.image_id, settings.split),
        "width": result.width,
        "height": result.height,
        "mode": result.mode,
        "source_format": result.source_format,
        "source_uri": source_uri,
        "ingested_at": now,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=DEBIAN_DIR)
    parser.add_argument("--data-home", type=Path, required=True)
    parser.add_argument("--limit", type=int)
    args = parser.parse_args()
    settings = load_settings(data_home=args.data_home)
    staging = lake.stage(settings, BATCH_ID)
    directory = staging.table("images")
    now = datetime.now(UTC)
    rows: list[dict] = []
    files = 0
    for count, (part, index, pixels, label) in enumerate(iter_images(args.source)):
        if args.limit is not None and count >= args.limit:
            break
        source_uri = f"{args.source}/{part}#{index}"
        rows.append(image_row(pixels, label, source_uri, settings, now))
        if len(rows) == ROWS_PER_FILE:
            write_part(directory, files, rows)
            rows, files = [], files + 1
    write_part(directory, files, rows)
    lake.commit(settings, BATCH_ID, {"batch_id": BATCH_ID, "source": str(args.source)})
    print(f"committed batch {BATCH_ID} into {settings.images_dir}")


def write_part(directory: Path, number: int, rows: list[dict]) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
    pq.write_table(table, directory / f"part-{number:05d}.parquet", row_group_size=1024)


if __name__ == "__main__":
    main()
