"""Command-line arguments of the training entry point and the files a run writes."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunPaths:
    """Every file under a training run's output directory."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / "settings.yaml"

    @property
    def snapshot(self) -> Path:
        """The frozen lake snapshot this run trains on (written by the launcher)."""
        return self.root / "snapshot.json"

    @property
    def launch(self) -> Path:
        """The MLflow run the ranks log to, for the nodes that join a multi-node run."""
        return self.root / "launch.json"

    @property
    def checkpoint(self) -> Path:
        return self.root / "checkpoint-last.pt"

    @property
    def model(self) -> Path:
        return self.root / "model.pt"

    @property
    def label_map(self) -> Path:
        return self.root / "label_map.json"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.jsonl"

    @property
    def summary(self) -> Path:
        return self.root / "summary.json"

    def weights_hash(self, rank: int) -> Path:
        return self.root / f"weights-rank{rank}.sha256"


@dataclass(frozen=True)
class TrainArgs:
    settings: Path
    output: Path
    mlflow_run_id: str | None


def parse_args(argv: Sequence[str] | None = None) -> TrainArgs:
    parser = argparse.ArgumentParser(
        prog="python -m visionloop.training.train",
        description="Fine-tune a timm classifier on the lake's labelled images (torchrun-aware).",
    )
    parser.add_argument("--settings", type=Path, required=True, help="resolved settings.yaml")
    parser.add_argument("--output", type=Path, required=True, help="run directory (resumable)")
    parser.add_argument("--mlflow-run-id", default=None, help="log per-epoch metrics to this run")
    args = parser.parse_args(argv)
    return TrainArgs(args.settings, args.output.resolve(), args.mlflow_run_id)
