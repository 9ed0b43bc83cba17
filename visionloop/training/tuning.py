"""Hyperparameter search over the training recipe: Optuna TPE with a median pruner.

Every trial trains with the train flow's ``torchrun`` entry point on one lake snapshot, as
an MLflow child run nested under the tuning run (optuna-integration's ``MLflowCallback``);
its per-epoch validation accuracy, read from ``metrics.jsonl`` while it trains, is reported
to the pruner, and a pruned trial's processes are stopped. The first trial is the settings'
own recipe, so the best is never worse on validation than what the nightly trains today.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import optuna
from optuna_integration.mlflow import MLflowCallback

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.parameters import SearchSpace, TuneParameters
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings, TrainingSettings
from visionloop.training.config import RunPaths
from visionloop.training.launch import TrainingError, run_training
from visionloop.training.recipe import recipe_yaml

METRIC = "val_accuracy"
AUGMENT = "rand-m{}-n2-mstd0.5"


class TuningError(RuntimeError):
    """No trial of the search finished; the message says why and what to change."""


@dataclass(frozen=True)
class TuneResult:
    """The search: each trial's row, the best recipe (the searched keys) and where it is."""

    study_name: str
    run_id: str  # the parent MLflow run
    snapshot_id: str
    trials: list[dict[str, Any]]  # number, state, val_accuracy, epochs and the parameters
    best_trial: int
    best_value: float
    baseline_value: float | None  # the settings' own recipe (trial 0), None if it was pruned
    recipe: dict[str, Any]
    recipe_path: Path
    wall_s: float

    def markdown(self) -> str:
        """The artifact: the best recipe as a pasteable ``training:`` section, and the trials."""
        keys = sorted({key for row in self.trials for key in row["params"]})
        header = ["trial", "state", METRIC, "epochs", *keys]
        lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
        for row in self.trials:
            value = "" if row["value"] is None else f"{row['value']:.4f}"
            params = [_fmt(row["params"].get(key, "")) for key in keys]
            cells = [str(row["number"]), row["state"], value, str(row["epochs"]), *params]
            lines.append("| " + " | ".join(cells) + " |")
        baseline = "pruned" if self.baseline_value is None else f"{self.baseline_value:.4f}"
        return (
            f"Best: trial {self.best_trial}, {METRIC} **{self.best_value:.4f}** (the settings' "
            f"recipe: {baseline}) on lake snapshot {self.snapshot_id}, {len(self.trials)} "
            f"trials in {self.wall_s:.0f} s.\n\n"
            f"Written to `{self.recipe_path}`; paste it into the settings or run the nightly "
            f"with `training_recipe: {self.recipe_path}`:\n\n"
            f"```yaml\n{recipe_yaml(self.recipe, '')}```\n\n" + "\n".join(lines)
        )


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def baseline_params(training: TrainingSettings) -> dict[str, float]:
    """The settings' recipe as trial parameters (a RandAugment string not of the searched
    form leaves its magnitude to the sampler)."""
    params: dict[str, float] = {
        "lr": training.lr,
        "weight_decay": training.weight_decay,
        "mixup": training.mixup,
    }
    if training.rand_augment is None:
        params["augment_magnitude"] = 0
    elif match := re.fullmatch(r"rand-m(\d+)-n2-mstd0\.5", training.rand_augment):
        params["augment_magnitude"] = int(match.group(1))
    return params


def suggest_recipe(trial: optuna.Trial, space: SearchSpace) -> dict[str, Any]:
    """The trial's values of the searched training keys."""
    magnitude = trial.suggest_int("augment_magnitude", *space.augment_magnitude)
    return {
        "lr": trial.suggest_float("lr", *space.lr, log=True),
        "weight_decay": trial.suggest_float("weight_decay", *space.weight_decay, log=True),
        "rand_augment": AUGMENT.format(magnitude) if magnitude else None,
        "mixup": trial.suggest_float("mixup", *space.mixup),
    }


def recipe_of(params: dict[str, Any]) -> dict[str, Any]:
    """A trial's parameters as the training keys they set."""
    magnitude = int(params["augment_magnitude"])
    return {
        "lr": params["lr"],
        "weight_decay": params["weight_decay"],
        "rand_augment": AUGMENT.format(magnitude) if magnitude else None,
        "mixup": params["mixup"],
    }


