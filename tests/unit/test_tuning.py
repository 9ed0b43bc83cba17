"""The tuning module's pure parts: recipes in and out, and the per-epoch pruning."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest

from visionloop.parameters import SearchSpace
from visionloop.settings import SettingsError, TrainingSettings, load_settings
from visionloop.training.recipe import adopt_recipe, read_recipe, recipe_yaml
from visionloop.training.tuning import (
    EpochReporter,
    TuningError,
    baseline_params,
    make_study,
    recipe_of,
    suggest_recipe,
)


def _metrics(path: Path, accuracies: list[float]) -> Path:
    rows = [{"epoch": n, "val_accuracy": value} for n, value in enumerate(accuracies, 1)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_a_trial_below_the_median_epoch_is_pruned_and_one_above_is_not(tmp_path: Path) -> None:
    study = make_study("t", seed=0)
    good = study.ask()
    for epoch, value in enumerate([0.8, 0.9], 1):
        good.report(value, epoch)
    study.tell(good, 0.9)

    above = study.ask()
    reporter = EpochReporter(above, _metrics(tmp_path / "a.jsonl", [0.85]), log=lambda _: None)
    reporter("[train] epoch epoch=1")  # 0.85 >= the median 0.8 at epoch 1: goes on
    assert reporter.epochs == 1 and above.storage.get_trial(above._trial_id).intermediate_values

    below = study.ask()
    lines: list[str] = []
    reporter = EpochReporter(below, _metrics(tmp_path / "b.jsonl", [0.5]), log=lines.append)
    with pytest.raises(optuna.TrialPruned, match="after epoch 1"):
        reporter("[train] epoch epoch=1")
    assert "pruned after epoch 1" in lines[-1]


def test_an_empty_val_split_is_named(tmp_path: Path) -> None:
    study = make_study("t", seed=0)
    reporter = EpochReporter(study.ask(), _metrics(tmp_path / "m.jsonl", [float("nan")]), print)
    with pytest.raises(TuningError, match="val split is empty"):
        reporter("line")


def test_the_settings_recipe_is_a_trial_and_trial_params_are_training_keys() -> None:
    training = TrainingSettings(lr=1e-3, weight_decay=0.05, rand_augment="rand-m7-n2-mstd0.5")
    params = baseline_params(training)
    assert params == {"lr": 1e-3, "weight_decay": 0.05, "mixup": 0.0, "augment_magnitude": 7}
    recipe = suggest_recipe(optuna.trial.FixedTrial(params), SearchSpace())
    assert recipe == recipe_of(params)
    assert recipe["rand_augment"] == training.rand_augment
    assert recipe_of(params | {"augment_magnitude": 0})["rand_augment"] is None
    assert "augment_magnitude" not in baseline_params(TrainingSettings(rand_augment="rand-m9"))


def test_a_recipe_replaces_only_its_keys(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, training={"epochs": 3, "lr": 0.01})
    path = tmp_path / "recipe.yaml"
    path.write_text(recipe_yaml({"lr": 0.002, "mixup": 0.2}, "tuned\non a snapshot"))
    assert path.read_text().startswith("# tuned\n# on a snapshot\ntraining:")
    adopted = adopt_recipe(settings, path)
    assert (adopted.training.lr, adopted.training.mixup, adopted.training.epochs) == (0.002, 0.2, 3)
    assert settings.training.lr == 0.01  # the settings themselves are untouched
    assert adopt_recipe(settings, None) is settings


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("lr: 0.1\n", "one `training:` mapping"),
        ("training: [1]\n", "one `training:` mapping"),
        ("training: {lr: -1}\n", "is invalid"),
        ("training: {lr: [\n", "not valid YAML"),
    ],
)
def test_a_bad_recipe_is_named_with_the_fix(tmp_path: Path, text: str, problem: str) -> None:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    with pytest.raises(SettingsError, match=problem):
        adopt_recipe(load_settings(data_home=tmp_path), path)
    with pytest.raises(SettingsError, match="does not exist"):
        read_recipe(tmp_path / "missing.yaml")
