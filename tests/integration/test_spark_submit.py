"""Both Spark jobs run under ``spark-submit`` as they do in-process from the flows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.integration.test_registry import _register, _rows, _settings, make_checkpoint
from tests.lakes import commit_rows
from visionloop.lake.snapshot import list_table, take
from visionloop.registry.promotion import promote
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import REPO_ROOT, load_settings

SAMPLE = REPO_ROOT / "data" / "sample" / "labelled"
pytestmark = pytest.mark.slow


def _submit(job: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    command = [
        str(Path(sys.executable).parent / "spark-submit"),
        str(REPO_ROOT / "spark_jobs" / job),
        *args,
        "--config",
        str(config),
    ]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )


def _report(finished: subprocess.CompletedProcess[str]) -> dict:
    assert finished.returncode == 0, finished.stderr[-3000:]
    return json.loads(finished.stdout[finished.stdout.index("{") :])


def _rows_of(lake_dir: Path, table: str) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in list_table(lake_dir, table))


def test_preprocessing_runs_under_spark_submit(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    for class_dir in sorted(SAMPLE.iterdir())[:2]:
        (landing / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:6]:
            shutil.copy(path, landing / class_dir.name)
    settings = load_settings(data_home=tmp_path / "home", spark_master="local[2]", image_size=32)
    config = settings.save(tmp_path / "config")
    report = _report(_submit("preprocess_images.py", config, "--source", str(landing)))
    assert report["written"] == 12 and _rows_of(settings.lake_dir, "images") == 12


def test_embedding_and_scoring_run_under_spark_submit(tmp_path: Path) -> None:
    rows = _rows({"train": 8, "val": 4, "test": 4}, seed=2, unlabelled=4)
    settings = _settings(
        tmp_path / "home", spark_master="local[2]", promotion={"first_model_floor": 0.0}
    )
    commit_rows(settings, rows, batch_id="b1", row_group_rows=8)
    config = settings.save(tmp_path / "config")

    embedded = _report(_submit("infer_images.py", config, "embed"))
    assert embedded["written"] == len(rows) == _rows_of(settings.lake_dir, "embeddings")
    assert _report(_submit("infer_images.py", config, "embed"))["written"] == 0  # incremental

    no_champion = _submit("infer_images.py", config, "score")
    assert no_champion.returncode == 2  # spark-submit passes the job's stderr on as stdout
    assert "no champion of vl-test yet" in no_champion.stdout + no_champion.stderr

    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    model = make_checkpoint(tmp_path / "model.pt", rows, steps=0)
    registered, _ = _register(tracking, settings, snapshot, model, "spark-submit")
    promote(tracking, settings, snapshot, registered.version)
    assert tracking.alias_version(CHAMPION) == registered.version
    scored = _report(_submit("infer_images.py", config, "score"))
    assert scored["model_version"] == registered.version
    assert scored["written"] == len(rows) == _rows_of(settings.lake_dir, "predictions")
