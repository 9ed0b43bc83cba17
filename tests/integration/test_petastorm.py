"""petastorm reads the lake the real Spark job wrote, in its own environment (.venv-petastorm).

Teams that train with petastorm get the same rows and ids from ``make_batch_reader`` and
from petastorm's PyTorch ``DataLoader`` as pyarrow sees.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from visionloop.ingest.landing import LandingSource
from visionloop.parameters import SAMPLE_DIR
from visionloop.settings import REPO_ROOT, load_settings
from visionloop.spark_jobs.preprocess_images import run_batch

pytestmark = pytest.mark.slow
PETASTORM_PYTHON = REPO_ROOT / ".venv-petastorm" / "bin" / "python"


def test_petastorm_reads_every_row_of_the_spark_written_lake(spark, tmp_path: Path) -> None:
    assert PETASTORM_PYTHON.exists(), "run `make petastorm` (make test does)"
    settings = load_settings(
        data_home=tmp_path / "home", image_size=32, parquet_row_group_rows=50, spark_partitions=3
    )
    sources = [
        LandingSource(path=str(SAMPLE_DIR / "labelled" / "coat"), layout="unlabelled"),
        LandingSource(path=str(SAMPLE_DIR / "unlabelled"), layout="unlabelled"),
    ]
    run_batch(spark, settings, sources)
    run_batch(spark, settings, [LandingSource(path=str(SAMPLE_DIR / "labelled"))])
    table = ds.dataset(settings.images_dir, format="parquet", partitioning="hive").to_table(
        columns=["image_id", "batch_id"]
    )
    assert len(set(table["batch_id"].to_pylist())) == 2

    result = subprocess.run(
        [str(PETASTORM_PYTHON), "scripts/read_with_petastorm.py", str(settings.images_dir), "32"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    lines = result.stdout.splitlines()  # petastorm prints "Cache cleanup complete." too
    read = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
    ids = sorted(table["image_id"].to_pylist())
    assert read["batch_reader"] == {"rows": table.num_rows, "ids": ids}
    assert read["torch_loader"]["rows"] == table.num_rows and read["torch_loader"]["ids"] == ids
    assert read["torch_loader"]["shape"] == [3, 32, 32]
