"""Training entry point; run under ``torchrun`` (any number of processes) or alone.

    python -m torch.distributed.run --standalone --nproc_per_node=N \\
        -m visionloop.training.train --settings <settings.yaml> --output <dir> [--mlflow-run-id ID]

Re-running the same command resumes from ``<output>/checkpoint-last.pt``; a finished run
only rewrites its outputs. Rank 0 writes ``metrics.jsonl``, checkpoints, ``model.pt``,
``label_map.json`` and ``summary.json``; every rank writes ``weights-rank<r>.sha256``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from timm.loss import SoftTargetCrossEntropy
from timm.optim import create_optimizer_v2
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.distributed.elastic.multiprocessing.errors import record
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.preprocessing import image_options
from visionloop.settings import Settings, TrainingSettings, load_settings
from visionloop.training import checkpoint as ckpt
from visionloop.training.config import RunPaths, parse_args
from visionloop.training.distributed import (
    DistContext,
    average_buffers,
    barrier,
    broadcast_object,
    die_with_parent,
    gather_objects,
    seed_everything,
    setup,
    teardown,
)
from visionloop.training.lake_reader import LakeDataset, LakeIndex, LakeReadError, make_loader
from visionloop.training.loop import Precision, evaluate, train_one_epoch, warmup_cosine
from visionloop.training.models import ModelSpec, create_model, model_spec
from visionloop.training.transforms import eval_transform, mixup, train_transform


def log(ctx: DistContext, message: str) -> None:
    if ctx.is_main:
        print(f"[train] {message}", flush=True)


@dataclass
class Components:
    model: nn.Module  # the bare model (what is saved)
    wrapped: nn.Module  # DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scheduler: CosineLRScheduler
    scaler: torch.amp.GradScaler
    train_data: LakeDataset
    val_data: LakeDataset
    train_loader: DataLoader  # made once: their workers persist across epochs
    val_loader: DataLoader
    spec: ModelSpec
    updates_per_epoch: int
    best_weights: dict[str, torch.Tensor] | None = None  # CPU copy of the best epoch's


def data_index(paths: RunPaths) -> LakeIndex:
    """Every rank indexes the files of the run's frozen lake snapshot (never the live lake)."""
    if not paths.snapshot.exists():
        raise LakeReadError(f"{paths.snapshot} is missing: the launcher writes it before training")
    snapshot = LakeSnapshot.load(paths.snapshot)
    snapshot.verify()
    return LakeIndex.scan(snapshot)


def datasets(
    config: TrainingSettings, index: LakeIndex, spec: ModelSpec, ctx: DistContext
) -> tuple[LakeDataset, LakeDataset]:
    max_batches = None
    if config.max_steps_per_epoch is not None:
        max_batches = config.max_steps_per_epoch * config.grad_accum_steps
    common = {"batch_size": config.batch_size, "rank": ctx.rank, "world_size": ctx.world_size}
    train = LakeDataset(
        index,
        "train",
        train_transform(spec, config.rand_augment),
        shuffle=True,
        drop_last=True,
        seed=config.seed,
        window=config.shuffle_window_row_groups,
        max_batches=max_batches,
        **common,
    )
    if train.batches == 0:
        raise LakeReadError(
            f"the train split has {index.count('train')} labelled rows: fewer than "
            f"{ctx.world_size} ranks x batch_size {config.batch_size}; lower batch_size"
        )
    val = LakeDataset(index, "val", eval_transform(spec), **common)
    return train, val


def build(settings: Settings, paths: RunPaths, ctx: DistContext, resuming: bool) -> Components:
    config = settings.training
    index = data_index(paths)
    seed_everything(config.seed)  # identical initial weights on every rank
    model = create_model(
        config.model_name, len(index.labels), "none" if resuming else config.pretrained
    )
    spec = model_spec(model, config.model_name, index.labels, config.input_size)
    model.to(ctx.device)
    if ctx.cuda:
        model.to(memory_format=torch.channels_last)
    wrapped = model
    if ctx.distributed:
        device_ids = [ctx.local_rank] if ctx.cuda else None
        wrapped = DistributedDataParallel(model, device_ids=device_ids, forward_sync_buffers=False)
    train_data, val_data = datasets(config, index, spec, ctx)
    updates = math.ceil(train_data.batches / config.grad_accum_steps)
    optimizer = create_optimizer_v2(model, "adamw", lr=config.lr, weight_decay=config.weight_decay)
    scheduler = warmup_cosine(
        optimizer, config.epochs * updates, round(config.warmup_epochs * updates)
    )
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=False)  # bf16 needs no loss scaling
    loaders = [
        make_loader(data, config.num_workers, pin_memory=ctx.cuda)
        for data in (train_data, val_data)
    ]
    return Components(
        model, wrapped, optimizer, scheduler, scaler, train_data, val_data, *loaders, spec, updates
    )


