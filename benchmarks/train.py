"""Benchmark: training throughput of the real pipeline against a bare loop on the same model.

Three measurements on one model, batch and image size:
- **bare**: forward, backward and optimizer step on in-memory tensors, as timm's
  ``benchmark.py`` measures training (bf16 autocast + channels_last on a GPU, like the
  pipeline);
- **pipeline**: ``torchrun`` of ``visionloop.training.train`` on the lake — Parquet reader,
  decoding and RandAugment in DataLoader workers, DDP, checkpoints and metric logging —
  for each process count; img/s of its last epoch's training loop;
- **loader**: the lake reader with train-time augmentation alone, to show it keeps up.

The lake is ``--lake`` (a data home with an ingested lake; default: the Spark ingest of
``data/sample`` into a temporary folder). Results: ``benchmarks/results/train-<device>.json``.

    .venv/bin/python benchmarks/train.py [--nproc 1 2] [--lake .visionloop]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
from timm.optim import create_optimizer_v2

from visionloop.settings import Settings, load_settings
from visionloop.training.lake_reader import LakeDataset, LakeIndex, list_parquet_files, make_loader
from visionloop.training.launch import run_training
from visionloop.training.models import create_model, model_spec
from visionloop.training.transforms import train_transform

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def device_name() -> str:
    return torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"


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


def loader_rate(settings: Settings, batches: int) -> float:
    """img/s of the lake reader + train-time augmentation alone (one rank)."""
    index = LakeIndex.scan(list_parquet_files(settings.images_dir), settings.classes)
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


def pipeline_rate(settings: Settings, nproc: int, work: Path) -> dict:
    """Last-epoch training img/s of the real torchrun pipeline with ``nproc`` processes."""
    run_settings = settings.model_copy(
        update={"training": settings.training.model_copy(update={"nproc_per_node": nproc})}
    )
    outcome = run_training(run_settings, work / f"run-{nproc}", log=lambda line: None)
    last = outcome.history[-1]
    return {"img_s": last["img_per_s"], "epochs": len(outcome.history)}


def default_lake(work: Path) -> Path:
    """Ingest the shipped sample with Spark into ``work``; returns that data home."""
    from spark_jobs.preprocess_images import run_batch
    from visionloop.parameters import sample_sources
    from visionloop.spark import spark_session

    settings = load_settings(data_home=work / "lake-home")
    if not settings.images_dir.exists():
        spark = spark_session(settings, "visionloop-benchmark")
        run_batch(spark, settings, sample_sources())
        spark.stop()
    return settings.data_home


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, help="data home holding an ingested lake")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--steps-per-epoch", type=int, default=20)
    parser.add_argument("--bare-steps", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "vl-train")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    lake = args.lake or default_lake(args.work)
    base = load_settings(data_home=lake)
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
    index = LakeIndex.scan(list_parquet_files(settings.images_dir), settings.classes)
    classes = len(index.labels)
    result = {
        "machine": {
            "device": device_name(),
            "cpu_cores": os.cpu_count(),
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
        "model": settings.training.model_name,
        "input_size": settings.training.input_size,
        "batch_size": settings.training.batch_size,
        "num_workers": settings.training.num_workers,
        "bare_img_s": round(bare_loop(settings, classes, args.bare_steps, warmup=5), 1),
        "loader_img_s": round(loader_rate(settings, args.steps_per_epoch), 1),
        "pipeline": {},
    }
    for nproc in args.nproc:
        run = pipeline_rate(settings, nproc, args.work)
        run["ratio_to_bare"] = round(run["img_s"] / result["bare_img_s"], 3)
        result["pipeline"][str(nproc)] = run
        print(json.dumps({"nproc": nproc, **run}), flush=True)
    print(json.dumps(result, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    tag = "gpu" if torch.cuda.is_available() else "cpu"
    (RESULTS_DIR / f"train-{tag}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
