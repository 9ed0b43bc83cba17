"""Benchmark: the Spark embedding and scoring jobs against a bare timm forward loop.

For each size (default 10k and 70k Fashion-MNIST images from Debian's package), a fresh
work folder gets a lake by the Spark ingest job; then, in the same Spark session:
- **bare**: the same model's forward pass over in-memory tensors, same batch size, all
  cores (``torch`` threads = cores), as timm's ``benchmark.py`` measures inference;
- **embed**: ``spark_jobs/infer_images.py`` with the embedder over the whole lake (reading
  the images table, preprocessing, the model, writing and committing the embeddings table);
- **score**: the same job with a classifier (the packaged lite0 with a 10-class head) into
  the predictions table — what batch scoring does for each new champion.
Bare and subject alternate for ``--rounds`` rounds (the table is deleted before each
subject round, so every round embeds everything); peak memory of the driver (Python + JVM)
and the Python workers is sampled throughout. Results: ``benchmarks/results/embed-<size>.json``.

    .venv/bin/python -m benchmarks.embed [--sizes 10000 70000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

import torch

from benchmarks.common import PeakMemory, alternate, fresh_workdir, write_result
from visionloop.embeddings.embedder import EmbeddingJob, embedder_source
from visionloop.ingest.landing import LandingSource
from visionloop.ingest.samples import CLASS_NAMES, materialise
from visionloop.lake.snapshot import take
from visionloop.preprocessing import image_options
from visionloop.registry.scoring import ScoringJob
from visionloop.settings import Settings, load_settings
from visionloop.spark import spark_session
from visionloop.spark_jobs.infer_images import run_inference
from visionloop.spark_jobs.preprocess_images import run_batch
from visionloop.training.models import create_model, model_spec

BARE_BATCHES = 20


def bare_forward(model: torch.nn.Module, batch: int, size: int) -> float:
    """img/s of ``model`` on random in-memory tensors, all cores, after a warm-up batch."""
    torch.set_num_threads(os.cpu_count() or 1)
    tensor = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        model(tensor)
        started = time.perf_counter()
        for _ in range(BARE_BATCHES):
            model(tensor)
    return BARE_BATCHES * batch / (time.perf_counter() - started)


def classifier_file(settings: Settings, work: Path) -> Path:
    """A ``model.pt`` of the packaged lite0 with a fresh 10-class head (scoring's model)."""
    name = settings.embeddings.model_name
    model = create_model(name, len(CLASS_NAMES), "packaged")
    spec = model_spec(model, name, CLASS_NAMES, settings.embeddings.input_size)
    path = work / "model.pt"
    torch.save(spec.checkpoint(model.state_dict(), image_options(settings).to_dict()), path)
    return path


def timed_job(spark, settings: Settings, job, table: str) -> float:
    """img/s of one full run of ``job`` over the lake (its table emptied first)."""
    shutil.rmtree(settings.lake_dir / table, ignore_errors=True)
    snapshot = take(settings.lake_dir)
    started = time.perf_counter()
    report = run_inference(spark, settings, snapshot, job)
    return report.written / (time.perf_counter() - started)


def run_size(count: int, rounds: int, work: Path) -> dict:
    landing = work / f"landing-{count}"
    materialise(landing, limit=count)
    settings = load_settings(data_home=work / f"home-{count}")
    source = embedder_source(settings)
    embedder = source.build()
    config = settings.embeddings
    embed_job = EmbeddingJob(
        source, embedder.dimensions, config.batch_size, config.threads_per_task
    )
    model_pt = classifier_file(settings, work)
    score_job = ScoringJob(
        str(model_pt), 1.0, "benchmark", "1", config.batch_size, config.threads_per_task
    )
    classifier = create_model(config.model_name, len(CLASS_NAMES), "packaged").eval()
    with PeakMemory() as memory:
        spark = spark_session(settings, "visionloop-benchmark")
        run_batch(spark, settings, [LandingSource(path=str(landing))])
        size = config.input_size
        embed = alternate(
            lambda: bare_forward(embedder.model, config.batch_size, size),
            lambda: timed_job(spark, settings, embed_job, "embeddings"),
            rounds,
        )
        score = alternate(
            lambda: bare_forward(classifier, config.batch_size, size),
            lambda: timed_job(spark, settings, score_job, "predictions"),
            rounds,
        )
        spark.stop()
    return {
        "images": count,
        "batch_size": config.batch_size,
        "spark_tasks_x_threads": f"{os.cpu_count()} x {config.threads_per_task}",
        "embed": embed,
        "score": score,
        "peak_driver_rss_mb": round(memory.driver / 2**20),
        "peak_workers_rss_mb": round(memory.workers / 2**20),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10000, 70000])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for count in args.sizes:
        work = fresh_workdir(f"embed-{count}")
        result = run_size(count, args.rounds, work)
        print(json.dumps(result), flush=True)
        shutil.rmtree(work, ignore_errors=True)
        write_result(
            f"embed-{count}", {"model": "tf_efficientnet_lite0 (packaged), 64 px", **result}
        )


if __name__ == "__main__":
    main()
