"""Benchmark: training throughput of the real pipeline against a bare loop on the same model.

Three measurements on one model, batch and image size:
- **bare**: forward, backward and optimizer step on in-memory tensors, as timm's
  ``benchmark.py`` measures training (bf16 autocast + channels_last on a GPU, like the
  pipeline);
- **pipeline**: ``torchrun`` of ``visionloop.training.train`` on the lake — Parquet reader,
  decoding and RandAugment in DataLoader workers, DDP, checkpoints and metric logging —
  for each process count; img/s of its last epoch's training loop, each run in a new run
  folder (never a resumed one);
- **loader**: the lake reader with train-time augmentation alone, to show it keeps up.

Bare loop and pipeline alternate for ``--rounds`` rounds; the result is the median ratio and
its spread. The lake is ``--lake`` (a data home with an ingested lake; default: the Spark
ingest of ``data/sample`` into this run's fresh work folder).
Results: ``benchmarks/results/train-<device>.json``.

    .venv/bin/python -m benchmarks.train [--nproc 1 2] [--rounds 3] [--lake .visionloop]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from benchmarks.common import alternate, fresh_workdir, write_result
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.settings import Settings, load_settings
from visionloop.training.lake_reader import LakeDataset, LakeIndex, make_loader
from visionloop.training.launch import run_training
from visionloop.training.models import create_model, model_spec
from visionloop.training.transforms import train_transform


def bare_loop(settings: Settings, classes: int, steps: int, warmup: int) -> float:
    """img/s of forward/backward/step on random in-memory tensors."""
    training = settings.training
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = create_model(training.model_name, classes, "none").to(device)
    size, batch = training.input_size, training.batch_size
    images = torch.randn(batch, 3, size, size, device=device)
    targets = torch.randint(0, classes, (batch,), device=device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = create_optimizer_v2(model, "adamw", lr=training.lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    model.train()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            loss = loss_fn(model(images), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - started)


def loader_rate(settings: Settings, snapshot: LakeSnapshot, batches: int) -> float:
    """img/s of the lake reader + train-time augmentation alone (one rank)."""
    index = LakeIndex.scan(snapshot)
    name, size = settings.training.model_name, settings.training.input_size
    spec = model_spec(create_model(name, len(index.labels), "none"), name, index.labels, size)
    dataset = LakeDataset(
        index,
        "train",
        train_transform(spec, settings.training.rand_augment),
        batch_size=settings.training.batch_size,
        shuffle=True,
        drop_last=True,
        window=settings.training.shuffle_window_row_groups,
        max_batches=batches,
    )
    loader = make_loader(dataset, settings.training.num_workers)
    iterator = iter(loader)
    first = next(iterator)  # worker start-up is not throughput
    started, seen = time.perf_counter(), 0
    for batch in iterator:
        seen += len(batch.target)
    return seen / (time.perf_counter() - started) if seen else float(len(first.target))


def pipeline_rate(settings: Settings, snapshot: LakeSnapshot, nproc: int, work: Path) -> float:
    """Last-epoch training img/s of the real torchrun pipeline, in a new run folder."""
    run_settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"nproc_per_node": nproc})}
    )
    output = Path(tempfile.mkdtemp(prefix=f"run-{nproc}-", dir=work))
    outcome = run_training(run_settings, output, snapshot, log=lambda line: None)
    return outcome.history[-1]["img_per_s"]


def default_lake(work: Path) -> Path:
    """Ingest the shipped sample with Spark into ``work``; returns that data home."""
    from visionloop.parameters import sample_sources
    from visionloop.spark import spark_session
    from visionloop.spark_jobs.preprocess_images import run_batch

    settings = load_settings(data_home=work / "lake-home")
    spark = spark_session(settings, "visionloop-benchmark")
    run_batch(spark, settings, sample_sources())
    spark.stop()
    return settings.data_home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, help="data home holding an ingested lake")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--bare-steps", type=int, default=20)
    args = parser.parse_args()
    work = fresh_workdir("train")
    base = load_settings(data_home=args.lake or default_lake(work))
    settings = base.model_copy(
        update={
            "training": base.training.model_copy(
                update={
                    "epochs": args.epochs,
                    "max_steps_per_epoch": args.steps_per_epoch,
                    "pretrained": "none",
                }
            )
        }
    )
    snapshot = take(settings.lake_dir)
    classes = len(snapshot.classes)
    result = {
        "model": settings.training.model_name,
        "input_size": settings.training.input_size,
        "batch_size": settings.training.batch_size,
        "num_workers": settings.training.num_workers,
        "work": str(work),
        "loader_img_s": round(loader_rate(settings, snapshot, args.steps_per_epoch), 1),
        "pipeline": {},
    }
    for nproc in args.nproc:
        rounds = alternate(
            lambda: bare_loop(settings, classes, args.bare_steps, warmup=5),
            lambda nproc=nproc: pipeline_rate(settings, snapshot, nproc, work),
            args.rounds,
        )
        result["pipeline"][str(nproc)] = rounds
        print(json.dumps({"nproc": nproc, **rounds}), flush=True)
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    write_result(f"train-{tag}", result)


if __name__ == "__main__":
    main()
