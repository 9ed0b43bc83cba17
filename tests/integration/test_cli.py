"""``visionloop`` exit codes and messages, as a shell sees them.

0 done; 1 the operation failed; 2 bad arguments or settings; 3 the quality gate stopped
the batch; 4 a service is unreachable. Errors are one line naming the fix, not a traceback.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from visionloop.parameters import SAMPLE_DIR

BIN = Path(sys.executable).parent / "visionloop"


def _run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "VISIONLOOP_DATA_HOME": str(tmp_path / "home"),
        "VISIONLOOP_SPARK_MASTER": "local[2]",
        "VISIONLOOP_IMAGE_SIZE": "32",
        **env,
    }
    return subprocess.run(
        [str(BIN), *args], env=environment, capture_output=True, text=True, timeout=600
    )


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_bad_arguments_and_settings_exit_2_with_the_fix(tmp_path: Path) -> None:
    assert _run(tmp_path, "settings").returncode == 0
    unknown_option = _run(tmp_path, "train", "--no-such-option")
    assert unknown_option.returncode == 2 and "No such option" in unknown_option.stderr
    missing = _run(tmp_path, "settings", "--config", str(tmp_path / "nope.yaml"))
    assert missing.returncode == 2
    assert "does not exist; pass an existing YAML file" in missing.stderr
    bad_split = _run(tmp_path, "settings", VISIONLOOP_SPLIT__TRAIN="0.95")
    assert bad_split.returncode == 2 and "VISIONLOOP_SPLIT__TRAIN" in bad_split.stderr
    nowhere = _run(tmp_path, "ingest", str(tmp_path / "nowhere"))
    assert nowhere.returncode == 2 and "does not exist" in nowhere.stderr
    assert "Traceback" not in missing.stderr + bad_split.stderr + nowhere.stderr


def test_an_unreachable_tracking_store_exits_4_naming_it(tmp_path: Path) -> None:
    uri = f"http://127.0.0.1:{_closed_port()}"
    result = _run(tmp_path, "train", VISIONLOOP_MLFLOW_TRACKING_URI=uri)
    assert result.returncode == 4, result.stderr[-2000:]
    # One message of ours among Prefect's run log, naming the store and the fix.
    (error,) = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert error.startswith(f"error: MLflow tracking store {uri} is unreachable")
    assert "VISIONLOOP_MLFLOW_TRACKING_URI" in error


def test_nothing_to_roll_back_exits_1(tmp_path: Path) -> None:
    result = _run(tmp_path, "rollback")
    assert result.returncode == 1 and "no 'previous-champion' alias" in result.stderr


@pytest.mark.slow
def test_a_failing_gate_exits_3_and_holds_the_batch(tmp_path: Path) -> None:
    landing = tmp_path / "landing" / "bag"
    landing.mkdir(parents=True)
    for image in sorted((SAMPLE_DIR / "labelled" / "bag").glob("*.png"))[:20]:
        shutil.copy(image, landing)
    (landing / "notes.png").write_text("not a picture")
    result = _run(
        tmp_path, "ingest", str(landing.parent), VISIONLOOP_QUALITY__MAX_QUARANTINE_RATE="0.01"
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "quarantine_rate" in result.stderr and "--accept-failing-batch" in result.stderr
    assert len(list((tmp_path / "home" / "lake" / "_held").iterdir())) == 1