def restore(parts: Components, paths: RunPaths, ctx: DistContext) -> ckpt.TrainState:
    if not paths.checkpoint.exists():
        return ckpt.TrainState()
    saved = ckpt.load(paths.checkpoint)
    parts.model.load_state_dict(saved["model"])
    parts.optimizer.load_state_dict(saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    parts.scaler.load_state_dict(saved["scaler"])
    parts.best_weights = saved["best_model"]
    rng = saved["rng"]
    if len(rng) == ctx.world_size:
        ckpt.set_rng_state(rng[ctx.rank])
    state = ckpt.TrainState.from_dict(saved["state"])
    log(ctx, f"resuming from {paths.checkpoint} after epoch {state.epoch}")
    return state


def save_checkpoint(
    parts: Components, paths: RunPaths, ctx: DistContext, state: ckpt.TrainState
) -> None:
    rng = gather_objects(ctx, ckpt.rng_state())  # a collective: every rank takes part
    if not ctx.is_main:
        return
    payload = {
        "model": parts.model.state_dict(),
        "optimizer": parts.optimizer.state_dict(),
        "scheduler": parts.scheduler.state_dict(),
        "scaler": parts.scaler.state_dict(),
        "epoch": state.epoch,
        "best_metric": state.best_score,
        "state": state.to_dict(),
        "rng": rng,
        "best_model": parts.best_weights,
    }
    ckpt.atomic_torch_save(payload, paths.checkpoint)


class MetricsSink:
    """Rank 0's per-epoch output: ``metrics.jsonl`` (rewritten whole) and MLflow.

    Metrics go to the settings' tracking store; an inherited ``MLFLOW_TRACKING_URI`` plays
    no part.
    """

    def __init__(
        self, paths: RunPaths, ctx: DistContext, settings: Settings, mlflow_run_id: str | None
    ) -> None:
        self.paths, self.enabled = paths, ctx.is_main
        self.client = None
        self.run_id = mlflow_run_id
        if self.enabled and mlflow_run_id:
            from mlflow.tracking import MlflowClient

            uri = settings.resolved_mlflow_uri
            self.client = MlflowClient(tracking_uri=uri, registry_uri=uri)

    def write(self, history: list[dict[str, float]]) -> None:
        if self.enabled:
            lines = "".join(json.dumps(row) + "\n" for row in history)
            ckpt.atomic_write_text(self.paths.metrics, lines)

    def log(self, row: dict[str, float]) -> None:
        if self.client is None:
            return
        for key, value in row.items():
            if key != "epoch" and math.isfinite(value):
                self.client.log_metric(self.run_id, key, value, step=int(row["epoch"]))


def score(row: dict[str, float]) -> tuple[float, ...]:
    """Higher is better: validation accuracy, then lower validation loss."""
    if math.isnan(row["val_accuracy"]):
        return (-row["train_loss"],)
    return (row["val_accuracy"], -row["val_loss"])


def run_epoch(
    parts: Components, settings: Settings, ctx: DistContext, epoch: int
) -> dict[str, float]:
    config = settings.training
    started = time.perf_counter()
    seed_everything(config.seed, epoch, ctx.rank)  # workers seed themselves likewise
    parts.train_data.set_epoch(epoch)
    mix = mixup(config.mixup, config.cutmix, parts.spec.num_classes, config.batch_size)
    trained = train_one_epoch(
        parts.wrapped,
        parts.train_loader,
        parts.train_data.batches,
        parts.optimizer,
        parts.scheduler,
        parts.scaler,
        updates_done=(epoch - 1) * parts.updates_per_epoch,
        ctx=ctx,
        precision=Precision(ctx.device),
        accum_steps=config.grad_accum_steps,
        loss_fn=SoftTargetCrossEntropy() if mix else nn.CrossEntropyLoss(),
        mix=mix,
    )
    average_buffers(ctx, parts.model)
    val = evaluate(
        parts.model,
        parts.val_loader,
        ctx=ctx,
        precision=Precision(ctx.device),
    )
    return {
        "epoch": epoch,
        "train_loss": trained.loss,
        "val_loss": val.loss,
        "val_accuracy": val.accuracy,
        "lr": parts.optimizer.param_groups[0]["lr"],
        "img_per_s": trained.images / trained.seconds,
        "seconds": time.perf_counter() - started,
    }


def fit(
    parts: Components, settings: Settings, paths: RunPaths, ctx: DistContext, sink: MetricsSink
) -> ckpt.TrainState:
    config = settings.training
    state = restore(parts, paths, ctx)
    sink.write(state.history)
    log(ctx, _plan_line(parts, config, ctx))
    for epoch in range(state.epoch + 1, config.epochs + 1):
        if state.epochs_since_best >= config.early_stopping_patience:
            break
        row = run_epoch(parts, settings, ctx, epoch)
        if state.record(row, score(row)):
            parts.best_weights = _cpu_copy(parts.model.state_dict())
        save_checkpoint(parts, paths, ctx, state)
        sink.write(state.history)
        sink.log(row)
        log(ctx, "epoch " + " ".join(f"{k}={_fmt(v)}" for k, v in row.items()))
    return state


def _cpu_copy(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {
        key: value.detach().to("cpu", copy=True).contiguous() for key, value in state_dict.items()
    }


def _plan_line(parts: Components, config: TrainingSettings, ctx: DistContext) -> str:
    index = parts.train_data.index
    return (
        f"{config.model_name}: {len(index.labels)} classes, train {index.count('train')} / "
        f"val {index.count('val')} labelled rows, {ctx.world_size} rank(s) on {ctx.device.type}, "
        f"{parts.train_data.batches} batches of {config.batch_size} per rank per epoch"
    )


def _fmt(value: float) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def finish(
    parts: Components, settings: Settings, paths: RunPaths, ctx: DistContext, state: ckpt.TrainState
) -> None:
    digest = ckpt.state_hash(parts.model.state_dict())
    ckpt.atomic_write_text(paths.weights_hash(ctx.rank), digest + "\n")
    if not ctx.is_main:
        return
    if parts.best_weights is None:
        raise RuntimeError("no epoch completed, so there is no model to write")
    options = image_options(settings).to_dict()
    ckpt.atomic_torch_save(parts.spec.checkpoint(parts.best_weights, options), paths.model)
    ckpt.write_json(paths.label_map, parts.spec.label_map())
    best = next(row for row in state.history if row["epoch"] == state.best_epoch)
    summary: dict[str, Any] = {
        "model_name": parts.spec.model_name,
        "labels": list(parts.spec.labels),
        "epochs_run": state.epoch,
        "stopped_early": state.epoch < settings.training.epochs,
        "best_epoch": state.best_epoch,
        "best": best,
        "final": state.history[-1],
        "weights_sha256": digest,
    }
    ckpt.write_json(paths.summary, summary)
    log(ctx, f"done: best epoch {state.best_epoch} {best}; wrote {paths.model}")


@record  # torchrun's failure summary then names the exception
def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    settings = load_settings(args.settings)
    paths = RunPaths(args.output)
    die_with_parent()
    ctx = setup()
    try:
        if ctx.is_main:
            ckpt.lock_run(paths.root)  # released when this process exits
        barrier(ctx)
        resuming = broadcast_object(ctx, paths.checkpoint.exists())
        parts = build(settings, paths, ctx, resuming)
        sink = MetricsSink(paths, ctx, settings, args.mlflow_run_id)
        state = fit(parts, settings, paths, ctx, sink)
        barrier(ctx)
        finish(parts, settings, paths, ctx, state)
        barrier(ctx)
    finally:
        teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
