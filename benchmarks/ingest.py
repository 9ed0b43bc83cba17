"""Benchmark: the Spark ingest job against a bare single-process PIL loop on the same images.

For each size (default 1k, 10k, 70k Fashion-MNIST images from Debian's package), it writes
the images into a landing folder, times a bare loop doing the same read/hash/decode/resize/
encode work, then times the Spark job (start-up separately) into a fresh lake, sampling the
peak memory of the driver (Python + JVM) and the Python workers. Results go to
``benchmarks/results/ingest.json``; ``benchmarks/README.md`` summarises them.

    .venv/bin/python -m benchmarks.ingest [--sizes 1000 10000 70000] [--master local[*]]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image, ImageOps

from benchmarks.common import PeakMemory, fresh_workdir, write_result
from visionloop.ingest.landing import LandingSource
from visionloop.ingest.samples import materialise
from visionloop.settings import load_settings
from visionloop.spark import spark_session
from visionloop.spark_jobs.preprocess_images import run_batch

REPO_ROOT = Path(__file__).resolve().parent.parent


def bare_loop(files: list[Path], size: int) -> float:
    """The same per-file work in one process with PIL alone; returns images per second."""
    started = time.perf_counter()
    for path in files:
        data = path.read_bytes()
        hashlib.sha256(data).hexdigest()
        with Image.open(io.BytesIO(data)) as image:
            rgb = ImageOps.exif_transpose(image).convert("RGB")
        out = io.BytesIO()
        ImageOps.pad(rgb, (size, size), Image.Resampling.BICUBIC).save(out, format="PNG")
    return len(files) / (time.perf_counter() - started)


def _timed_batch(spark, settings, landing: Path) -> tuple[float, dict]:
    started = time.perf_counter()
    report = run_batch(spark, settings, [LandingSource(path=str(landing))])
    return time.perf_counter() - started, report


def run_size(count: int, master: str, work: Path) -> dict:
    landing = work / f"landing-{count}"
    if not landing.exists():
        materialise(landing, limit=count)
    files = sorted(path for path in landing.rglob("*.png"))
    settings = load_settings(data_home=work / f"home-{count}", spark_master=master)
    shutil.rmtree(settings.data_home, ignore_errors=True)

    bare = bare_loop(files, settings.image_size)
    with PeakMemory() as memory:
        started = time.perf_counter()
        spark = spark_session(settings, "visionloop-benchmark")
        startup = time.perf_counter() - started
        job, report = _timed_batch(spark, settings, landing)
        shutil.rmtree(settings.data_home)  # the same batch again into an empty lake, warm JVM
        warm_job, _ = _timed_batch(spark, settings, landing)
        cores = spark.sparkContext.defaultParallelism
        spark.stop()
    total = startup + job
    spark_rate = count / total
    return {
        "images": count,
        "cores": cores,
        "bare_loop_img_s": round(bare, 1),
        "spark_img_s": round(spark_rate, 1),
        "spark_img_s_excluding_startup": round(count / job, 1),
        "ratio_to_cores_x_bare": round(spark_rate / (cores * bare), 3),
        "ratio_excluding_startup": round(count / job / (cores * bare), 3),
        "spark_img_s_warm": round(count / warm_job, 1),
        "ratio_warm": round(count / warm_job / (cores * bare), 3),
        "spark_startup_s": round(startup, 2),
        "startup_share": round(startup / total, 3),
        "job_s": round(job, 2),
        "warm_job_s": round(warm_job, 2),
        "peak_driver_rss_mb": round(memory.driver / 2**20),
        "peak_workers_rss_mb": round(memory.workers / 2**20),
        "written": report.written,
        "duplicates": report.duplicates,
        "quarantined": report.quarantined,
    }


def _run_in_fresh_process(count: int, args: argparse.Namespace) -> dict:
    """Each size gets its own JVM, so every run pays (and reports) Spark's start-up."""
    command = [
        sys.executable,
        "-m",
        "benchmarks.ingest",
        "--one",
        str(count),
        "--master",
        args.master,
        "--work",
        str(args.work),
    ]
    output = subprocess.run(
        command, check=True, capture_output=True, text=True, cwd=REPO_ROOT
    ).stdout
    result = json.loads(output.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 70000])
    parser.add_argument("--master", default="local[*]")
    parser.add_argument("--work", type=Path, help="default: a new empty folder")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)  # one size, this process
    args = parser.parse_args()
    args.work = args.work or fresh_workdir("ingest")
    args.work.mkdir(parents=True, exist_ok=True)
    if args.one:
        print(json.dumps(run_size(args.one, args.master, args.work)))
        return
    results = [_run_in_fresh_process(count, args) for count in args.sizes]
    write_result("ingest", {"work": str(args.work), "results": results})


if __name__ == "__main__":
    main()
