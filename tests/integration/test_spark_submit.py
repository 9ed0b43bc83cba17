"""Both Spark jobs run under ``spark-submit`` as they do in-process from the flows, on
``local[2]`` and on a standalone cluster (a master and two workers on 127.0.0.1), where
every worker runs executors of each job."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_registry import _register, _rows, _settings, make_checkpoint
from tests.lakes import commit_rows
from tests.spark_cluster import Cluster, standalone_cluster
from tests.spark_jobs import report_of, submit, table_rows
from tests.waiting import wait_for
from visionloop.lake.snapshot import take
from visionloop.registry.promotion import promote
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import REPO_ROOT, load_settings

SAMPLE = REPO_ROOT / "data" / "sample" / "labelled"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with standalone_cluster(tmp_path_factory.mktemp("spark-cluster")) as running:
        yield running


@pytest.fixture(params=["local", "standalone"])
def engine(request: pytest.FixtureRequest) -> Cluster | None:
    """Where the jobs run: None for ``local[2]``, else the cluster."""
    return request.getfixturevalue("cluster") if request.param == "standalone" else None


def _on(engine: Cluster | None) -> dict:
    return engine.settings() if engine else {"spark_master": "local[2]"}


def _ran_on_every_worker(engine: Cluster | None, app_name: str) -> None:
    if engine is None:
        return
    wait_for(lambda: engine.latest_app(app_name), 30, f"the master lists {app_name} as finished")
    assert engine.ran_on_every_worker(engine.latest_app(app_name)), app_name


def test_preprocessing_runs_under_spark_submit(tmp_path: Path, engine: Cluster | None) -> None:
    landing = tmp_path / "landing"
    for class_dir in sorted(SAMPLE.iterdir())[:2]:
        (landing / class_dir.name).mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:6]:
            shutil.copy(path, landing / class_dir.name)
    settings = load_settings(data_home=tmp_path / "home", image_size=32, **_on(engine))
    config = settings.save(tmp_path / "config")
    report = report_of(submit("preprocess_images.py", config, "--source", str(landing)))
    assert report["written"] == 12 and table_rows(settings.lake_dir, "images") == 12
    _ran_on_every_worker(engine, "visionloop-preprocess")


def test_embedding_and_scoring_run_under_spark_submit(
    tmp_path: Path, engine: Cluster | None
) -> None:
    rows = _rows({"train": 8, "val": 4, "test": 4}, seed=2, unlabelled=4)
    settings = _settings(tmp_path / "home", promotion={"first_model_floor": 0.0}, **_on(engine))
    commit_rows(settings, rows, batch_id="b1", row_group_rows=8)
    config = settings.save(tmp_path / "config")

    embedded = report_of(submit("infer_images.py", config, "embed"))
    assert embedded["written"] == len(rows) == table_rows(settings.lake_dir, "embeddings")
    _ran_on_every_worker(engine, "visionloop-embed")
    assert report_of(submit("infer_images.py", config, "embed"))["written"] == 0  # incremental

    no_champion = submit("infer_images.py", config, "score")
    assert no_champion.returncode == 2  # spark-submit passes the job's stderr on as stdout
    assert "no champion of vl-test yet" in no_champion.stdout + no_champion.stderr

    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    model = make_checkpoint(tmp_path / "model.pt", rows, steps=0)
    registered, _ = _register(tracking, settings, snapshot, model, "spark-submit")
    promote(tracking, settings, snapshot, registered.version)
    assert tracking.alias_version(CHAMPION) == registered.version
    scored = report_of(submit("infer_images.py", config, "score"))
    assert scored["model_version"] == registered.version
    assert scored["written"] == len(rows) == table_rows(settings.lake_dir, "predictions")
    _ran_on_every_worker(engine, "visionloop-score")
