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


# ------------------------------------------------- the flows a person runs by hand


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A settings file whose tiny lake has a registered challenger and no champion yet."""
    from tests.integration.test_onnx_export import SIZE, _registered
    from visionloop.settings import load_settings

    home = tmp_path_factory.mktemp("by-hand")
    _registered(home)
    settings = load_settings(
        data_home=home,
        spark_master="local[2]",
        image_size=SIZE,
        promotion={"first_model_floor": 0.0},
        embeddings={"input_size": SIZE},
    )
    return settings.save(home / "config")


def _invoke(config: Path, *args: str, **env: str):
    """The command in this process (its Prefect API and Spark are the test session's)."""
    from typer.testing import CliRunner

    from visionloop.cli import app

    result = CliRunner().invoke(app, [*args, "--config", str(config)], env=env)
    if isinstance(result.exception, Exception) and not isinstance(result.exception, SystemExit):
        raise result.exception  # a bare traceback: a test failure, never an exit code
    return result


@pytest.mark.slow
def test_every_flow_runs_by_hand_with_a_summary_and_its_exit_codes(registered: Path) -> None:
    nothing = _invoke(registered, "export")
    assert nothing.exit_code == 2 and "no 'champion' version" in nothing.output

    promoted = _invoke(registered, "promote")
    assert promoted.exit_code == 0, promoted.output
    assert "v1 promoted" in promoted.output and "champion:           " in promoted.output
    assert "ONNX export:" in promoted.output and "0 labels differ" in promoted.output

    again = _invoke(registered, "export")
    assert again.exit_code == 0 and "v1 (exported earlier)" in again.output
    unknown = _invoke(registered, "export", "--version", "99")
    assert unknown.exit_code == 2 and "has no version 99" in unknown.output

    embedded = _invoke(registered, "embed")
    assert embedded.exit_code == 0, embedded.output
    assert "150 new" in embedded.output and "similar images:" in embedded.output

    scored = _invoke(registered, "score")
    assert scored.exit_code == 0 and "150 new by" in scored.output, scored.output

    drifted = _invoke(registered, "drift", "--days", "1")
    assert drifted.exit_code == 0 and "drift:" in drifted.output, drifted.output
    assert _invoke(registered, "drift", "--days", "-1").exit_code == 2

    handed = _invoke(registered, "handoff", "--budget", "4")
    assert handed.exit_code == 0, handed.output
    # Every image of the lake is labelled: nothing to select, and no Label Studio runs.
    assert "0 images selected" in handed.output and "outbox.json" in handed.output
    skipped = _invoke(registered, "sync-labels")
    assert skipped.exit_code == 0 and "label sync skipped" in skipped.output

    down = {"VISIONLOOP_LABELLING__URL": f"http://127.0.0.1:{_closed_port()}"}
    for command in ("sync-labels", "handoff"):
        unreachable = _invoke(registered, command, **down)
        assert unreachable.exit_code == 4, unreachable.output
        assert "is unreachable" in unreachable.output
