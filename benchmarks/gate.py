"""Benchmark: the quality gate's peak memory on a 10k-row and a 70k-row lake (flat is the target).

For each table size, Fashion-MNIST images (preprocessed like ingest) are committed in
batches of 10k, but for the last 1k, staged as the new batch, and the whole gate (all three suites,
Great Expectations, Data Docs) runs on it in a fresh process whose peak RSS is read from
the kernel. The baseline, alternated with it, is what the gate used to do: load the
table's metadata and image lengths into one pandas frame (also in a fresh process).
Results: ``benchmarks/results/gate.json``.

    .venv/bin/python -m benchmarks.gate [--sizes 10000 70000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import fresh_workdir, write_result
from benchmarks.lake_without_spark import image_row
from visionloop.ingest.samples import iter_images
from visionloop.lake import commit as lake
from visionloop.lake.contract import IMAGES_SCHEMA
from visionloop.settings import Settings, load_settings

BATCH_ROWS = 10_000
NEW_ROWS = 1_000


def _rows(images: list[tuple], settings: Settings) -> list[dict]:
    now = datetime.now(UTC)
    return [
        image_row(pixels, label, f"fashion-mnist/{part}/{index}", settings, now)
        for part, index, pixels, label in images
    ]


def _stage(settings: Settings, batch_id: str, rows: list[dict]) -> None:
    staging = lake.stage(settings, batch_id)
    staging.table("images").mkdir()
    table = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
    pq.write_table(table, staging.table("images") / "part-00000.parquet", row_group_size=1024)


def build_lake(settings: Settings, size: int) -> None:
    """A table of ``size`` rows: committed in batches of 10k, the last 1k staged as ``new``."""
    images = [image for _, image in zip(range(size), iter_images(), strict=False)]
    committed = size - NEW_ROWS
    for start in range(0, committed, BATCH_ROWS):
        batch_id = f"b{start // BATCH_ROWS:02d}"
        chunk = images[start : min(start + BATCH_ROWS, committed)]
        _stage(settings, batch_id, _rows(chunk, settings))
        lake.commit(settings, batch_id, {"batch_id": batch_id})
    _stage(settings, "new", _rows(images[committed:], settings))


def measure(mode: str, data_home: Path) -> dict:
    """Run one measurement in a fresh process; its peak RSS and wall time."""
    command = [sys.executable, "-m", "benchmarks.gate", "--measure", mode, str(data_home)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _measure_here(mode: str, data_home: Path) -> None:
    settings = load_settings(data_home=data_home)
    started = time.perf_counter()
    if mode == "gate":
        from visionloop.quality.gate import run_gate

        result = run_gate(settings, "new", files_in=NEW_ROWS, quarantined=0)
        rows = result.stats["table_rows"]
    else:  # the old way: the whole table's metadata in one pandas frame
        from visionloop.lake.snapshot import IMAGES, list_table
        from visionloop.quality.aggregates import batch_frame

        files = list_table(settings.lake_dir, IMAGES)
        rows = len(batch_frame(files, "all"))
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    seconds = time.perf_counter() - started
    print(
        json.dumps(
            {"peak_rss_mb": round(peak_kb / 1024), "seconds": round(seconds, 2), "rows": rows}
        )
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 70_000])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", nargs=2, help=argparse.SUPPRESS)  # mode, data home
    args = parser.parse_args()
    if args.measure:
        _measure_here(args.measure[0], Path(args.measure[1]))
        return
    work = fresh_workdir("gate")
    results = []
    for size in args.sizes:
        settings = load_settings(data_home=work / f"home-{size}")
        build_lake(settings, size)
        runs: dict[str, list[dict]] = {"pandas_frame": [], "gate": []}
        for _ in range(args.rounds):  # alternate, so both see the same machine state
            runs["pandas_frame"].append(measure("frame", settings.data_home))
            runs["gate"].append(measure("gate", settings.data_home))
        summary = {
            "table_rows": size,
            "new_rows": NEW_ROWS,
            **{
                f"{name}_peak_rss_mb": statistics.median(run["peak_rss_mb"] for run in values)
                for name, values in runs.items()
            },
            "gate_seconds": statistics.median(run["seconds"] for run in runs["gate"]),
            "runs": runs,
        }
        print(json.dumps(summary), flush=True)
        results.append(summary)
    small, large = results[0]["gate_peak_rss_mb"], results[-1]["gate_peak_rss_mb"]
    write_result("gate", {"work": str(work), "results": results, "gate_growth": large / small})


if __name__ == "__main__":
    main()
