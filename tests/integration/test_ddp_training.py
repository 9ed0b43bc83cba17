"""Real ``torchrun --nproc_per_node=2`` training on CPU (gloo) over a tiny real lake."""

from __future__ import annotations

import itertools
import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from timm.scheduler import CosineLRScheduler

from tests.lakes import tiny_lake
from tests.waiting import wait_for
from visionloop.lake.snapshot import take
from visionloop.settings import Settings
from visionloop.training import checkpoint as ckpt
from visionloop.training.config import RunPaths
from visionloop.training.launch import (
    TrainingError,
    TrainingOutcome,
    build_torchrun_command,
    pin_snapshot,
    run_training,
    training_env,
)
from visionloop.training.loop import warmup_cosine

METRIC_KEYS = {"epoch", "train_loss", "val_loss", "val_accuracy", "lr", "img_per_s", "seconds"}
TRAINING = {
    "model_name": "resnet10t",
    "pretrained": "none",
    "input_size": 32,
    "epochs": 2,
    "batch_size": 16,
    "nproc_per_node": 2,
    "num_workers": 1,
    "warmup_epochs": 0.5,
    "early_stopping_patience": 5,
    "shuffle_window_row_groups": 2,
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """600 labelled Fashion-MNIST images (~360 train) at 32 px, 2 batches, row groups of 64."""
    home = tmp_path_factory.mktemp("ddp-home")
    return tiny_lake(
        home,
        labelled=600,
        unlabelled=40,
        size=32,
        row_group_rows=64,
        training=TRAINING,
        mlflow_tracking_uri=f"sqlite:///{home / 'mlflow.db'}",
    )


@pytest.fixture(scope="module")
def finished(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """One uninterrupted 2-epoch run, logging to an MLflow run.

    An inherited ``MLFLOW_TRACKING_URI`` points at a closed port: the ranks must log to the
    settings' SQLite store regardless (the metrics are read back from it below).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    experiment = client.create_experiment("ddp-test")
    run_id = client.create_run(experiment).info.run_id
    lines: list[str] = []
    with pytest.MonkeyPatch.context() as env:
        env.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # discard port: nothing there
        outcome = run_training(
            settings,
            tmp_path_factory.mktemp("run"),
            take(settings.lake_dir),
            mlflow_run_id=run_id,
            log=lines.append,
        )
    return outcome, lines, client, run_id


def _hashes(output: Path) -> list[str]:
    return [RunPaths(output).weights_hash(rank).read_text().strip() for rank in range(2)]


def _epochs(output: Path) -> list[int]:
    return [json.loads(line)["epoch"] for line in RunPaths(output).metrics.read_text().splitlines()]


MARKER = "DDP_TEST_MARKER"


def _processes_marked(value: str) -> list[int]:
    """Processes whose environment carries ``MARKER=value``: ranks, fork server, workers."""
    needle = f"{MARKER}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and needle in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
        except OSError:
            continue
    return found


def _wait_until_gone(value: str, timeout: float = 30.0) -> None:
    wait_for(
        lambda: not _processes_marked(value), timeout, f"processes of {value} outlived the kill"
    )


def test_torchrun_command_is_standalone_and_module_based(tmp_path: Path) -> None:
    training = Settings(data_home=tmp_path).training.model_copy(update={"nproc_per_node": 3})
    command = build_torchrun_command(tmp_path / "s.yaml", tmp_path / "out", training, "abc")
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert "--standalone" in command and "--nproc-per-node=3" in command
    assert not any(part.startswith("--rdzv") for part in command)
    assert command[command.index("-m", 3) + 1] == "visionloop.training.train"
    assert command[-2:] == ["--mlflow-run-id", "abc"]


@pytest.mark.slow
def test_two_ranks_train_and_end_with_identical_weights(finished) -> None:
    outcome, lines, client, run_id = finished
    assert isinstance(outcome, TrainingOutcome)
    out = outcome.output_dir
    assert any("2 rank(s) on cpu" in line for line in lines)  # lines were streamed to log
    assert _epochs(out) == [1, 2]
    assert all(set(row) == METRIC_KEYS for row in outcome.history)
    hashes = _hashes(out)
    assert hashes[0] == hashes[1]
    assert outcome.best["val_accuracy"] > 0.3  # 10 classes: well above chance after 2 epochs

    checkpoint = torch.load(outcome.model_path, map_location="cpu", weights_only=True)
    assert set(checkpoint) == {
        "model_name", "num_classes", "labels", "input_size", "mean", "std", "image_options",
        "state_dict",
    }  # fmt: skip
    assert checkpoint["image_options"]["size"] == 32
    assert checkpoint["model_name"] == "resnet10t" and checkpoint["input_size"] == 32
    assert checkpoint["num_classes"] == len(checkpoint["labels"]) == 10
    label_map = json.loads(outcome.label_map_path.read_text())
    assert label_map["labels"] == checkpoint["labels"] == outcome.labels
    model = timm.create_model("resnet10t", num_classes=10, pretrained=False)
    model.load_state_dict(checkpoint["state_dict"])  # strict: the format rebuilds the model

    for key in ("train_loss", "val_accuracy", "img_per_s"):
        history = client.get_metric_history(run_id, key)
        assert sorted(metric.step for metric in history) == [1, 2], key


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint(
    settings: Settings, finished, tmp_path: Path
) -> None:
    out = tmp_path / "run"
    paths = RunPaths(out)
    command = build_torchrun_command(settings.save(out), out, settings.training)
    pin_snapshot(out, take(settings.lake_dir))
    env = training_env(settings) | {MARKER: str(out)}
    with (tmp_path / "first.log").open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        # Kill as soon as epoch 1's checkpoint lands: epoch 2 has begun, not finished.
        wait_for(paths.checkpoint.exists, 300, "no checkpoint after epoch 1", process)
        assert len(_processes_marked(str(out))) >= 3  # torchrun, 2 ranks, workers
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    # torchrun starts ranks in sessions of their own; they, their loader fork server and
    # workers must die with it, not train on beside the resumed run.
    _wait_until_gone(str(out))
    saved = ckpt.load(paths.checkpoint)
    assert saved["epoch"] == 1, "killed too late: epoch 2 had already finished"
    assert not paths.model.exists()

    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "resuming from" in rerun.stdout and "after epoch 1" in rerun.stdout
    assert "epoch=2" in rerun.stdout and "epoch=1 " not in rerun.stdout
    assert _epochs(out) == [1, 2]
    assert paths.model.exists()
    hashes = _hashes(out)
    assert hashes[0] == hashes[1]
    # Deterministic: resuming lands on the very weights of the uninterrupted run.
    assert hashes == _hashes(finished[0].output_dir)


@pytest.mark.slow
def test_a_failing_run_raises_with_exit_code_and_last_lines(
    settings: Settings, tmp_path: Path
) -> None:
    broken = settings.model_copy(
        update={"training": settings.training.model_copy(update={"model_name": "not_a_model"})}
    )
    lines: list[str] = []
    with pytest.raises(TrainingError, match="exit code 1") as error:
        run_training(broken, tmp_path / "run", take(settings.lake_dir), log=lines.append)
    assert "no model 'not_a_model'" in str(error.value)
    assert lines and error.value.tail == lines[-len(error.value.tail) :]


def test_early_stopping_state_counts_epochs_without_improvement() -> None:
    state = ckpt.TrainState()
    scores = [(0.5, -1.0), (0.6, -0.9), (0.6, -0.95), (0.55, -0.8), (0.6, -0.85)]
    improved = [state.record({"epoch": e + 1}, score) for e, score in enumerate(scores)]
    assert improved == [True, True, False, False, True]  # ties on accuracy: lower loss wins
    assert state.best_epoch == 5 and state.epochs_since_best == 0
    assert ckpt.TrainState.from_dict(state.to_dict()) == state


def _cosine(step: int, total: int = 8) -> float:
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * step / total))


def test_warmup_then_cosine_schedule_is_timms_and_steps_per_update() -> None:
    def fresh() -> tuple[torch.optim.Optimizer, CosineLRScheduler]:
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        return optimizer, warmup_cosine(optimizer, total_updates=10, warmup_updates=2)

    optimizer, scheduler = fresh()
    assert isinstance(scheduler, CosineLRScheduler)
    lrs = []
    for update in range(1, 11):
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr this update uses
        optimizer.step()
        scheduler.step_update(update)
        if update == 5:
            saved = optimizer.state_dict(), scheduler.state_dict()
    # warm-up from 1% of the base lr, the base lr after 2 updates, cosine to 1% at update 10
    assert lrs[:4] == pytest.approx([0.01, 0.505, 1.0, _cosine(1)])
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert lrs[-1] == pytest.approx(_cosine(7))
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01)  # after the last update
    # Resumed from update 5's state, the schedule goes on as if never stopped.
    optimizer, scheduler = fresh()
    optimizer.load_state_dict(saved[0])
    scheduler.load_state_dict(saved[1])
    resumed = []
    for update in range(6, 11):
        resumed.append(optimizer.param_groups[0]["lr"])
        scheduler.step_update(update)
    assert resumed == pytest.approx(lrs[5:])


def test_checkpoint_files_are_replaced_atomically_and_hashes_see_every_tensor(
    tmp_path: Path,
) -> None:
    path = tmp_path / "checkpoint-last.pt"
    ckpt.atomic_torch_save({"epoch": 1}, path)
    ckpt.atomic_torch_save({"epoch": 2}, path)
    assert ckpt.load(path) == {"epoch": 2}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-last.pt"]  # no temp left
    state = {"w": torch.ones(3), "n": torch.tensor(1)}
    before = ckpt.state_hash(state)
    state["n"] += 1
    assert ckpt.state_hash(state) != before


@pytest.mark.slow
def test_single_process_run_with_accumulation_mixup_and_early_stopping(tmp_path: Path) -> None:
    """Without torchrun: one process, cutmix/mixup, 2-step accumulation, patience 1.

    A model without batch norm and a learning rate of 1e-12 cannot change its validation
    score, so epoch 2 does not improve on epoch 1 and patience 1 must stop the run there.
    """
    settings = tiny_lake(
        tmp_path / "home",
        labelled=200,
        size=32,
        training={
            **TRAINING,
            "model_name": "test_vit",
            "lr": 1e-12,
            "epochs": 4,
            "num_workers": 0,
            "grad_accum_steps": 2,
            "mixup": 0.2,
            "cutmix": 1.0,
            "early_stopping_patience": 1,
            "max_steps_per_epoch": 2,
        },
    )
    out = tmp_path / "run"
    pin_snapshot(out, take(settings.lake_dir))
    command = [sys.executable, "-m", "visionloop.training.train"]
    command += ["--settings", str(settings.save(out)), "--output", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 batches of 16 per rank" in result.stdout  # 2 steps x 2 micro-batches
    summary = json.loads(RunPaths(out).summary.read_text())
    assert summary["stopped_early"] and summary["best_epoch"] == 1
    assert summary["epochs_run"] == 2 and _epochs(out) == [1, 2]
    assert RunPaths(out).model.exists()
