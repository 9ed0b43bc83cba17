"""Benchmark: a month of nights — the real nightly flow, night after night, with annotators
(issue 13 §5).

A simulated deployment. Fashion-MNIST *train* images from Debian's package arrive in the
landing zone the settings name (``landing.sources``), one dated sub-folder a night: night 0
(the seed) brings ``--start`` labelled images as class folders
(``landing/2026-11-30/<class>/``), then each of ``--nights`` nights brings ``--per-night``
unlabelled images, flat (``landing/2026-12-01/*.png``, ``landing/2026-12-02/*.png``, …).
The seed night has nothing unlabelled to hand off; from night 1 on, each night's hand-off is
answered before the next night, so annotator labels are in the lake from night 2. Each
night runs the real ``nightly`` flow (:func:`visionloop.flows.nightly.nightly`) with
the deployment's settings only (no sources passed); then simulated annotators
(``scripts/simulate_annotators.py``: real Label Studio users answering with the true label,
or a wrong one with probability ``--noise``) answer every open task of the night's hand-off
(``--budget`` images) in a real, local Label Studio, and the next night's label sync brings
those labels into the lake.

Two arms see the same arrivals, each in its own work folder (lake, MLflow, Feast, Label
Studio): ``shipped`` (the settings as shipped: ``labelling.strategy`` margin_clusters) and
``random`` (``labelling.strategy: random``). Common to both: ``image_size`` 32,
``embeddings.input_size`` 32, ``promotion.first_model_floor`` 0 (so a first champion always
exists) and a cheap CPU training recipe (``--training``). Per night: seconds per stage (the
flow run's task runs from the Prefect API, grouped by task name), the ingest report (files
listed / skipped / read / written), lake rows and labels (seed and annotator), label sync,
the training plan, promotion and the night's decision with its reason, drift verdicts, the
hand-off, the annotators' answers, and the champion's version with its accuracy on the
*official* Fashion-MNIST test part (the first ``--test-images`` of its 10,000 images,
never in any lake), scored through the registered pyfunc loaded with stock MLflow as the
product serves it (:func:`visionloop.registry.served_model.predict_proba_fn`); a trained
challenger is scored the same way.

Results: ``benchmarks/results/nights.json``, ``nights_stage_seconds.png`` (seconds per stage
against the night and the lake's rows), ``nights_accuracy.png`` (champion accuracy against
annotator labels, both arms), and a Prefect markdown artifact (``nights-benchmark``).

    .venv/bin/python -m benchmarks.nights [--nights 10] [--start 500] [--per-night 1000]
        [--budget 100] [--arms shipped,random] [--test-images 2000] [--training small]
        [--annotators 1] [--noise 0.0] [--work DIR] [--no-artifact]
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import signal
import socket
import statistics
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from benchmarks.common import RESULTS_DIR, fresh_workdir, small_cpu_settings, spread, write_result
from benchmarks.night_cost import TINY_TRAINING, task_seconds, write_pngs

if TYPE_CHECKING:  # imported late at run time: Prefect reads its settings on import
    from visionloop.flows.nightly import NightlyResult

NAME = "nights"
FIRST_NIGHT = date(2026, 12, 1)  # night 0, the seed, lands the day before
#: What differs between the arms: labelling settings (all else as the benchmark sets it).
ARMS: dict[str, dict[str, Any]] = {
    "shipped": {},
    "random": {"strategy": "random"},
}
#: Training recipes: ``tiny`` is night_cost's (a champion exists, learns little);
#: ``small`` fine-tunes the packaged ImageNet lite0 at 64 px for 8 epochs (on 231 seed train
#: images: 0.77 official accuracy in 20 s, where 10 epochs at 32 px gave 0.65 and resnet10t
#: from scratch 0.55-0.67).
RECIPES: dict[str, dict[str, Any]] = {
    "tiny": TINY_TRAINING,
    "small": {
        "model_name": "tf_efficientnet_lite0",
        "pretrained": "packaged",
        "input_size": 64,
        "epochs": 8,
        "batch_size": 64,
        "num_workers": 0,
        "nproc_per_node": 1,
        "rand_augment": None,
    },
}
#: A stage whose median is under this many seconds is drawn as part of "other stages".
PLOT_MIN_S = 1.0


# --------------------------------------------------------------------------- arrivals


@dataclass(frozen=True)
class Night:
    """One night's arrivals: Fashion-MNIST train images, labelled (class folders) or not."""

    number: int  # 0: the labelled seed
    images: list[tuple[str, int, Any, int]]  # (part, index, pixels, label)
    labelled: bool

    @property
    def folder(self) -> str:
        return (FIRST_NIGHT + timedelta(days=self.number - 1)).isoformat()


