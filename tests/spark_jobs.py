"""Running the project's Spark jobs as their own processes, as a person or a scheduler does
(``spark-submit``, or plain ``python`` against a Spark Connect server), and reading back
what they report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from visionloop.lake.snapshot import list_table
from visionloop.settings import REPO_ROOT


def submit(job: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``spark-submit spark_jobs/<job> *args --config <config>``, finished."""
    return _run([str(Path(sys.executable).parent / "spark-submit")], job, config, args)


def run_job(job: str, config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``python spark_jobs/<job> *args --config <config>``: the session comes from the settings
    (a Spark Connect server's ``sc://`` URL, say), no spark-submit."""
    return _run([sys.executable], job, config, args)


def _run(
    launcher: list[str], job: str, config: Path, args: tuple[str, ...]
) -> subprocess.CompletedProcess[str]:
    environment = {
        **os.environ,
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "SPARK_LOCAL_IP": "127.0.0.1",
    }
    command = [*launcher, str(REPO_ROOT / "spark_jobs" / job), *args, "--config", str(config)]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=environment, capture_output=True, text=True, timeout=900
    )


def report_of(finished: subprocess.CompletedProcess[str]) -> dict:
    """The JSON report a job printed last (spark-submit passes its stderr on as stdout)."""
    assert finished.returncode == 0, (finished.stdout + finished.stderr)[-3000:]
    return json.loads(finished.stdout[finished.stdout.index("{") :])


def table_rows(lake_dir: Path, table: str) -> int:
    return sum(pq.ParquetFile(path).metadata.num_rows for path in list_table(lake_dir, table))
