"""Benchmark: the same night's non-training stages on a small and on a large lake (issue 13 §2).

Target: with the same 1,000-image night, each stage of the nightly (training off) on a
70k-image lake takes ≤ 1.5x its time on a 5k-image lake, measured side by side in one run,
and memory stays flat likewise.

In a fresh work folder two lakes are built, each by the real ``nightly`` flow on
Fashion-MNIST PNGs from Debian's package written as class folders into a dated sub-folder
of the lake's landing folder (``landing/2026-11-01/<class>/*.png``), with tiny CPU training
settings so that a champion exists. Both lakes hold the first images of the 70k (train part
first); the nights are the last ``rounds x night`` images, which no lake holds, so the large
lake is capped at ``70,000 - rounds x night`` and holds 70k after its last night. Then, for
each round, a fresh unlabelled night (``landing/2026-12-0<round>/*.png``, the same images
for both lakes) runs on the small lake, then on the large one, with ``train=False``. Per
night: seconds per stage (the flow run's task runs from the Prefect API, grouped by task
name) and the peak RSS of this process, the JVM, the Python workers and other children,
sampled every 0.1 s. Per stage: the median large/small ratio and its spread (min-max).
Results: ``benchmarks/results/night_cost.json``.

    .venv/bin/python -m benchmarks.night_cost [--small 5000] [--large 70000] [--night 1000]
        [--rounds 2] [--warmup 0] [--work DIR] [--build-only | --lakes DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import psutil

from benchmarks.common import fresh_workdir, small_cpu_settings, spread, write_result

TARGET = 1.5
#: A stage under this many seconds on the large lake is timer noise, whatever its ratio.
NEGLIGIBLE_S = 0.5
LAKES_FILE = "lakes.json"  # what --build-only leaves for --lakes
TOTAL_IMAGES = 70_000
LAKE_DATE = "2026-11-01"
#: Tiny CPU training (tests/integration/test_train_flow.py::TINY_TRAINING): a champion exists.
TINY_TRAINING = {
    "model_name": "resnet10t",
    "pretrained": "none",
    "input_size": 32,
    "epochs": 1,
    "batch_size": 64,
    "num_workers": 0,
    "nproc_per_node": 1,
    "rand_augment": None,
    "max_steps_per_epoch": 20,
}


class PeakRss:
    """Peak RSS (bytes) of this process, its JVM, its Python workers and other children, and
    of the driver's anonymous memory alone (``driver_anon``: RSS less file-backed pages, such
    as the memory-mapped index shards, which the kernel can drop and re-read)."""

    KINDS = ("driver", "driver_anon", "jvm", "workers", "other")

    def __init__(self) -> None:
        self.peak = dict.fromkeys((*self.KINDS, "total"), 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _kind(child: psutil.Process) -> str:
        if "java" in child.name():
            return "jvm"
        command = " ".join(child.cmdline())
        return "workers" if "pyspark" in command else "other"

    def _sample(self, me: psutil.Process) -> None:
        now = dict.fromkeys(self.KINDS, 0)
        driver = me.memory_info()
        now["driver"], now["driver_anon"] = driver.rss, driver.rss - driver.shared
        for child in me.children(recursive=True):
            try:
                now[self._kind(child)] += child.memory_info().rss
            except psutil.Error:
                continue
        # "total" excludes "other" (Prefect's ephemeral API server): it is not the night's.
        now_total = now["driver"] + now["jvm"] + now["workers"]
        for kind in self.KINDS:
            self.peak[kind] = max(self.peak[kind], now[kind])
        self.peak["total"] = max(self.peak["total"], now_total)

    def _run(self) -> None:
        me = psutil.Process()
        self._sample(me)
        while not self._stop.wait(0.1):
            self._sample(me)

    def megabytes(self) -> dict[str, int]:
        return {kind: round(value / 2**20) for kind, value in self.peak.items()}


def write_pngs(images: list[tuple[str, int, Any, int]], dest: Path, labelled: bool) -> None:
    from visionloop.ingest.samples import CLASS_NAMES, _save_png

    for part, index, pixels, label in images:
        folder = dest / CLASS_NAMES[label] if labelled else dest
        _save_png(pixels, folder / f"{part}-{index:05d}.png")


def lake_settings(home: Path):
    return small_cpu_settings(home, TINY_TRAINING)


def task_seconds(flow_run_id: Any, wait_s: float = 30.0) -> dict[str, float]:
    """Seconds per task name of one flow run, from the Prefect API (all runs finished)."""
    from prefect import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, TaskRunFilter

    flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
    deadline = time.monotonic() + wait_s
    with get_client(sync_client=True) as client:
        while True:
            runs = client.read_task_runs(
                flow_run_filter=flow_filter, task_run_filter=TaskRunFilter(), limit=200
            )
            done = all(run.end_time is not None for run in runs)
            if (runs and done) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    seconds: dict[str, float] = {}
    for run in runs:
        name = run.name.rsplit("-", 1)[0]  # "embed_images-3f2" → "embed_images"
        if run.start_time is not None and run.end_time is not None:
            took = (run.end_time - run.start_time).total_seconds()
        else:
            took = run.total_run_time.total_seconds()
        seconds[name] = round(seconds.get(name, 0.0) + took, 3)
    return seconds


def run_night(config: Path, landing: Path, train: bool) -> dict[str, Any]:
    """One nightly flow run on the lake of ``config``; its stage seconds and peak memory."""
    from visionloop.flows.nightly import nightly
    from visionloop.ingest.landing import LandingSource
    from visionloop.parameters import NightlyParameters

    params = NightlyParameters(
        sources=[LandingSource(path=str(landing))], config=str(config), train=train
    )
    with PeakRss() as memory:
        started = time.perf_counter()
        state = nightly(params, return_state=True)
        wall = time.perf_counter() - started
    result = state.result()
    stages = task_seconds(state.state_details.flow_run_id)
    report = result.ingest.report
    return {
        "wall_s": round(wall, 2),
        "stages_s": stages,
        "untracked_s": round(wall - sum(stages.values()), 2),
        "peak_rss_mb": memory.megabytes(),
        "ingest": {"listed": report.listed, "skipped": report.skipped, "written": report.written},
        "trained": bool(result.train and result.train.trained),
    }


def lake_rows(settings) -> int:
    from visionloop.lake.snapshot import take

    snapshot = take(settings.lake_dir)
    return sum(file.rows for file in snapshot.files)


def summarise(nights: list[dict[str, Any]]) -> dict[str, Any]:
    """Per stage: seconds on each lake per round and the large/small ratio's spread."""
    stages = sorted({name for night in nights for name in night["small"]["stages_s"]})
    rows = {}
    for name in [*stages, "wall"]:
        small, large = [], []
        for night in nights:
            for lake, values in (("small", small), ("large", large)):
                run = night[lake]
                values.append(run["wall_s"] if name == "wall" else run["stages_s"].get(name, 0.0))
        ratios = [b / a for a, b in zip(small, large, strict=True) if a > 0]
        rows[name] = {
            "small_s": small,
            "large_s": large,
            "ratio": spread(ratios) if ratios else None,
            "meets_target": bool(ratios) and statistics.median(ratios) <= TARGET,
            "negligible": statistics.median(large) < NEGLIGIBLE_S,
        }
    memory = {}
    for kind in (*PeakRss.KINDS, "total"):
        small = [night["small"]["peak_rss_mb"][kind] for night in nights]
        large = [night["large"]["peak_rss_mb"][kind] for night in nights]
        ratios = [b / a for a, b in zip(small, large, strict=True) if a > 0]
        memory[kind] = {"small_mb": small, "large_mb": large, "ratio": spread(ratios)}
    return {"stages": rows, "peak_rss": memory}


def print_table(summary: dict[str, Any]) -> None:
    print(f"{'stage':<26}{'small s':>10}{'large s':>10}  ratio median (min-max)")
    for name, row in summary["stages"].items():
        small, large = statistics.median(row["small_s"]), statistics.median(row["large_s"])
        ratio = row["ratio"]
        text = f"{ratio['median']:.2f} ({ratio['min']:.2f}-{ratio['max']:.2f})" if ratio else "-"
        flag = "" if row["meets_target"] else f"  > {TARGET}x"
        flag += f"  (under {NEGLIGIBLE_S} s)" if flag and row["negligible"] else ""
        print(f"{name:<26}{small:>10.2f}{large:>10.2f}  {text}{flag}")
    for kind, row in summary["peak_rss"].items():
        ratio = row["ratio"]
        print(
            f"peak RSS {kind:<17}{statistics.median(row['small_mb']):>8} MB"
            f"{statistics.median(row['large_mb']):>8} MB  {ratio['median']:.2f} "
            f"({ratio['min']:.2f}-{ratio['max']:.2f})"
        )


def build_lakes(work: Path, images: list, sizes: dict[str, int]) -> dict[str, dict[str, Any]]:
    """Both lakes, each built by one trained nightly run; recorded in ``work/lakes.json``."""
    lakes: dict[str, dict[str, Any]] = {}
    for name, size in sizes.items():
        landing = work / f"landing-{name}"
        started = time.perf_counter()
        write_pngs(images[:size], landing / LAKE_DATE, labelled=True)
        settings = lake_settings(work / f"home-{name}")
        config = settings.save(work / f"config-{name}")
        written_s = time.perf_counter() - started
        build = run_night(config, landing, train=True)
        lakes[name] = {
            "images": size,
            "config": str(config),
            "landing": str(landing),
            "png_write_s": round(written_s, 1),
            "build": build,
        }
        print(
            f"{name} lake: {size:,} images, built in {build['wall_s']:.0f} s "
            f"(champion trained: {build['trained']})",
            flush=True,
        )
        print(json.dumps(build), flush=True)
        if not build["trained"]:
            raise SystemExit(f"the {name} lake has no champion; see the flow's log")
    (work / LAKES_FILE).write_text(json.dumps(lakes, indent=1))
    return lakes


