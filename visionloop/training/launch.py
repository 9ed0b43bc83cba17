"""Run distributed training as a ``torchrun`` subprocess and collect what it wrote."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.settings import Settings, SettingsError, TrainingSettings, load_settings
from visionloop.training import checkpoint as ckpt
from visionloop.training.config import RunPaths

TAIL_LINES = 30


class TrainingError(RuntimeError):
    """Training exited with an error; the message holds the exit code and its last lines."""

    def __init__(self, returncode: int, tail: list[str]) -> None:
        self.returncode = returncode
        self.tail = tail
        last = "\n".join(tail) or "(no output)"
        super().__init__(f"training failed with exit code {returncode}; last lines:\n{last}")


@dataclass(frozen=True)
class TrainingOutcome:
    """Where a finished run's files are, and its metrics."""

    output_dir: Path
    model_path: Path
    label_map_path: Path
    metrics_path: Path
    checkpoint_path: Path
    settings_path: Path
    labels: list[str]
    history: list[dict[str, float]]  # one row per epoch, as in metrics.jsonl
    best: dict[str, float]  # the row of the epoch whose weights are in model.pt
    stopped_early: bool

    @property
    def final_metrics(self) -> dict[str, float]:
        return self.history[-1]

    @classmethod
    def read(cls, output_dir: Path) -> TrainingOutcome:
        paths = RunPaths(output_dir)
        summary: dict[str, Any] = json.loads(paths.summary.read_text())
        history = [json.loads(line) for line in paths.metrics.read_text().splitlines() if line]
        return cls(
            output_dir=output_dir,
            model_path=paths.model,
            label_map_path=paths.label_map,
            metrics_path=paths.metrics,
            checkpoint_path=paths.checkpoint,
            settings_path=paths.settings,
            labels=summary["labels"],
            history=history,
            best=summary["best"],
            stopped_early=summary["stopped_early"],
        )


def build_torchrun_command(
    settings_path: Path,
    output_dir: Path,
    training: TrainingSettings,
    mlflow_run_id: str | None = None,
) -> list[str]:
    """The one ``torchrun`` command: ``--standalone`` on one node, else the c10d rendezvous
    that every node's agent of the run joins (the same command on each node)."""
    distributed = training.distributed
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        f"--nproc-per-node={training.nproc_per_node}",
    ]
    if distributed.nnodes == 1:
        command.append("--standalone")  # a free rendezvous port on localhost: reruns never collide
    else:
        command += [
            f"--nnodes={distributed.nnodes}",
            "--rdzv-backend=c10d",
            f"--rdzv-endpoint={distributed.rdzv_endpoint}",
            f"--rdzv-id={distributed.rdzv_id or output_dir.name}",
            f"--rdzv-conf=join_timeout={distributed.join_timeout_s}",
            f"--max-restarts={distributed.max_restarts}",
        ]
        if distributed.local_addr:
            command.append(f"--local-addr={distributed.local_addr}")
    command += [
        "-m",
        "visionloop.training.train",
        "--settings",
        str(settings_path),
        "--output",
        str(output_dir),
    ]
    if mlflow_run_id:
        command += ["--mlflow-run-id", mlflow_run_id]
    return command


def training_env(settings: Settings) -> dict[str, str]:
    """The ranks' environment: the saved settings' secrets, and the settings' tracking store
    wins over an inherited one."""
    env = os.environ | settings.secret_environment()
    env |= {"PYTHONUNBUFFERED": "1", "MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri}
    if not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // settings.training.nproc_per_node))
    if settings.training.distributed.nnodes > 1:
        # A node that replaces a lost one joins a later rendezvous round, where rank 0's
        # agent reuses the shared store's address from round 0 and never publishes it again:
        # the newcomer times out waiting for MASTER_ADDR (pytorch/pytorch#147064). Unshared,
        # every round's rank 0 publishes a fresh one.
        env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    return env


def pin_snapshot(output_dir: Path, snapshot: LakeSnapshot) -> None:
    """Write the snapshot the run trains on; a resumed run must be given the same one."""
    path = RunPaths(output_dir).snapshot
    if path.exists():
        pinned = LakeSnapshot.load(path)
        if pinned.id != snapshot.id:
            raise ValueError(
                f"{output_dir} is a run on lake snapshot {pinned.id}, not {snapshot.id}; "
                "train into a new output directory"
            )
        return
    snapshot.save(path)


def run_training(
    settings: Settings,
    output_dir: Path,
    snapshot: LakeSnapshot,
    *,
    mlflow_run_id: str | None = None,
    log: Callable[[str], None] = print,
) -> TrainingOutcome:
    """Train (or resume training) on ``snapshot`` into ``output_dir``.

    With ``training.distributed.nnodes`` > 1 this node's agent waits for the other nodes'
    (:func:`join_training`) and hosts the rendezvous. Raises :class:`TrainingError` on failure.
    """
    output_dir = Path(output_dir).resolve()
    settings_path = settings.save(output_dir)
    pin_snapshot(output_dir, snapshot)
    paths = RunPaths(output_dir)
    ckpt.write_json(paths.launch, {"mlflow_run_id": mlflow_run_id})
    nodes = settings.training.distributed.nnodes
    if nodes > 1:
        log(f"waiting for {nodes - 1} more node(s): run `visionloop train-join {output_dir}` there")
    command = build_torchrun_command(settings_path, output_dir, settings.training, mlflow_run_id)
    _run_agent(command, training_env(settings), log)
    return TrainingOutcome.read(output_dir)


def join_training(output_dir: Path, *, log: Callable[[str], None] = print) -> None:
    """Run this node's agent of a multi-node run that :func:`run_training` launched into
    ``output_dir`` (on storage every node sees). This node's environment supplies the
    secrets and may override settings such as ``training.distributed.local_addr``."""
    output_dir = Path(output_dir).resolve()
    paths = RunPaths(output_dir)
    if not paths.launch.exists():
        raise SettingsError(
            f"{paths.launch} is missing: start the run on the launching node first, and pass "
            "the run directory as this node sees the shared storage"
        )
    settings = load_settings(paths.settings)
    if settings.training.distributed.nnodes == 1:
        raise SettingsError(
            f"{output_dir} is a one-node run (training.distributed.nnodes is 1): nothing to join"
        )
    mlflow_run_id = json.loads(paths.launch.read_text())["mlflow_run_id"]
    command = build_torchrun_command(paths.settings, output_dir, settings.training, mlflow_run_id)
    _run_agent(command, training_env(settings), log)


def _run_agent(command: list[str], env: dict[str, str], log: Callable[[str], None]) -> None:
    returncode, tail = _stream(command, env, log)
    if returncode != 0:
        raise TrainingError(returncode, tail)


def _stream(
    command: list[str], env: dict[str, str], log: Callable[[str], None]
) -> tuple[int, list[str]]:
    """Run ``command`` in its own process group, passing each output line to ``log``."""
    tail: deque[str] = deque(maxlen=TAIL_LINES)
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        env=env,
        start_new_session=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip("\n")
            tail.append(line)
            log(line)
        return process.wait(), list(tail)
    except BaseException:
        _stop(process)
        raise


def _stop(process: subprocess.Popen) -> None:
    """Terminate the whole torchrun process group; kill it if it does not exit in 30 s."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass
