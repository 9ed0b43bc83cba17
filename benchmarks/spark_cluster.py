"""Benchmark: the ingest and embedding jobs on long-lived Spark on 127.0.0.1 against
today's cold ``local[2]`` start, on the same machine.

Subjects: a standalone cluster (a master and two 1-core workers; each job still starts its
driver and executors) and a Spark Connect server on ``local[2]`` started once (each job
attaches to its JVM and warm Python workers). Every job runs as its own process
(``python spark_jobs/<job>``, the session from the settings) on the same Fashion-MNIST
landing folder into a fresh lake; the rounds alternate baseline and subjects. The cores are
the same, so the cluster's ratio (its seconds / local seconds, per job) is its overhead —
executor JVMs, task shipping — not a speed-up; Connect's ratio is what a night saves by not
starting Spark. Results go to ``benchmarks/results/spark_cluster.json``.

    .venv/bin/python -m benchmarks.spark_cluster [--images 2000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from benchmarks.common import fresh_workdir, spread, write_result
from tests.spark_cluster import connect_server, standalone_cluster
from tests.spark_jobs import report_of, run_job
from visionloop.ingest.samples import materialise
from visionloop.settings import load_settings

JOBS = (("ingest", "preprocess_images.py"), ("embed", "infer_images.py"))


def one_run(landing: Path, home: Path, spark: dict) -> dict[str, float]:
    """Seconds of each job, from spark-submit to its exit, into a fresh lake at ``home``."""
    settings = load_settings(data_home=home, image_size=32, embeddings={"input_size": 32}, **spark)
    config = settings.save(home.parent / f"config-{home.name}")
    seconds = {}
    for name, script in JOBS:
        args = ("--source", str(landing)) if name == "ingest" else ("embed",)
        started = time.perf_counter()
        report = report_of(run_job(script, config, *args))
        seconds[name] = round(time.perf_counter() - started, 2)
        assert report["written"] > 0, report
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    work = fresh_workdir("spark-cluster")
    landing = work / "landing"
    materialise(landing, limit=args.images)
    runs: dict[str, list[dict[str, float]]] = {"local": [], "standalone": [], "connect": []}
    with (
        standalone_cluster(work / "cluster") as cluster,
        connect_server(work / "connect") as (connect_url, _),
    ):
        modes = {
            "local": {"spark_master": "local[2]"},
            "standalone": cluster.settings(),
            "connect": {"spark_master": connect_url},
        }
        for number in range(args.rounds):
            for mode, spark in modes.items():
                seconds = one_run(landing, work / f"{mode}-{number}", spark)
                runs[mode].append(seconds)
                print(f"round {number} {mode}: {seconds}", flush=True)
    ratios = {
        mode: {
            name: spread(
                [s[name] / b[name] for b, s in zip(runs["local"], runs[mode], strict=True)]
            )
            for name, _ in JOBS
        }
        for mode in ("standalone", "connect")
    }
    write_result(
        "spark_cluster",
        {
            "images": args.images,
            "rounds": args.rounds,
            "baseline": "local[2], a cold start per job",
            "standalone": "master + 2 workers x 1 core, 1 GiB executors, 127.0.0.1",
            "connect": "Spark Connect server on local[2], started once before the rounds",
            "seconds": runs,
            "over_local": ratios,
        },
    )
    print(ratios)


if __name__ == "__main__":
    main()
