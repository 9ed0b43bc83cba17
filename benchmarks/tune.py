"""Benchmark: the tuned recipe against the settings' default on the shipped sample.

``visionloop.training.tuning.search`` (the tune flow's search, without Prefect) runs
``--trials`` trials on one snapshot of the Spark ingest of ``data/sample``; then the default
recipe and the tuned one are each trained ``--rounds`` times, alternating (seeds 0, 1, …),
on that snapshot and scored on its frozen test split. The runs are shortened alike
(``--epochs``, ``--steps-per-epoch``) to fit a shared CPU. Results:
``benchmarks/results/tune-<device>.json``.

    .venv/bin/python -m benchmarks.tune [--trials 6] [--rounds 2] [--lake .visionloop]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import fresh_workdir, spread, write_result
from benchmarks.train import default_lake
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.parameters import TuneParameters
from visionloop.registry.challenger import calibrate_and_test
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings, load_settings
from visionloop.training.launch import run_training
from visionloop.training.recipe import adopt_recipe
from visionloop.training.tuning import search


def test_scores(settings: Settings, snapshot: LakeSnapshot, seed: int, work: Path) -> dict:
    """Train with ``settings`` (seed ``seed``) in a new folder; test accuracy and macro-F1."""
    training = settings.training.model_copy(update={"seed": seed})
    output = Path(tempfile.mkdtemp(prefix="run-", dir=work))
    started = time.perf_counter()
    outcome = run_training(
        settings.model_copy(update={"training": training}), output, snapshot, log=lambda _: None
    )
    _, test = calibrate_and_test(snapshot, outcome.model_path)
    return {
        "seed": seed,
        "test_images": test.n,
        "test_accuracy": round(test.accuracy, 4),
        "test_macro_f1": round(test.macro_f1, 4),
        "train_s": round(time.perf_counter() - started, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lake", type=Path, help="data home holding an ingested lake")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--steps-per-epoch", type=int, default=12)
    args = parser.parse_args()
    work = fresh_workdir("tune")
    base = load_settings(data_home=args.lake or default_lake(work))
    short = {"epochs": args.epochs, "max_steps_per_epoch": args.steps_per_epoch}
    settings = base.model_copy(
        update={
            "training": base.training.model_copy(update=short),
            "mlflow_tracking_uri": f"sqlite:///{work / 'mlflow.db'}",
        }
    )
    snapshot = take(settings.lake_dir)
    started = time.perf_counter()
    tuned = search(
        Tracking.connect(settings),
        settings,
        snapshot,
        TuneParameters(n_trials=args.trials, timeout_s=None),
        work / "tune",
        log=lambda _: None,
    )
    tune_s = time.perf_counter() - started
    print(json.dumps({"trials": tuned.trials, "tune_s": round(tune_s)}, default=str), flush=True)
    recipe = adopt_recipe(settings, tuned.recipe_path)
    rounds: dict[str, list[dict[str, Any]]] = {"default": [], "tuned": []}
    for seed in range(args.rounds):
        rounds["default"].append(test_scores(settings, snapshot, seed, work))
        rounds["tuned"].append(test_scores(recipe, snapshot, seed, work))
        print(json.dumps({name: runs[-1] for name, runs in rounds.items()}), flush=True)
    gains = [
        tuned_run["test_macro_f1"] - default_run["test_macro_f1"]
        for default_run, tuned_run in zip(rounds["default"], rounds["tuned"], strict=True)
    ]
    result = {
        "model": settings.training.model_name,
        "input_size": settings.training.input_size,
        "short_runs": short,
        "snapshot": snapshot.id,
        "trials": len(tuned.trials),
        "trial_states": {
            state: sum(row["state"] == state for row in tuned.trials)
            for state in sorted({row["state"] for row in tuned.trials})
        },
        "tune_wall_s": round(tune_s, 1),
        "best_trial": tuned.best_trial,
        "best_val_accuracy": tuned.best_value,
        "default_val_accuracy": tuned.baseline_value,
        "default_recipe": {key: getattr(settings.training, key) for key in tuned.recipe},
        "tuned_recipe": tuned.recipe,
        "rounds": rounds,
        "macro_f1_gain": spread(gains),
        "median_test_macro_f1": {
            name: statistics.median(run["test_macro_f1"] for run in runs)
            for name, runs in rounds.items()
        },
        "work": str(work),
    }
    write_result(f"tune-{'gpu' if torch.cuda.is_available() else 'cpu'}", result)


if __name__ == "__main__":
    main()
