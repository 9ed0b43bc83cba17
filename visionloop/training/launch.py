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
from visionloop.settings import Settings
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
    settings_path: Path, output_dir: Path, nproc: int, mlflow_run_id: str | None = None
) -> list[str]:
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free rendezvous port on localhost: reruns never collide
        f"--nproc_per_node={nproc}",
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


def training_env(settings: Settings, nproc: int) -> dict[str, str]:
    """The ranks' environment: the settings' tracking store wins over an inherited one."""
    env = dict(os.environ, PYTHONUNBUFFERED="1", MLFLOW_TRACKING_URI=settings.resolved_mlflow_uri)
    if not torch.cuda.is_available():
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        env["OMP_NUM_THREADS"] = str(max(1, (cores or 1) // nproc))
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

    Raises :class:`TrainingError` on failure.
    """
    output_dir = Path(output_dir).resolve()
    settings_path = settings.save(output_dir)
    pin_snapshot(output_dir, snapshot)
    nproc = settings.training.nproc_per_node
    command = build_torchrun_command(settings_path, output_dir, nproc, mlflow_run_id)
    returncode, tail = _stream(command, training_env(settings, nproc), log)
    if returncode != 0:
        raise TrainingError(returncode, tail)
    return TrainingOutcome.read(output_dir)


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
