"""A long-lived Spark Connect server on 127.0.0.1 runs night after night of ingest and
embedding: the jobs attach to it, so its JVM and Python workers start once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.spark_cluster import connect_server
from tests.spark_jobs import report_of, run_job, table_rows
from visionloop.settings import REPO_ROOT, load_settings

SAMPLE = REPO_ROOT / "data" / "sample" / "labelled"
pytestmark = pytest.mark.slow


def _arrive(landing: Path, start: int, count: int) -> None:
    """``count`` more sample images of two classes land (the next ones after ``start``)."""
    for class_dir in sorted(SAMPLE.iterdir())[:2]:
        (landing / class_dir.name).mkdir(parents=True, exist_ok=True)
        for path in sorted(class_dir.iterdir())[start : start + count]:
            shutil.copy(path, landing / class_dir.name)


def _tasks_run(log: Path) -> int:
    return log.read_text().count("Finished task")


def test_two_nights_run_on_one_connect_server(tmp_path: Path) -> None:
    landing = tmp_path / "landing"
    with connect_server(tmp_path / "connect") as (url, server):
        log = tmp_path / "connect" / "connect-server.log"
        settings = load_settings(
            data_home=tmp_path / "home",
            spark_master=url,
            image_size=32,
            embeddings={"input_size": 32},
        )
        config = settings.save(tmp_path / "config")
        for night, (start, count) in enumerate([(0, 6), (6, 4)]):
            _arrive(landing, start, count)
            before = _tasks_run(log)
            ingested = report_of(run_job("preprocess_images.py", config, "--source", str(landing)))
            assert (ingested["listed"], ingested["written"]) == (2 * (start + count), 2 * count)
            embedded = report_of(run_job("infer_images.py", config, "embed"))
            assert embedded["written"] == 2 * count, night
            assert _tasks_run(log) > before  # the server's executor ran them
        assert server.poll() is None  # one server, both nights
    assert table_rows(settings.lake_dir, "images") == 20
    assert table_rows(settings.lake_dir, "embeddings") == 20
