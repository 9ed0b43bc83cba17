"""Benchmark: two-node training (c10d rendezvous on 127.0.0.1) against one node, same ranks.

Both arms train the same model on the same lake with a world of two ranks on the same
cores: **one node** is ``torchrun --standalone --nproc-per-node=2``; **two nodes** are two
agents of ``--nproc-per-node=1`` joining one c10d rendezvous (the launching node's
:func:`run_training` and a :func:`join_training`, as ``visionloop train-join`` runs it). The
ratio shows what the multi-node path costs (rendezvous, gloo over TCP between agents), not a
speed-up. Each agent of the two is pinned to its half of the cores, as a node of its own
would be. Per arm: img/s of the last epoch's training loop and the run's wall time
(start-up and rendezvous included); the arms alternate for ``--rounds`` rounds.
Results: ``benchmarks/results/multinode-<device>.json``.

    .venv/bin/python -m benchmarks.multinode [--rounds 3] [--lake .visionloop]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

import torch

from benchmarks.common import alternate, fresh_workdir, spread, write_result
from benchmarks.train import default_lake
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.settings import DistributedSettings, Settings, load_settings
from visionloop.training.launch import TrainingOutcome, join_training, run_training


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _with(settings: Settings, nproc: int, distributed: DistributedSettings) -> Settings:
    training = settings.training.model_copy(
        update={"nproc_per_node": nproc, "distributed": distributed}
    )
    return settings.model_copy(update={"training": training})


def one_node(settings: Settings, snapshot: LakeSnapshot, work: Path, seconds: list[float]) -> float:
    """Last-epoch img/s of one agent with two ranks."""
    output = Path(tempfile.mkdtemp(prefix="one-node-", dir=work))
    started = time.perf_counter()
    outcome = run_training(
        _with(settings, 2, DistributedSettings()), output, snapshot, log=lambda line: None
    )
    seconds.append(time.perf_counter() - started)
    return outcome.history[-1]["img_per_s"]


def two_nodes(
    settings: Settings, snapshot: LakeSnapshot, work: Path, seconds: list[float]
) -> float:
    """Last-epoch img/s of two agents with one rank each, joined by c10d on 127.0.0.1.

    Each agent is pinned to its half of the cores, as if on a machine of its own: it then
    gives its rank that many threads, as a real node would (unpinned, both agents would give
    their rank every core and oversubscribe them).
    """
    distributed = DistributedSettings(
        nnodes=2, rdzv_endpoint=f"127.0.0.1:{_free_port()}", local_addr="127.0.0.1"
    )
    run_settings = _with(settings, 1, distributed)
    output = Path(tempfile.mkdtemp(prefix="two-nodes-", dir=work))
    cores = sorted(os.sched_getaffinity(0))
    halves = [set(cores[: len(cores) // 2]), set(cores[len(cores) // 2 :])]
    outcomes: list[TrainingOutcome] = []
    errors: list[BaseException] = []

    def node(half: set[int], first: bool) -> None:
        os.sched_setaffinity(0, half)  # this thread, and the agent it starts
        try:
            if first:
                outcomes.append(run_training(run_settings, output, snapshot, log=lambda _: None))
                return
            while not (output / "launch.json").exists():
                time.sleep(0.05)
            join_training(output, log=lambda line: None)
        except BaseException as error:  # re-raised below
            errors.append(error)

    started = time.perf_counter()
    threads = [threading.Thread(target=node, args=(half, i == 0)) for i, half in enumerate(halves)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    seconds.append(time.perf_counter() - started)
    return outcomes[0].history[-1]["img_per_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, help="data home holding an ingested lake")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    args = parser.parse_args()
    work = fresh_workdir("multinode")
    base = load_settings(data_home=args.lake or default_lake(work))
    training = base.training.model_copy(
        update={
            "epochs": args.epochs,
            "max_steps_per_epoch": args.steps_per_epoch,
            "pretrained": "none",
        }
    )
    settings = base.model_copy(update={"training": training})
    snapshot = take(settings.lake_dir)
    one_seconds: list[float] = []
    two_seconds: list[float] = []
    rounds = alternate(
        lambda: one_node(settings, snapshot, work, one_seconds),
        lambda: two_nodes(settings, snapshot, work, two_seconds),
        args.rounds,
    )
    wall_ratio = [two / one for one, two in zip(one_seconds, two_seconds, strict=True)]
    result = {
        "model": settings.training.model_name,
        "input_size": settings.training.input_size,
        "batch_size": settings.training.batch_size,
        "epochs": args.epochs,
        "steps_per_epoch": args.steps_per_epoch,
        "world_size": 2,
        "work": str(work),
        "img_per_s": {
            "one_node_2_ranks": rounds["baseline"],
            "two_nodes_1_rank": rounds["subject"],
        },
        "img_per_s_ratio_two_over_one": rounds["ratio"],
        "wall_s": {
            "one_node_2_ranks": [round(value, 1) for value in one_seconds],
            "two_nodes_1_rank": [round(value, 1) for value in two_seconds],
        },
        "wall_ratio_two_over_one": spread(wall_ratio),
    }
    print(json.dumps(result), flush=True)
    write_result(f"multinode-{'gpu' if torch.cuda.is_available() else 'cpu'}", result)


if __name__ == "__main__":
    main()
