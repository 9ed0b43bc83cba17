"""Two-node training: two real ``torchrun`` agents on 127.0.0.1 join one c10d rendezvous.

The launching node trains and registers a challenger (``train_challenger``, as the train
flow does); the second node joins with ``visionloop train-join <run dir>``. The second
agent is SIGKILLed mid-epoch and started again: the job resumes from the last checkpoint
on the storage both share and the model is registered once.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest

from tests.lakes import tiny_lake
from tests.local import free_port
from tests.waiting import wait_for
from visionloop.lake.snapshot import take
from visionloop.registry.challenger import Challenger, plan_training, train_challenger
from visionloop.registry.tracking import Tracking
from visionloop.settings import DistributedSettings, Settings
from visionloop.training import checkpoint as ckpt
from visionloop.training.config import RunPaths
from visionloop.training.launch import build_torchrun_command


@pytest.fixture(autouse=True)
def _no_inherited_torchrun_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """torchrun reads ``PET_*`` variables as defaults: only the settings may decide."""
    for key in list(os.environ):
        if key.startswith(("PET_", "TORCHELASTIC_")):
            monkeypatch.delenv(key)


def _settings(home: Path, port: int) -> Settings:
    """400 labelled Fashion-MNIST images at 32 px; 2 nodes of 1 rank each."""
    return tiny_lake(
        home,
        labelled=400,
        unlabelled=20,
        size=32,
        row_group_rows=64,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
        training={
            "model_name": "resnet10t",
            "pretrained": "none",
            "input_size": 32,
            "epochs": 2,
            "batch_size": 16,
            "nproc_per_node": 1,
            "num_workers": 1,
            "shuffle_window_row_groups": 2,
            "distributed": {
                "nnodes": 2,
                "rdzv_endpoint": f"127.0.0.1:{port}",
                "local_addr": "127.0.0.1",
                "join_timeout_s": 300,
            },
        },
    )


def test_multinode_command_uses_the_c10d_rendezvous(tmp_path: Path) -> None:
    settings = _settings(tmp_path / "home", 29511)
    out = tmp_path / "train-x"
    command = build_torchrun_command(out / "settings.yaml", out, settings.training, "abc")
    assert "--standalone" not in command
    for argument in (
        "--nnodes=2",
        "--nproc-per-node=1",
        "--rdzv-backend=c10d",
        "--rdzv-endpoint=127.0.0.1:29511",
        "--rdzv-id=train-x",  # every node derives the same id from the run directory
        "--local-addr=127.0.0.1",
        "--max-restarts=3",
    ):
        assert argument in command
    one_node = settings.training.model_copy(update={"distributed": DistributedSettings()})
    assert "--standalone" in build_torchrun_command(out / "s.yaml", out, one_node)


def _join(out: Path, log: Path) -> subprocess.Popen:
    """The second node: ``visionloop train-join``, its output appended to ``log``."""
    with log.open("a") as stream:
        return subprocess.Popen(
            [sys.executable, "-m", "visionloop.cli", "train-join", str(out)],
            stdout=stream,
            stderr=subprocess.STDOUT,
        )


def _tails(launcher_lines: list[str], join_log: Path) -> str:
    launcher = "\n".join(launcher_lines[-40:])
    return f"launching node:\n{launcher}\njoining node:\n{join_log.read_text()[-6000:]}"


def _agent_of(join: subprocess.Popen) -> psutil.Process:
    """The torchrun agent the join command started (it runs in a session of its own)."""
    agents: list[psutil.Process] = []

    def found() -> bool:
        agents[:] = [
            child
            for child in psutil.Process(join.pid).children()
            if "torch.distributed.run" in child.cmdline()
        ]
        return bool(agents)

    wait_for(found, 60, "the join command started no torchrun agent", join)
    return agents[0]


@pytest.mark.slow
def test_two_nodes_train_resume_after_a_node_is_killed_and_register_once(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path / "home", free_port())
    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    plan = plan_training(tracking, settings, snapshot, force=True)
    out = settings.runs_dir / "train-two-nodes"
    paths = RunPaths(out)
    launcher_lines: list[str] = []
    result: dict[str, Challenger | BaseException] = {}

    def launching_node() -> None:
        try:
            result["challenger"] = train_challenger(
                tracking, settings, snapshot, plan, out, log=launcher_lines.append
            )
        except BaseException as error:  # reported by the assertions below
            result["error"] = error

    node0 = threading.Thread(target=launching_node)
    node0.start()
    join_log = tmp_path / "join.log"
    try:
        wait_for(paths.launch.exists, 120, "the launching node wrote no launch.json")
        first = _join(out, join_log)
        agent = _agent_of(first)
        worker_pids = {child.pid for child in agent.children(recursive=True)}
        # Kill as soon as epoch 1's checkpoint lands: epoch 2 has begun, not finished.
        wait_for(paths.checkpoint.exists, 600, "no checkpoint after epoch 1", first)
        agent.send_signal(signal.SIGKILL)
        assert first.wait(timeout=60) != 0  # the join command reports the lost agent
        gone = psutil.wait_procs([psutil.Process(p) for p in worker_pids if psutil.pid_exists(p)])
        assert gone[1] == []  # its rank died with it (PR_SET_PDEATHSIG)
        assert ckpt.load(paths.checkpoint)["epoch"] == 1, "killed too late: epoch 2 finished"
        assert not paths.model.exists() and node0.is_alive()

        second = _join(out, join_log)  # the replacement node joins the waiting agent
        assert second.wait(timeout=900) == 0, _tails(launcher_lines, join_log)
    finally:
        node0.join(timeout=900)
    assert "error" not in result, result.get("error")
    challenger = result["challenger"]
    assert isinstance(challenger, Challenger)

    output = "\n".join(launcher_lines) + join_log.read_text()
    assert "2 rank(s) on cpu" in output
    assert "resuming from" in output and "after epoch 1" in output
    assert [json.loads(line)["epoch"] for line in paths.metrics.read_text().splitlines()] == [1, 2]
    hashes = [paths.weights_hash(rank).read_text() for rank in range(2)]
    assert hashes[0] == hashes[1]  # both nodes' ranks ended with the same weights

    versions = tracking.client.search_model_versions(f"name='{settings.registered_model_name}'")
    assert [str(v.version) for v in versions] == [challenger.version.version] == ["1"]
    run_id = versions[0].run_id
    assert tracking.client.get_run(run_id).info.status == "FINISHED"
    steps = [m.step for m in tracking.client.get_metric_history(run_id, "train_loss")]
    assert sorted(steps) == [1, 2]  # each epoch logged once, by whichever node held rank 0