def run_nights(
    lakes: dict[str, dict[str, Any]], pool: list, night: int, rounds: int, warmup: int
) -> list[dict[str, Any]]:
    """``warmup + rounds`` fresh unlabelled nights on each lake (small first); the measured
    ones (the warm-up nights, e.g. the first after an upgrade, are run and not returned)."""
    from visionloop.settings import load_settings

    measured = []
    for number in range(warmup + rounds):
        night_images = pool[number * night : (number + 1) * night]
        result = {}
        for name in ("small", "large"):
            lake = lakes[name]
            landing = Path(lake["landing"]) / f"2026-12-{number + 2:02d}"
            write_pngs(night_images, landing, labelled=False)
            result[name] = run_night(Path(lake["config"]), Path(lake["landing"]), train=False)
            result[name]["lake_images_after"] = lake_rows(load_settings(lake["config"]))
            kind = "warm-up" if number < warmup else "round"
            print(f"{kind} {number + 1} {name}: {json.dumps(result[name])}", flush=True)
        if number >= warmup:
            measured.append(result)
    return measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=5_000)
    parser.add_argument("--large", type=int, default=70_000)
    parser.add_argument("--night", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured nights first")
    parser.add_argument("--work", type=Path, help="an empty or new folder (default: fresh)")
    parser.add_argument("--build-only", action="store_true", help="build the lakes and stop")
    parser.add_argument(
        "--lakes", type=Path, help="measure on the lakes a --build-only run left in this folder"
    )
    args = parser.parse_args()
    nights_total = (args.warmup + args.rounds) * args.night
    if args.lakes:
        work = args.lakes
        lakes = json.loads((work / LAKES_FILE).read_text())
    else:
        work = args.work or fresh_workdir("night-cost")
        work.mkdir(parents=True, exist_ok=True)
        if any(work.iterdir()):
            parser.error(f"{work} is not empty: every run measures afresh")
    # Prefect reads its settings once, on import: its state lives in the work folder.
    os.environ["PREFECT_HOME"] = str(work / "prefect")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

    from visionloop.ingest.samples import iter_images

    images = list(iter_images())
    if not args.lakes:
        large = min(args.large, TOTAL_IMAGES - nights_total)
        if large != args.large:
            print(
                f"large lake capped at {large:,}: the nights' {nights_total:,} images "
                "are ones no lake holds",
                flush=True,
            )
        lakes = build_lakes(work, images, {"small": args.small, "large": large})
        if args.build_only:
            return
    if max(lake["images"] for lake in lakes.values()) + nights_total > TOTAL_IMAGES:
        parser.error("the nights would reuse images the large lake holds: fewer nights")
    pool = images[TOTAL_IMAGES - nights_total :]
    nights = run_nights(lakes, pool, args.night, args.rounds, args.warmup)
    summary = summarise(nights)
    print_table(summary)
    write_result(
        "night_cost",
        {
            "target": f"each stage on the large lake <= {TARGET} x its time on the small lake",
            "work": str(work),
            "settings": {
                "image_size": 32,
                "embeddings.input_size": 32,
                "training": TINY_TRAINING,
                "train_on_nights": False,
            },
            "night_images": args.night,
            "rounds": args.rounds,
            "warmup_nights": args.warmup,
            "lakes": {
                name: {key: lake[key] for key in ("images", "png_write_s", "build")}
                for name, lake in lakes.items()
            },
            "nights": nights,
            **summary,
        },
    )
    shutil.rmtree(work / "landing-large", ignore_errors=True)  # 70k PNGs; the lakes stay


if __name__ == "__main__":
    main()
