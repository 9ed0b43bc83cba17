"""A real Prefect server on 127.0.0.1: deploy, trigger the nightly run, see it finish."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pyarrow.dataset as ds
import pytest

from tests.browser import render
from tests.local import free_port
from visionloop.parameters import (
    SAMPLE_DIR,
    DriftParameters,
    EmbedParameters,
    HandoffParameters,
    IngestParameters,
    NightlyParameters,
    PromoteParameters,
    ScoreParameters,
    SyncParameters,
    TrainParameters,
    TuneParameters,
)
from visionloop.settings import REPO_ROOT

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _wait_healthy(url: str, process: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert process.poll() is None, "the Prefect server exited during start-up"
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"Prefect server at {url} not healthy after {timeout} s")


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture
def prefect_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A Prefect server on a free 127.0.0.1 port with its own home; stopped afterwards."""
    port = free_port()
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "VISIONLOOP_DATA_HOME": str(tmp_path / "home"),
        "VISIONLOOP_SPARK_MASTER": "local[2]",
        "VISIONLOOP_IMAGE_SIZE": "32",
        "VISIONLOOP_TIMEZONE": "Europe/Berlin",
    }
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_healthy(env["PREFECT_API_URL"], server)
        yield env
    finally:
        _stop(server)


def _landing(tmp_path: Path) -> Path:
    landing = tmp_path / "landing"
    for class_dir in sorted((SAMPLE_DIR / "labelled").iterdir())[:3]:
        (landing / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:15]:
            shutil.copy(image, landing / class_dir.name)
    return landing


def _deployment_ids(api: str) -> dict[str, str]:
    request = urllib.request.Request(
        f"{api}/deployments/filter", data=b"{}", headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return {item["name"]: item["id"] for item in json.load(response)}


def _check_run_forms(api: str) -> None:
    """Each deployment's Run page, rendered by Chromium, opens with its model's fields."""
    forms = {
        "nightly": NightlyParameters,
        "ingest": IngestParameters,
        "embed": EmbedParameters,
        "score": ScoreParameters,
        "drift": DriftParameters,
        "train": TrainParameters,
        "promote": PromoteParameters,
        "sync_labels": SyncParameters,
        "handoff": HandoffParameters,
        "tune": TuneParameters,
    }
    ui = api.removesuffix("/api")
    for name, deployment_id in _deployment_ids(api).items():
        page = render(f"{ui}/v2/deployments/deployment/{deployment_id}/run")
        titles = [
            field.title or key.replace("_", " ").title()
            for key, field in forms[name].model_fields.items()
        ]
        labels = " | ".join(page.labels)
        missing = [title for title in titles if f"{title} (Optional)" not in labels]
        assert not missing, f"{name}: no field for {missing}; labels: {page.labels}"


def test_nightly_deployment_drains_the_landing_zone_from_the_api(
    prefect_env, tmp_path: Path
) -> None:
    """Deployed, run twice as its schedule runs it: the second night reads no file again."""
    landing = _landing(tmp_path)
    source = {"path": str(landing), "layout": "imagefolder"}
    prefect_env = prefect_env | {"VISIONLOOP_LANDING__SOURCES": json.dumps([source])}
    deployed = subprocess.run(
        [str(BIN / "visionloop"), "deploy"], env=prefect_env, capture_output=True, text=True
    )
    assert deployed.returncode == 0, deployed.stderr
    _check_run_forms(prefect_env["PREFECT_API_URL"])
    worker = subprocess.Popen(
        [str(BIN / "prefect"), "worker", "start", "--pool", "visionloop", "--type", "process"],
        env=prefect_env,
        cwd=REPO_ROOT,
    )
    try:
        script = Path(__file__).with_name("trigger_nightly.py")
        triggered = subprocess.run(
            [sys.executable, str(script), "2"],
            env=prefect_env,
            capture_output=True,
            text=True,
            timeout=1000,
        )
    finally:
        _stop(worker)
    assert triggered.returncode == 0, triggered.stdout + triggered.stderr
    lines = dict(line.split("=", 1) for line in triggered.stdout.splitlines() if "=" in line)
    assert lines["state_1"] == lines["state_2"] == "COMPLETED"
    assert lines["cron"] == "0 2 * * *"
    assert lines["timezone"] == "Europe/Berlin"
    assert {"ingest-counts", "expectations", "data-docs"} <= set(lines["artifacts_1"].split(","))
    night_2 = set(lines["artifacts_2"].split(","))  # nothing new: counted, nothing gated
    assert "ingest-counts" in night_2 and "expectations" not in night_2
    images = ds.dataset(
        Path(prefect_env["VISIONLOOP_DATA_HOME"]) / "lake" / "images",
        format="parquet",
        partitioning="hive",
    )
    assert images.count_rows() == 45
    ledger = ds.dataset(Path(prefect_env["VISIONLOOP_DATA_HOME"]) / "lake" / "arrivals")
    assert ledger.count_rows() == 45  # each landing file read once, over two nights
