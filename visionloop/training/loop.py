"""One training epoch, one evaluation pass and the learning-rate schedule (timm's)."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch
from timm.scheduler import CosineLRScheduler
from torch import nn
from torch.optim import Optimizer

from visionloop.training.distributed import DistContext, sum_all
from visionloop.training.lake_reader import Sample


def warmup_cosine(
    optimizer: Optimizer, total_updates: int, warmup_updates: int, floor: float = 0.01
) -> CosineLRScheduler:
    """Per optimizer update: linear warm-up from ``floor`` x base lr to the base lr over
    ``warmup_updates``, then cosine decay to ``floor`` x base lr at ``total_updates``.

    timm's scheduler, stepped with ``step_update(updates_done)`` after every update: the lr
    is a function of the update count, so a resumed run continues where it was killed.
    """
    base = optimizer.param_groups[0]["lr"]
    return CosineLRScheduler(
        optimizer,
        t_initial=max(1, total_updates - warmup_updates),
        lr_min=floor * base,
        warmup_t=warmup_updates,
        warmup_lr_init=floor * base,
        warmup_prefix=True,
        t_in_epochs=False,
    )


@dataclass(frozen=True)
class Precision:
    """bf16 autocast and channels_last on CUDA; plain fp32 on CPU."""

    device: torch.device

    @property
    def channels_last(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def inputs(self, batch: Sample) -> tuple[torch.Tensor, torch.Tensor]:
        images = batch.image.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return images, batch.target.to(self.device, non_blocking=True)


@dataclass(frozen=True)
class TrainResult:
    loss: float  # mean over all ranks' samples
    images: int  # over all ranks
    seconds: float


def train_one_epoch(
    model: nn.Module,
    batches: Iterable[Sample],
    num_batches: int,
    optimizer: Optimizer,
    scheduler: CosineLRScheduler,
    scaler: torch.amp.GradScaler,
    *,
    updates_done: int,
    ctx: DistContext,
    precision: Precision,
    accum_steps: int,
    loss_fn: nn.Module,
    mix: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None,
) -> TrainResult:
    """Micro-batches are grouped ``accum_steps`` at a time; gradients sync on the last one.

    ``updates_done`` counts the optimizer updates of earlier epochs; the schedule steps per
    update from there.
    """
    model.train()
    started = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=ctx.device)
    seen = 0
    optimizer.zero_grad(set_to_none=True)
    for step, batch in enumerate(batches):
        group_start = step - step % accum_steps
        group_size = min(accum_steps, num_batches - group_start)
        last_in_group = step - group_start == group_size - 1
        images, targets = precision.inputs(batch)
        if mix is not None:
            images, targets = mix(images, targets)
        sync = contextlib.nullcontext() if last_in_group or not ctx.distributed else model.no_sync()
        with sync:
            with precision.autocast():
                loss = loss_fn(model(images), targets)
            scaler.scale(loss / group_size).backward()
        if last_in_group:
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            updates_done += 1
            scheduler.step_update(updates_done)
        loss_sum += loss.detach().double() * len(images)
        seen += len(images)
    total_loss, total_seen = sum_all(ctx, loss_sum.item(), seen)
    return TrainResult(
        total_loss / max(total_seen, 1), int(total_seen), time.perf_counter() - started
    )


@dataclass(frozen=True)
class EvalResult:
    loss: float
    accuracy: float
    count: int  # distinct samples evaluated, over all ranks


@torch.inference_mode()
def evaluate(
    model: nn.Module, batches: Iterable[Sample], *, ctx: DistContext, precision: Precision
) -> EvalResult:
    """Loss and accuracy over the real (non-pad) samples of every rank."""
    model.eval()
    loss_sum, correct, count = 0.0, 0.0, 0.0
    for batch in batches:
        images, targets = precision.inputs(batch)
        keep = ~batch.pad.to(ctx.device)
        with precision.autocast():
            logits = model(images).float()
        losses = nn.functional.cross_entropy(logits, targets, reduction="none")
        loss_sum += losses[keep].sum().item()
        correct += (logits.argmax(1) == targets)[keep].sum().item()
        count += keep.sum().item()
    loss_sum, correct, count = sum_all(ctx, loss_sum, correct, count)
    if count == 0:
        return EvalResult(math.nan, math.nan, 0)
    return EvalResult(loss_sum / count, correct / count, int(count))