def arrivals(nights: int, start: int, per_night: int, seed: int) -> list[Night]:
    """The same arrivals for every arm: a seeded shuffle of the train part, then cut into the
    labelled seed (night 0) and ``nights`` unlabelled nights."""
    from visionloop.ingest.samples import load_part

    pixels, labels = load_part("train")
    needed = start + nights * per_night
    if needed > len(labels):
        raise SystemExit(f"{needed:,} images needed, the train part holds {len(labels):,}")
    order = np.random.default_rng(seed).permutation(len(labels))[:needed]
    images = [("train", int(i), pixels[i], int(labels[i])) for i in order]
    plan = [Night(0, images[:start], labelled=True)]
    for number in range(1, nights + 1):
        first = start + (number - 1) * per_night
        plan.append(Night(number, images[first : first + per_night], labelled=False))
    return plan


# --------------------------------------------------------------------------- official test


@dataclass(frozen=True)
class OfficialTest:
    """The first ``count`` images of Fashion-MNIST's test part, as PNG bytes, and labels."""

    images: list[bytes]
    labels: list[str]

    @classmethod
    def load(cls, count: int) -> OfficialTest:
        from visionloop.ingest.samples import CLASS_NAMES, load_part

        pixels, labels = load_part("test")
        return cls(
            [_png(image) for image in pixels[:count]],
            [CLASS_NAMES[int(label)] for label in labels[:count]],
        )

    def accuracy(self, tracking: Any, version: str) -> float:
        """The version's accuracy, through the registered pyfunc as the product serves it."""
        from visionloop.registry.served_model import predict_proba_fn

        names, predict_proba = predict_proba_fn(tracking.load_model(version))
        predicted = predict_proba(self.images).argmax(axis=1)
        hits = sum(names[i] == truth for i, truth in zip(predicted, self.labels, strict=True))
        return round(hits / len(self.labels), 4)


def _png(pixels: np.ndarray) -> bytes:
    encoded = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(encoded, format="PNG")
    return encoded.getvalue()


# --------------------------------------------------------------------------- one arm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def arm_settings(home: Path, landing: Path, labelling: dict[str, Any], training: dict) -> Any:
    return small_cpu_settings(
        home,
        training,
        labelling={"port": free_port(), **labelling},
        landing={"sources": [str(landing)]},
    )


@dataclass
class Annotators:
    """Simulated annotators (scripts/simulate_annotators.py) of one Label Studio."""

    settings: Any
    count: int
    noise: float
    tokens: list[str] = field(default_factory=list)

    def answer(self, seed: int) -> dict[str, Any]:
        """Every annotator answers every open task; counts and seconds."""
        from scripts.simulate_annotators import annotator_token, answer, fashion_mnist_truth
        from visionloop.labelling.client import LabelStudio
        from visionloop.labelling.server import local_url, token

        started = time.perf_counter()
        url = local_url(self.settings)
        admin = LabelStudio(url, token(self.settings))
        project = admin.find_project(self.settings.registered_model_name)
        if project is None:
            return {"tasks": 0, "why": "no labelling project"}
        if not self.tokens:
            emails = [f"annotator{n}@visionloop.local" for n in range(1, self.count + 1)]
            self.tokens = [annotator_token(url, token(self.settings), e) for e in emails]
        config = admin.sdk.projects.get(id=project).parsed_label_config
        classes = list(config["label"]["labels"])
        truth = fashion_mnist_truth(self.settings)
        done = answer(url, self.tokens, project, truth, classes, self.noise, None, seed)
        return {**done, "seconds": round(time.perf_counter() - started, 2)}


