"""Process-group setup and the few collectives training needs (no-ops in a single process).

Launched by ``torchrun``, a process reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the
environment and joins a process group: NCCL when CUDA is available, gloo on CPU. Run
directly (no ``RANK``), it is rank 0 of a world of one and no group is created.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class DistContext:
    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


def setup() -> DistContext:
    rank = int(os.environ.get("RANK", 0))
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, device_id=device if device.type == "cuda" else None)
    return DistContext(rank, local_rank, world_size, device)


_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Under torchrun, get SIGKILLed when the launcher dies (Linux ``PR_SET_PDEATHSIG``).

    torchrun starts each worker in its own session, so killing the launcher's process
    group (``kill -9 -<pgid>``) would otherwise leave the ranks training on, orphaned,
    and racing a resumed run for the same output directory.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    if parent == 1:  # already orphaned
        os._exit(1)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        return  # not fatal: the launcher still stops its workers on SIGTERM
    if os.getppid() != parent:  # the launcher died before the call above
        os._exit(1)


def teardown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.distributed:
        if ctx.cuda:
            dist.barrier(device_ids=[ctx.local_rank])
        else:
            dist.barrier()


def sum_all(ctx: DistContext, *values: float) -> list[float]:
    """Element-wise sum of ``values`` over all ranks (float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    if ctx.distributed:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.tolist()


def gather_objects(ctx: DistContext, value: Any) -> list[Any]:
    """Every rank's ``value``, in rank order, on every rank."""
    if not ctx.distributed:
        return [value]
    gathered: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(ctx: DistContext, value: Any) -> Any:
    """Rank 0's ``value`` on every rank."""
    if not ctx.distributed:
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def average_buffers(ctx: DistContext, model: nn.Module) -> None:
    """Average floating-point buffers (BatchNorm running stats) so all ranks hold the same."""
    if not ctx.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(ctx.world_size)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed mixed from a tuple such as ``(seed, epoch, rank)``."""
    return int(np.random.SeedSequence([p & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


def seed_everything(*parts: int) -> None:
    """Seed Python, NumPy and torch (all devices) from :func:`derive_seed` of ``parts``."""
    seed = derive_seed(*parts)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
