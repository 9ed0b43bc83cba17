"""Read the lake's images table with petastorm, as a team that trains with petastorm would.

Runs in ``.venv-petastorm`` (petastorm 0.13.1 needs pyarrow < 15; see requirements/petastorm.txt):

    .venv-petastorm/bin/python scripts/read_with_petastorm.py .visionloop/lake/images

``make_batch_reader`` streams the Parquet table as it is (hive ``batch_id=`` partitions,
zstd, bounded row groups); petastorm's PyTorch ``DataLoader`` needs numeric columns, so a
``TransformSpec`` decodes the stored PNG/JPEG into uint8 CHW tensors and turns ``image_id``
into bytes. Prints one JSON line: rows and ids seen by each reader.
"""

from __future__ import annotations

import io
import json
import sys
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

warnings.filterwarnings("ignore", category=FutureWarning, module="petastorm")
warnings.filterwarnings("ignore", category=ResourceWarning)

from petastorm import TransformSpec, make_batch_reader  # noqa: E402
from petastorm.pytorch import DataLoader  # noqa: E402

ID_BYTES = 64  # sha256 hex


def reader(url: str, **options):
    # One reader thread in order: petastorm's default thread pool with shuffled row groups
    # sometimes ends an epoch before handing out any work (0 rows, no error).
    return make_batch_reader(
        url, reader_pool_type="dummy", shuffle_row_groups=False, num_epochs=1, **options
    )


def to_tensors(frame):
    """Decode images to uint8 CHW arrays; ids to fixed-size bytes (torch takes no strings)."""
    out = frame[[]].copy()
    out["image"] = [
        np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).transpose(2, 0, 1).copy()
        for data in frame["image"]
    ]
    out["image_id"] = [np.frombuffer(value.encode(), np.uint8) for value in frame["image_id"]]
    return out


def main(images_dir: str, size: int) -> None:
    url = Path(images_dir).resolve().as_uri()
    batch_rows, batch_ids = 0, set()
    with reader(url) as batches:
        for batch in batches:
            batch_rows += len(batch.image_id)
            batch_ids.update(batch.image_id.tolist())
    spec = TransformSpec(
        to_tensors,
        edit_fields=[
            ("image", np.uint8, (3, size, size), False),
            ("image_id", np.uint8, (ID_BYTES,), False),
        ],
        selected_fields=["image", "image_id"],
    )
    loader_rows, loader_ids, shape = 0, set(), None
    with DataLoader(reader(url, transform_spec=spec), batch_size=64) as loader:
        for batch in loader:
            loader_rows += batch["image"].shape[0]
            shape = list(batch["image"].shape[1:])
            loader_ids.update(bytes(row).decode() for row in batch["image_id"].numpy())
    print(
        json.dumps(
            {
                "batch_reader": {"rows": batch_rows, "ids": sorted(batch_ids)},
                "torch_loader": {"rows": loader_rows, "ids": sorted(loader_ids), "shape": shape},
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 64)
