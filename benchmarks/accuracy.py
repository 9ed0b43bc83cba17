"""Accuracy run: train on a lake with the configured settings, then score the test split.

Runs the same torchrun training the nightly flow runs (no MLflow), fits the temperature on
val and evaluates on the frozen test split. Results: ``benchmarks/results/accuracy-<tag>.json``.

    python -m benchmarks.accuracy --data-home /tmp/fmnist-home --tag gpu-full-fmnist
    (settings from VISIONLOOP_* / VISIONLOOP_CONFIG, e.g. VISIONLOOP_TRAINING__EPOCHS=12)
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from visionloop.lake.snapshot import take
from visionloop.registry.challenger import calibrate_and_test
from visionloop.settings import load_settings
from visionloop.training.launch import run_training

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-home", type=Path, required=True)
    parser.add_argument("--output", type=Path, help="run folder (default: a new temporary one)")
    parser.add_argument("--tag", required=True)
    args = parser.parse_args()
    settings = load_settings(data_home=args.data_home)
    snapshot = take(settings.lake_dir)
    output = args.output or Path(tempfile.mkdtemp(prefix="vl-accuracy-"))
    started = time.perf_counter()
    outcome = run_training(settings, output, snapshot)
    train_seconds = time.perf_counter() - started
    calibration, test = calibrate_and_test(snapshot, outcome.model_path)
    result = {
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "training": settings.training.model_dump(mode="json"),
        "image_size": settings.image_size,
        "test_images": test.n,
        "test_accuracy": round(test.accuracy, 4),
        "test_macro_f1": round(test.macro_f1, 4),
        "ece_before": round(calibration.ece_before, 4),
        "ece_after": round(calibration.ece_after, 4),
        "epochs_run": len(outcome.history),
        "train_seconds": round(train_seconds, 1),
        "epoch_img_s": [round(row["img_per_s"], 1) for row in outcome.history],
    }
    print(json.dumps(result, indent=2))
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    (RESULTS_DIR / f"accuracy-{args.tag}.json").write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