def run_night(
    night: Night, landing: Path, config: Path, annotators: Annotators, test: OfficialTest
) -> dict[str, Any]:
    """Land the night's images, run the nightly, score the champion, let annotators answer."""
    from visionloop.flows.nightly import nightly
    from visionloop.parameters import NightlyParameters

    write_pngs(night.images, landing / night.folder, labelled=night.labelled)
    started = time.perf_counter()
    state = nightly(NightlyParameters(config=str(config)), return_state=True)
    wall = time.perf_counter() - started
    stages = task_seconds(state.state_details.flow_run_id)
    record: dict[str, Any] = {
        "night": night.number,
        "landing": night.folder,
        "arrived": len(night.images),
        "arrived_labelled": night.labelled,
        "wall_s": round(wall, 2),
        "stages_s": stages,
        "untracked_s": round(wall - sum(stages.values()), 2),
    }
    if state.is_failed():
        record["failed"] = str(state.message)
    else:
        record |= describe(state.result())
    record |= lake_and_models(annotators.settings, test, record)
    record["annotators"] = annotators.answer(seed=night.number)
    return record


def describe(result: NightlyResult) -> dict[str, Any]:
    """What the night's flow result says: ingest, labels, training, drift, hand-off."""
    report, train, queued = result.ingest.report, result.train, result.handoff.queued
    promotion = train.promotion if train else None
    labels = result.labels
    return {
        "ingest": {
            key: getattr(report, key)
            for key in ("listed", "skipped", "read", "written", "duplicates", "quarantined")
        },
        "label_sync": labels.counts() | ({"why": labels.skipped} if labels.skipped else {}),
        "decision": result.decision.row(),
        "training": {
            "action": train.plan.action if train else None,
            "reason": train.plan.reason if train else None,
            "trained": bool(train and train.trained),
            "challenger": train.challenger.version.version if train and train.challenger else None,
            "promoted": promotion.decision.promoted if promotion else None,
            "promotion_reason": promotion.decision.reason if promotion else None,
        },
        "drift": {"drifted": result.drift.drifted, "note": result.drift.note},
        "leakage_excluded": result.embed.leakage.excluded if result.embed.leakage else None,
        "handoff": {
            "selected": queued.selected,
            "of which drifted": queued.drifted,
            "held back": queued.held_back,
            "strategy": queued.strategy,
            "model version": queued.model_version or "none yet",
            "imported": result.handoff.sent.imported,
        },
    }


_scored: dict[tuple[str, str], float] = {}


def lake_and_models(settings: Any, test: OfficialTest, record: dict[str, Any]) -> dict[str, Any]:
    """Lake rows and labels after the night; champion (and challenger) on the official test."""
    from visionloop.lake.snapshot import take
    from visionloop.registry.tracking import Tracking

    snapshot = take(settings.lake_dir)
    tracking = Tracking.connect(settings)

    def official(version: str) -> float:
        key = (str(settings.data_home), version)
        if key not in _scored:
            _scored[key] = test.accuracy(tracking, version)
        return _scored[key]

    champion = tracking.champion()
    out: dict[str, Any] = {
        "lake": {
            "rows": snapshot.rows,
            "labelled": sum(counts.labelled for counts in snapshot.split_counts.values()),
            "annotator_labels": snapshot.annotator_labels,
            "split_labelled": {s: c.labelled for s, c in snapshot.split_counts.items()},
        },
        "champion": None,
    }
    if champion is not None:
        out["champion"] = {
            "version": champion.version,
            "lake_test_accuracy": round(champion.test_accuracy, 4),
            "official_accuracy": official(champion.version),
            "annotator_labels_in_training": champion.annotator_labels,
        }
    challenger = record.get("training", {}).get("challenger")
    if challenger is not None:
        out["challenger_official_accuracy"] = official(challenger)
    return out


