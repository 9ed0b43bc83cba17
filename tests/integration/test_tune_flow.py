"""The tune flow end to end: real Prefect (ephemeral API), torchrun trials, MLflow on SQLite.

The settings' recipe is trial 0; a frozen recipe (lr 1e-9) tried next is pruned after its
first epoch by the median of trial 0's; every trial is an MLflow child of the tuning run;
the recipe written parses into the training settings; the nightly's recipe changes only when
its ``training_recipe`` parameter names the file.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from prefect.artifacts import Artifact

from tests import lakes
from visionloop.flows.tune import tune
from visionloop.parameters import NightlyParameters, TuneParameters
from visionloop.settings import TrainingSettings, load_settings
from visionloop.training.recipe import adopt_recipe, read_recipe

pytestmark = pytest.mark.slow

TINY_TRAINING = {
    "model_name": "resnet10t",
    "pretrained": "none",
    "input_size": 32,
    "epochs": 2,
    "batch_size": 16,
    "num_workers": 0,
    "nproc_per_node": 1,
    "rand_augment": None,
}
FROZEN = {"lr": 1e-9, "weight_decay": 0.01, "augment_magnitude": 0, "mixup": 0.0}


def test_tune_prunes_nests_and_writes_a_recipe_the_nightly_adopts_only_when_told(
    tmp_path: Path,
) -> None:
    settings = lakes.tiny_lake(
        tmp_path / "home", labelled=100, unlabelled=0, classes=(1, 8), training=TINY_TRAINING
    )
    config = settings.save(tmp_path / "config")
    saved = config.read_text()

    result = tune(
        TuneParameters(n_trials=3, timeout_s=600, first_trials=[FROZEN], config=str(config))
    )

    states = [row["state"] for row in result.trials]
    assert states[:2] == ["COMPLETE", "PRUNED"], result.trials
    assert [row["epochs"] for row in result.trials[:2]] == [2, 1]  # stopped after epoch 1
    assert result.trials[1]["params"]["lr"] == pytest.approx(1e-9)
    assert result.baseline_value is not None and result.best_value >= result.baseline_value

    client = MlflowClient(settings.resolved_mlflow_uri)
    parent = client.get_run(result.run_id)
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    by_number = {int(run.data.tags["number"]): run for run in children}
    assert sorted(by_number) == [0, 1, 2]
    assert by_number[1].data.tags["state"] == "PRUNED"
    baseline = client.get_metric_history(by_number[0].info.run_id, "val_accuracy")
    assert [metric.step for metric in baseline] == [1, 2]  # per epoch, from the trial's ranks
    assert by_number[0].data.params["lr"] == str(settings.training.lr)
    assert by_number[0].data.metrics["best_val_accuracy"] == result.trials[0]["value"]
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(result.best_value)
    assert "recipe.yaml" in {item.path for item in client.list_artifacts(result.run_id)}

    recipe = read_recipe(result.recipe_path)
    assert recipe == result.recipe and set(recipe) == {
        "lr",
        "weight_decay",
        "rand_augment",
        "mixup",
    }
    best = result.trials[result.best_trial]["params"]
    assert recipe["lr"] == pytest.approx(best["lr"])
    TrainingSettings.model_validate(recipe)  # a valid training section on its own

    artifact = Artifact.get("tuned-recipe")
    assert artifact is not None and "training:" in artifact.data and "PRUNED" in artifact.data

    # Nothing changes the nightly's recipe unless the operator names the file.
    assert config.read_text() == saved and NightlyParameters().training_recipe is None
    unchanged = load_settings(config)
    assert adopt_recipe(unchanged, None).training == unchanged.training == settings.training
    adopted = adopt_recipe(unchanged, str(result.recipe_path)).training
    assert adopted.lr == pytest.approx(best["lr"]) and adopted.mixup == recipe["mixup"]
    assert adopted.epochs == 2 and adopted.model_name == "resnet10t"  # the rest stays
