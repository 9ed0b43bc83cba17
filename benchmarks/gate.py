"""Benchmark: the quality gate's time and peak memory on a 10k-row and a 70k-row lake.

For each table size, Fashion-MNIST images (preprocessed like ingest) are committed in
batches of 10k with their seed label events and, as the gate keeps them, their per-file
aggregates (``file_stats``); the last 1k are staged as the new batch. Each measurement runs
in a fresh process and times the whole-table aggregates (``table_file_stats``) and then the
whole gate (all three suites, Great Expectations, Data Docs), and reads its peak RSS from
the kernel. The new batch's own aggregates are dropped before each timing, so every run
aggregates the batch as a night does.

* **subject** — the gate as it is: the committed batches' kept aggregates plus only their
  ``image_id`` and ``label`` columns;
* **baseline** — the gate without kept aggregates, i.e. what it did before they were kept:
  every committed file's image bytes are read (the lake's ``file_stats`` is removed before
  each timing; the gate recomputes it).

Baseline and subject alternate for ``--rounds`` rounds on the same lake; the ratio
(baseline / subject seconds) is reported as median and min-max, and ``growth`` is the
subject's median at the largest size over the smallest (flat is 1.0).
Results: ``benchmarks/results/gate.json``.

    .venv/bin/python -m benchmarks.gate [--sizes 10000 70000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from benchmarks.common import fresh_workdir, spread, write_result
from benchmarks.lake_without_spark import image_row
from visionloop.ingest.samples import iter_images
from visionloop.lake import commit as lake
from visionloop.lake.contract import IMAGES_SCHEMA
from visionloop.lake.label_events import seed_events
from visionloop.quality.aggregates import (
    STATS_TABLE,
    staged_or_committed,
    stats_folder,
    stored_aggregates,
)
from visionloop.settings import Settings, load_settings

BATCH_ROWS = 10_000
NEW_ROWS = 1_000
NEW_BATCH = "new"
MODES = ("baseline", "subject")


def _rows(images: list[tuple], settings: Settings) -> list[dict]:
    now = datetime.now(UTC)
    return [
        image_row(pixels, label, f"fashion-mnist/{part}/{index}", settings, now)
        for part, index, pixels, label in images
    ]


def _stage(settings: Settings, batch_id: str, rows: list[dict]) -> None:
    """Stage a batch as ingest does: its images and their seed label events."""
    staging = lake.stage(settings, batch_id)
    table = pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA)
    for name, data in (("images", table), ("label_events", seed_events(table, datetime.now(UTC)))):
        staging.table(name).mkdir()
        pq.write_table(data, staging.table(name) / "part-00000.parquet", row_group_size=1024)


def build_lake(settings: Settings, size: int) -> None:
    """A table of ``size`` rows: committed in batches of 10k, the last 1k staged as ``new``."""
    images = [image for _, image in zip(range(size), iter_images(), strict=False)]
    committed = size - NEW_ROWS
    for start in range(0, committed, BATCH_ROWS):
        batch_id = f"b{start // BATCH_ROWS:02d}"
        _stage(
            settings, batch_id, _rows(images[start : min(start + BATCH_ROWS, committed)], settings)
        )
        # what the gate keeps for a staged batch, so the commit moves it into the lake
        stored_aggregates(staged_or_committed(settings, batch_id), stats_folder(settings, batch_id))
        lake.commit(settings, batch_id, {"batch_id": batch_id})
    _stage(settings, NEW_BATCH, _rows(images[committed:], settings))


def _reset(settings: Settings, mode: str) -> None:
    """Drop the new batch's aggregates; for the baseline, the lake's too."""
    shutil.rmtree(stats_folder(settings, NEW_BATCH), ignore_errors=True)
    if mode == "baseline":
        shutil.rmtree(settings.lake_dir / STATS_TABLE, ignore_errors=True)


def measure(mode: str, data_home: Path) -> dict[str, Any]:
    """Run one measurement in a fresh process: its timings and peak RSS."""
    command = [sys.executable, "-m", "benchmarks.gate", "--measure", mode, str(data_home)]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def _measure_here(mode: str, data_home: Path) -> None:
    from visionloop.quality.aggregates import table_file_stats
    from visionloop.quality.gate import run_gate

    settings = load_settings(data_home=data_home)
    _reset(settings, mode)
    started = time.perf_counter()
    rows = table_file_stats(settings, NEW_BATCH).rows
    table_seconds = time.perf_counter() - started
    _reset(settings, mode)
    started = time.perf_counter()
    result = run_gate(settings, NEW_BATCH, files_in=NEW_ROWS, quarantined=0)
    gate_seconds = time.perf_counter() - started
    assert result.stats["table_rows"] == rows, (result.stats["table_rows"], rows)
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(
        json.dumps(
            {
                "table_seconds": round(table_seconds, 3),
                "gate_seconds": round(gate_seconds, 3),
                "peak_rss_mb": round(peak_kb / 1024),
                "rows": rows,
            }
        )
    )


def _summary(size: int, runs: dict[str, list[dict]]) -> dict[str, Any]:
    summary: dict[str, Any] = {"table_rows": size, "new_rows": NEW_ROWS}
    for key in ("table_seconds", "gate_seconds", "peak_rss_mb"):
        for mode in MODES:
            summary[f"{mode}_{key}"] = statistics.median(run[key] for run in runs[mode])
        if key != "peak_rss_mb":
            pairs = zip(runs["baseline"], runs["subject"], strict=True)
            summary[f"{key}_ratio"] = spread([b[key] / s[key] for b, s in pairs])
    return summary | {"runs": runs}


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
        runs: dict[str, list[dict]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):  # alternate, so both see the same machine state
            for mode in MODES:
                runs[mode].append(measure(mode, settings.data_home))
        summary = _summary(size, runs)
        print(json.dumps(summary), flush=True)
        results.append(summary)
    small, large = results[0], results[-1]
    growth = {
        f"{mode}_{key}": round(large[f"{mode}_{key}"] / small[f"{mode}_{key}"], 3)
        for mode in MODES
        for key in ("table_seconds", "gate_seconds", "peak_rss_mb")
    }
    write_result("gate", {"work": str(work), "results": results, "growth": growth})


if __name__ == "__main__":
    main()