def run_arm(name: str, plan: list[Night], work: Path, args: argparse.Namespace) -> dict[str, Any]:
    """Every night of one arm, in its own work folder, with its own Label Studio."""
    from visionloop.labelling.server import start

    root = work / name
    landing = root / "landing"
    labelling = {"budget": args.budget, **ARMS[name]}
    settings = arm_settings(root / "home", landing, labelling, args.recipe)
    config = settings.save(root / "config")
    test = OfficialTest.load(args.test_images)
    started = time.perf_counter()
    server = start(settings)
    studio_s = round(time.perf_counter() - started, 1)
    print(f"{name}: Label Studio up at {server.url} in {studio_s} s", flush=True)
    nights: list[dict[str, Any]] = []
    try:
        annotators = Annotators(settings, args.annotators, args.noise)
        for night in plan:
            record = run_night(night, landing, config, annotators, test)
            nights.append(record)
            print(f"{name} {one_line(record)}", flush=True)
    finally:
        server.stop()
    return {
        "labelling": settings.labelling.model_dump(mode="json", exclude={"token", "port"}),
        "label_studio_start_s": studio_s,
        "work": str(root),
        "nights": nights,
    }


# --------------------------------------------------------------------------- reporting


def one_line(record: dict[str, Any]) -> str:
    champion = record.get("champion") or {}
    ingest = record.get("ingest", {})
    decision = record.get("decision", {})
    return (
        f"night {record['night']}: {record['wall_s']:.0f} s, listed {ingest.get('listed')} "
        f"read {ingest.get('read')}, lake {record['lake']['rows']} rows, "
        f"annotator labels {record['lake']['annotator_labels']}, "
        f"{decision.get('action', record.get('failed', '?'))}, drift {decision.get('drift')}, "
        f"champion v{champion.get('version')} {champion.get('official_accuracy')}, "
        f"answered {record['annotators'].get('tasks')}"
    )


