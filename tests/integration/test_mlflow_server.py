"""MLflow as a shared server: the registry on SQLite, artifacts proxied to object storage.

The server alone holds the object store's credentials (``--artifacts-destination s3://…``);
training registers through it and scoring fetches the model back through it, from a client
that has no credentials of the bucket.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.test_registry import _register, _rows, _settings, make_checkpoint
from tests.lakes import commit_rows
from tests.local import free_port
from tests.s3_server import S3Server, s3_server
from tests.waiting import wait_for
from visionloop.lake.snapshot import take
from visionloop.registry.promotion import promote
from visionloop.registry.served_model import champion_scoring
from visionloop.registry.tracking import Tracking

MLFLOW = Path(sys.executable).parent / "mlflow"
pytestmark = pytest.mark.slow


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


@contextmanager
def mlflow_server(home: Path, s3: S3Server, prefix: str) -> Iterator[str]:
    """``mlflow server`` on 127.0.0.1, registry in SQLite under ``home``, artifacts proxied to
    ``s3://<bucket>/<prefix>``; its URL."""
    home.mkdir(parents=True, exist_ok=True)
    url = f"http://127.0.0.1:{free_port()}"
    command = [
        str(MLFLOW),
        "server",
        *("--host", "127.0.0.1", "--port", url.rsplit(":", 1)[1], "--workers", "1"),
        *("--backend-store-uri", f"sqlite:///{home / 'mlflow.db'}"),
        *("--artifacts-destination", f"s3://{s3.bucket}/{prefix}"),
    ]
    with (home / "server.log").open("w") as log:
        server = subprocess.Popen(
            command,
            env={**os.environ, **s3.environment()},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _healthy(url), 120, f"the MLflow server answering (log in {home})", server)
        yield url
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)


def test_models_are_registered_and_served_through_the_server_from_object_storage(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [name for name in os.environ if name.startswith("AWS_")]:
        monkeypatch.delenv(name)  # the client never holds the bucket's credentials
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    with (
        s3_server(tmp_path / "s3", bucket="mlflow") as s3,
        mlflow_server(tmp_path / "mlflow", s3, "artifacts") as url,
    ):
        rows = _rows({"train": 8, "val": 4, "test": 4}, seed=3)
        home = tmp_path / "home"
        settings = _settings(home, mlflow_tracking_uri=url, promotion={"first_model_floor": 0.0})
        commit_rows(settings, rows, batch_id="b1", row_group_rows=8)
        tracking = Tracking.connect(settings)
        snapshot = take(settings.lake_dir)
        model = make_checkpoint(tmp_path / "model.pt", rows, steps=0)
        registered, _ = _register(tracking, settings, snapshot, model, "shared server")
        promote(tracking, settings, snapshot, registered.version)

        stored = s3.keys("artifacts/")
        assert any(key.endswith("/model.pt") for key in stored), stored[:20]
        assert any("/eval/" in key for key in stored)  # the evaluation artifacts too
        assert not (home / "mlartifacts").exists() and not (home / "mlruns").exists()

        job = champion_scoring(settings, tracking)  # fetched back through the server
        assert job is not None and job.model_version == registered.version
        assert Path(job.model_pt).read_bytes()[:2] == b"PK"  # a torch zip archive