class EpochReporter:
    """Reports each new row of a trial's ``metrics.jsonl`` to Optuna as the training prints
    its lines; raises :class:`optuna.TrialPruned` (which stops the ``torchrun`` processes)
    when the pruner says so."""

    def __init__(self, trial: optuna.Trial, metrics: Path, log: Callable[[str], None]) -> None:
        self.trial, self.metrics, self.log = trial, metrics, log
        self.epochs = 0

    def __call__(self, line: str) -> None:
        self.log(line)
        if not self.metrics.exists():
            return
        rows = [json.loads(row) for row in self.metrics.read_text().splitlines() if row]
        for row in rows[self.epochs :]:
            self.epochs = int(row["epoch"])
            value = row[METRIC]
            if not math.isfinite(value):
                raise TuningError("the val split is empty: tuning needs labelled val images")
            self.trial.report(value, self.epochs)
            if self.trial.should_prune():
                self.log(f"[tune] trial {self.trial.number} pruned after epoch {self.epochs}")
                raise optuna.TrialPruned(f"{METRIC} {value:.4f} after epoch {self.epochs}")


def make_study(name: str, seed: int) -> optuna.Study:
    """TPE (seeded) with a median pruner that judges a trial from its first epoch on, once
    one trial has finished."""
    return optuna.create_study(
        study_name=name,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=seed),
        pruner=optuna.pruners.MedianPruner(n_startup_trials=1, n_warmup_steps=0),
    )


def search(
    tracking: Tracking,
    settings: Settings,
    snapshot: LakeSnapshot,
    params: TuneParameters,
    output_dir: Path,
    log: Callable[[str], None] = print,
) -> TuneResult:
    """Run the search into ``output_dir`` (one folder per trial) and write ``recipe.yaml``."""
    started = time.perf_counter()
    output_dir.mkdir(parents=True, exist_ok=True)
    name = f"{settings.registered_model_name}/tune"
    tracking.experiment_id(name)  # created where the store keeps artifacts
    uri = settings.resolved_mlflow_uri
    # The trial's value is its best epoch's: per-epoch val_accuracy comes from its ranks.
    callback = MLflowCallback(
        tracking_uri=uri, metric_name=f"best_{METRIC}", mlflow_kwargs={"nested": True}
    )
    study = make_study(name, settings.training.seed)
    for fixed in [baseline_params(settings.training), *params.first_trials]:
        study.enqueue_trial(fixed, skip_if_exists=True)

    @callback.track_in_mlflow()
    def objective(trial: optuna.Trial) -> float:
        recipe = suggest_recipe(trial, params.space)
        training = TrainingSettings.model_validate(settings.training.model_dump() | recipe)
        trial_dir = output_dir / f"trial-{trial.number:03d}"
        reporter = EpochReporter(trial, RunPaths(trial_dir).metrics, log)
        active = mlflow.active_run()
        outcome = run_training(
            settings.model_copy(update={"training": training}),
            trial_dir,
            snapshot,
            mlflow_run_id=active.info.run_id if active else None,
            log=reporter,
        )
        return outcome.best[METRIC]

    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment(name)
    with mlflow.start_run(run_name="-".join(output_dir.parts[-2:])) as parent:
        mlflow.set_tags({"visionloop.snapshot": snapshot.id, "visionloop.tune": "parent"})
        mlflow.log_params(
            {"n_trials": params.n_trials, "timeout_s": params.timeout_s}
            | {f"space.{key}": value for key, value in params.space.model_dump().items()}
        )
        study.optimize(
            objective,
            n_trials=params.n_trials,
            timeout=params.timeout_s,
            callbacks=[callback],
            catch=(TrainingError,),
        )
        result = _result(study, parent.info.run_id, snapshot, output_dir, started)
        mlflow.log_metric(f"best_{METRIC}", result.best_value)
        mlflow.log_artifact(str(result.recipe_path))
    return result


def _result(
    study: optuna.Study, run_id: str, snapshot: LakeSnapshot, output_dir: Path, started: float
) -> TuneResult:
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    if not complete:
        raise TuningError(
            f"no trial of {study.study_name} finished (see the trials' logs in {output_dir}); "
            "raise timeout_s or n_trials, or widen the search space"
        )
    best = study.best_trial
    rows = [
        {
            "number": trial.number,
            "state": trial.state.name,
            "value": trial.value,
            "epochs": len(trial.intermediate_values),
            "params": trial.params,
        }
        for trial in study.get_trials(deepcopy=False)
    ]
    first = study.trials[0]
    recipe = recipe_of(best.params)
    path = output_dir / "recipe.yaml"
    note = (
        f"visionloop tune: trial {best.number} of {study.study_name}, {METRIC} "
        f"{best.value:.4f} on lake snapshot {snapshot.id}"
    )
    path.write_text(recipe_yaml(recipe, note))
    return TuneResult(
        study_name=study.study_name,
        run_id=run_id,
        snapshot_id=snapshot.id,
        trials=rows,
        best_trial=best.number,
        best_value=float(best.value),
        baseline_value=first.value if first.state.name == "COMPLETE" else None,
        recipe=recipe,
        recipe_path=path,
        wall_s=time.perf_counter() - started,
    )