def summarise(arms: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Per arm: the accuracy curve's ends, promotions, trainings; per stage: seconds' spread."""
    summary: dict[str, Any] = {}
    for name, arm in arms.items():
        nights = arm["nights"]
        accuracy = [(n.get("champion") or {}).get("official_accuracy") for n in nights]
        stages = sorted({stage for n in nights for stage in n["stages_s"]})
        summary[name] = {
            "final_official_accuracy": accuracy[-1] if accuracy else None,
            "official_accuracy_by_night": accuracy,
            "annotator_labels_by_night": [n["lake"]["annotator_labels"] for n in nights],
            "lake_rows_by_night": [n["lake"]["rows"] for n in nights],
            "trained_nights": sum(n.get("training", {}).get("trained", False) for n in nights),
            "promotions": sum(bool(n.get("training", {}).get("promoted")) for n in nights),
            "failed_nights": [n["night"] for n in nights if "failed" in n],
            "drifted_nights": [n["night"] for n in nights if n.get("drift", {}).get("drifted")],
            "wall_s": spread([n["wall_s"] for n in nights]),
            "stage_s": {
                stage: spread([n["stages_s"].get(stage, 0.0) for n in nights]) for stage in stages
            },
        }
    return summary


def _plotted_stages(arms: dict[str, dict[str, Any]]) -> list[str]:
    seconds: dict[str, list[float]] = {}
    for arm in arms.values():
        for night in arm["nights"]:
            for stage, value in night["stages_s"].items():
                seconds.setdefault(stage, []).append(value)
    return sorted(s for s, values in seconds.items() if statistics.median(values) >= PLOT_MIN_S)


def _stage_series(nights: list[dict[str, Any]], shown: list[str]) -> dict[str, list[float]]:
    """Seconds of each shown stage per night; the rest summed as "other stages"."""
    series = {stage: [n["stages_s"].get(stage, 0.0) for n in nights] for stage in shown}
    series["other stages"] = [
        sum(v for s, v in n["stages_s"].items() if s not in shown) for n in nights
    ]
    return series


def plot_stage_seconds(arms: dict[str, dict[str, Any]], path: Path) -> None:
    """Per arm (a row each): stacked seconds per stage by night, and each stage by lake rows."""
    from matplotlib.figure import Figure

    shown = _plotted_stages(arms)
    colours = {stage: f"C{i % 10}" for i, stage in enumerate([*shown, "other stages"])}
    figure = Figure(figsize=(13, 3.8 * len(arms) + 0.6), layout="constrained")
    grid = figure.subplots(len(arms), 2, squeeze=False)
    for (by_night, by_rows), (name, arm) in zip(grid, arms.items(), strict=True):
        nights = arm["nights"]
        numbers = [n["night"] for n in nights]
        rows = [n["lake"]["rows"] for n in nights]
        bottom = np.zeros(len(nights))
        for stage, values in _stage_series(nights, shown).items():
            colour = colours[stage]
            by_night.bar(numbers, values, bottom=bottom, color=colour, label=stage)
            bottom += np.asarray(values)
            by_rows.plot(rows, values, marker="o", ms=3, color=colour)
        by_night.set_xticks(numbers)
        by_night.set_xlabel("night (0: the labelled seed)")
        by_night.set_ylabel(f"{name}: seconds")
        by_night.set_title(f"{name}: task seconds per night, stacked")
        by_rows.set_xlabel("lake rows after the night")
        by_rows.set_title(f"{name}: each stage against the lake's size")
        for axes in (by_night, by_rows):
            axes.grid(alpha=0.3)
    handles, labels = grid[0][0].get_legend_handles_labels()
    figure.legend(handles, labels, loc="outside right upper", fontsize=8)
    figure.suptitle("Nightly stages (task run start to end, Prefect API), night after night")
    figure.savefig(path, dpi=110)


def plot_accuracy(arms: dict[str, dict[str, Any]], test_images: int, path: Path) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(7, 4.5))
    axes = figure.subplots()
    for i, (name, arm) in enumerate(arms.items()):
        scored = [n for n in arm["nights"] if n.get("champion")]
        labels = [n["lake"]["annotator_labels"] for n in scored]
        accuracy = [n["champion"]["official_accuracy"] for n in scored]
        axes.plot(labels, accuracy, marker="o", color=f"C{i}", label=f"champion ({name})")
        tried = [n for n in arm["nights"] if "challenger_official_accuracy" in n]
        axes.scatter(
            [n["lake"]["annotator_labels"] for n in tried],
            [n["challenger_official_accuracy"] for n in tried],
            marker="x",
            color=f"C{i}",
            alpha=0.6,
            label=f"challenger trained that night ({name})",
        )
    axes.set_xlabel("annotator labels in the lake")
    axes.set_ylabel(f"accuracy, official test (first {test_images:,})")
    axes.set_title("The loop's learning curve: champion accuracy against annotator labels")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


def markdown_table(arms: dict[str, dict[str, Any]], test_images: int) -> str:
    lines = [
        "| arm | night | s | listed / read | lake rows | annotator labels | decision | drift "
        f"| champion | accuracy (official test, {test_images:,}) |",
        "|---|---:|---:|---|---:|---:|---|---|---|---:|",
    ]
    for name, arm in arms.items():
        for n in arm["nights"]:
            ingest, decision = n.get("ingest", {}), n.get("decision", {})
            champion = n.get("champion") or {}
            lines.append(
                f"| {name} | {n['night']} | {n['wall_s']:.0f} "
                f"| {ingest.get('listed')} / {ingest.get('read')} | {n['lake']['rows']:,} "
                f"| {n['lake']['annotator_labels']} "
                f"| {decision.get('action', 'failed')}: {decision.get('reason', n.get('failed'))} "
                f"| {decision.get('drift')} | v{champion.get('version')} "
                f"| {champion.get('official_accuracy')} |"
            )
    return "\n".join(lines)


def publish(markdown: str, pngs: list[Path]) -> None:
    """The table and both plots as a Prefect markdown artifact (embedded PNGs)."""
    from prefect import flow
    from prefect.artifacts import create_markdown_artifact

    images = "\n\n".join(
        f"![{png.stem}](data:image/png;base64,{base64.b64encode(png.read_bytes()).decode()})"
        for png in pngs
    )

    @flow(name="nights-benchmark")
    def artifact() -> None:
        create_markdown_artifact(key="nights-benchmark", markdown=f"{markdown}\n\n{images}")

    artifact()


# --------------------------------------------------------------------------- main


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nights", type=int, default=10)
    parser.add_argument("--start", type=int, default=500, help="labelled seed, night 0")
    parser.add_argument("--per-night", type=int, default=1_000, help="unlabelled, nights 1+")
    parser.add_argument("--budget", type=int, default=100, help="labelling.budget")
    parser.add_argument("--arms", default=",".join(ARMS), help=f"of {', '.join(ARMS)}")
    parser.add_argument("--test-images", type=int, default=2_000, help="of the 10,000")
    parser.add_argument("--training", choices=sorted(RECIPES), default="small")
    parser.add_argument("--epochs", type=int, help="instead of the recipe's")
    parser.add_argument("--annotators", type=int, default=1)
    parser.add_argument("--noise", type=float, default=0.0, help="share of wrong answers")
    parser.add_argument("--seed", type=int, default=0, help="of the arrivals' order")
    parser.add_argument("--work", type=Path, help="an empty or new folder (default: fresh)")
    parser.add_argument("--no-artifact", action="store_true")
    args = parser.parse_args()
    args.recipe = RECIPES[args.training] | ({"epochs": args.epochs} if args.epochs else {})
    args.arm_names = [name.strip() for name in args.arms.split(",") if name.strip()]
    if unknown := set(args.arm_names) - set(ARMS):
        parser.error(f"unknown arms {sorted(unknown)}; use {', '.join(ARMS)}")
    if not 1 <= args.test_images <= 10_000 or args.nights < 1 or args.start < 1:
        parser.error("--test-images is 1-10,000; --nights and --start at least 1")
    args.work = args.work or fresh_workdir(NAME)
    args.work.mkdir(parents=True, exist_ok=True)
    if any(args.work.iterdir()):
        parser.error(f"{args.work} is not empty: every run measures afresh")
    return args


def _stop_on_sigterm() -> None:
    """SIGTERM unwinds like Ctrl-C, so every Label Studio started is stopped."""

    def _raise(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _raise)


def main() -> None:
    args = parse_args()
    _stop_on_sigterm()
    # Prefect reads its settings once, on import: its state lives in the work folder.
    os.environ["PREFECT_HOME"] = str(args.work / "prefect")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    started = time.perf_counter()
    plan = arrivals(args.nights, args.start, args.per_night, args.seed)
    arms = {name: run_arm(name, plan, args.work, args) for name in args.arm_names}
    wall = round(time.perf_counter() - started, 1)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    pngs = [RESULTS_DIR / f"{NAME}_stage_seconds.png", RESULTS_DIR / f"{NAME}_accuracy.png"]
    plot_stage_seconds(arms, pngs[0])
    plot_accuracy(arms, args.test_images, pngs[1])
    table = markdown_table(arms, args.test_images)
    print(table)
    write_result(
        NAME,
        {
            "work": str(args.work),
            "wall_s": wall,
            "arrivals": {
                "source": "Fashion-MNIST train part (Debian), seeded shuffle",
                "seed": args.seed,
                "nights": args.nights,
                "start_labelled": args.start,
                "per_night_unlabelled": args.per_night,
            },
            "official_test": f"the first {args.test_images:,} of the 10,000 test images",
            "settings": {
                "image_size": 32,
                "embeddings.input_size": 32,
                "promotion.first_model_floor": 0.0,
                "training": args.training,
                "training_settings": args.recipe,
                "labelling.budget": args.budget,
                "annotators": args.annotators,
                "noise": args.noise,
            },
            "arms": arms,
            "summary": summarise(arms),
        },
    )
    if not args.no_artifact:
        publish(table, pngs)
    print(f"{NAME}: {len(arms)} arm(s) x (seed + {args.nights} nights) in {wall:.0f} s")


if __name__ == "__main__":
    main()
