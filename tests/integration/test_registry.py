"""MLflow tracking, registration, promotion and rollback against a real SQLite store.

A tiny lake of coloured squares (three classes, 32 px PNG) is written with pyarrow; a
100k-parameter timm model is trained on it for a few steps (seconds on CPU) and an untrained
copy serves as the weak model.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from visionloop.contract import IMAGES_SCHEMA
from visionloop.settings import REPO_ROOT, Settings, load_settings

CLASSES = ["red", "green", "blue"]
COLOURS = {"red": (200, 40, 40), "green": (40, 190, 60), "blue": (40, 60, 210)}
SIZE = 32
MODEL = "test_efficientnet"
MEAN = STD = (0.5, 0.5, 0.5)


def _png(colour: tuple[int, int, int], rng: np.random.Generator) -> bytes:
    pixels = np.asarray(colour, dtype=np.float64) * rng.uniform(0.7, 1.1)
    noise = rng.normal(0, 25, size=(SIZE, SIZE, 3))
    image = np.clip(pixels + noise, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(image, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _rows(count: dict[str, int], seed: int, unlabelled: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    now = datetime(2025, 1, 1, tzinfo=UTC)
    rows = []
    for split, per_class in count.items():
        for label in CLASSES:
            for _ in range(per_class):
                data = _png(COLOURS[label], rng)
                rows.append(
                    {
                        "image_id": hashlib.sha256(data).hexdigest(),
                        "image": data,
                        "image_format": "PNG",
                        "label": label,
                        "label_source": "seed",
                        "annotator": None,
                        "labelled_at": now,
                        "split": split,
                        "width": SIZE,
                        "height": SIZE,
                        "mode": "RGB",
                        "source_format": "PNG",
                        "source_uri": f"file:///landing/{label}/{len(rows)}.png",
                        "ingested_at": now,
                    }
                )
    for i in range(unlabelled):
        data = _png(COLOURS[CLASSES[i % 3]], rng)
        rows.append(
            {
                **rows[0],
                "image_id": hashlib.sha256(data).hexdigest(),
                "image": data,
                "label": None,
                "label_source": None,
                "labelled_at": None,
                "split": "train",
            }
        )
    return rows


def write_batch(images_dir: Path, batch_id: str, rows: list[dict], group_rows: int = 20) -> Path:
    folder = images_dir / f"batch_id={batch_id}"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "part-0.parquet"
    pq.write_table(
        pa.Table.from_pylist(rows, schema=IMAGES_SCHEMA), path, row_group_size=group_rows
    )
    return path


def _pixels(data: bytes) -> np.ndarray:
    array = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"), dtype=np.float32) / 255.0
    return (array.transpose(2, 0, 1) - 0.5) / 0.5


def make_checkpoint(path: Path, rows: list[dict], steps: int, seed: int = 0) -> Path:
    """A test_efficientnet on the train rows, ``steps`` Adam steps (0 = untrained)."""
    import timm
    import torch

    torch.manual_seed(seed)
    model = timm.create_model(MODEL, num_classes=len(CLASSES), pretrained=False)
    train = [row for row in rows if row["split"] == "train" and row["label"]]
    x = torch.from_numpy(np.stack([_pixels(row["image"]) for row in train]))
    y = torch.tensor([CLASSES.index(row["label"]) for row in train])
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        batch = torch.randint(0, len(train), (16,), generator=generator)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    model.eval()
    torch.save(
        {
            "model_name": MODEL,
            "num_classes": len(CLASSES),
            "labels": CLASSES,
            "input_size": SIZE,
            "mean": list(MEAN),
            "std": list(STD),
            "state_dict": model.state_dict(),
        },
        path,
    )
    return path


@pytest.fixture(scope="module")
def lake_rows() -> list[dict]:
    return _rows({"train": 16, "val": 8, "test": 8}, seed=1, unlabelled=4)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory, lake_rows) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    return {
        "trained": make_checkpoint(folder / "trained.pt", lake_rows, steps=60),
        "untrained": make_checkpoint(folder / "untrained.pt", lake_rows, steps=0, seed=3),
    }


def _settings(home: Path, **overrides) -> Settings:
    return load_settings(
        data_home=home,
        image_size=SIZE,
        registered_model_name="vl-test",
        training={"model_name": MODEL, "input_size": SIZE},
        **overrides,
    )


@pytest.fixture
def home(tmp_path: Path, lake_rows) -> Path:
    write_batch(tmp_path / "lake" / "images", "b1", lake_rows)
    return tmp_path


def _test_images(rows: list[dict]) -> tuple[list[bytes], list[str]]:
    test = [row for row in rows if row["split"] == "test"]
    return [row["image"] for row in test], [row["label"] for row in test]


def test_lake_snapshot_and_training_hash(home: Path, lake_rows) -> None:
    from visionloop.training.lineage import lake_snapshot, training_split_hash

    images_dir = home / "lake" / "images"
    pairs = sorted(
        (row["image_id"], row["label"])
        for row in lake_rows
        if row["split"] == "train" and row["label"]
    )
    expected = hashlib.sha256("".join(f"{i}\t{label}\n" for i, label in pairs).encode())
    assert training_split_hash(images_dir) == expected.hexdigest()

    snapshot = lake_snapshot(images_dir)
    assert snapshot["batch_ids"] == ["b1"]
    assert snapshot["rows"] == len(lake_rows) == 100
    assert snapshot["train_rows"] == 48
    assert snapshot["split_rows"] == {
        "test": {"labelled": 24, "unlabelled": 0},
        "train": {"labelled": 48, "unlabelled": 4},
        "val": {"labelled": 24, "unlabelled": 0},
    }
    # Val/test/unlabelled rows do not move the hash; a new train row does.
    extra = _rows({"val": 1, "test": 1}, seed=7, unlabelled=2)
    write_batch(images_dir, "b2", extra)
    assert training_split_hash(images_dir) == expected.hexdigest()
    write_batch(images_dir, "b3", _rows({"train": 1}, seed=8))
    assert training_split_hash(images_dir) != expected.hexdigest()
    assert lake_snapshot(images_dir)["batch_ids"] == ["b1", "b2", "b3"]


def test_classifier_from_checkpoint_and_module(checkpoints, lake_rows) -> None:
    import timm
    import torch

    from visionloop.training.predict import ImageClassifier, ImageDecodeError

    images, labels = _test_images(lake_rows)
    loaded = ImageClassifier.load(checkpoints["trained"])
    checkpoint = torch.load(checkpoints["trained"], weights_only=True)
    module = timm.create_model(MODEL, num_classes=3, pretrained=False)
    module.load_state_dict(checkpoint["state_dict"])
    wrapped = ImageClassifier.from_module(
        module, model_name=MODEL, labels=CLASSES, input_size=SIZE, mean=MEAN, std=STD
    )
    logits = loaded.logits(images, batch_size=5)
    assert logits.shape == (24, 3)
    np.testing.assert_allclose(wrapped.logits(images), logits, rtol=1e-5, atol=1e-5)
    assert (logits.argmax(1) == [CLASSES.index(label) for label in labels]).mean() >= 0.9
    # base64 strings decode like bytes; a larger image is resized
    as_text = [base64.b64encode(image).decode() for image in images[:2]]
    np.testing.assert_allclose(loaded.logits(as_text), logits[:2], rtol=1e-5, atol=1e-5)
    big = io.BytesIO()
    Image.open(io.BytesIO(images[0])).resize((64, 64)).save(big, format="JPEG")
    assert loaded.predict_proba([big.getvalue()]).shape == (1, 3)
    with pytest.raises(ImageDecodeError, match="cannot decode image"):
        loaded.logits([b"not an image"])


def _register(settings: Settings, model_pt: Path, rows: list[dict], note: str):
    from visionloop.training.calibration import calibrate
    from visionloop.training.evaluate import collect_logits, evaluate_split
    from visionloop.training.lineage import lake_snapshot
    from visionloop.training.predict import ImageClassifier
    from visionloop.training.registry import log_and_register, start_training_run

    snapshot = lake_snapshot(settings.images_dir)
    run_id = start_training_run(
        settings,
        snapshot=snapshot,
        expectations={"passed": True, "overridden": False, "suite": "images"},
        run_name=note,
    )
    classifier = ImageClassifier.load(model_pt)
    logits, targets, dropped = collect_logits(
        classifier.logits, settings.images_dir, classifier.labels, "val"
    )
    assert not dropped
    calibration = calibrate(logits, targets)
    classifier.temperature = calibration.temperature
    test_report = evaluate_split(
        classifier.predict_proba, settings.images_dir, classifier.labels, "test"
    )
    registered = log_and_register(
        settings,
        run_id,
        model_pt,
        calibration=calibration,
        test_report=test_report,
        example_images=[rows[0]["image"]],
    )
    return registered, test_report


@pytest.mark.slow
def test_register_promote_rollback(home: Path, lake_rows, checkpoints) -> None:
    import mlflow

    from visionloop.training.promotion import NoPreviousChampionError, promote, rollback
    from visionloop.training.registry import CHALLENGER, client_for, experiment_name

    settings = _settings(home, promotion={"first_model_floor": 0.0, "min_improvement": 0.0})
    client = client_for(settings)
    name = settings.registered_model_name
    timings: dict[str, float] = {}

    # v1: an untrained model -> challenger -> first model, above a floor of 0 -> champion
    start = time.perf_counter()
    v1, v1_test = _register(settings, checkpoints["untrained"], lake_rows, "untrained")
    timings["register_v1"] = time.perf_counter() - start
    assert v1.version == "1"
    assert str(client.get_model_version_by_alias(name, CHALLENGER).version) == "1"
    run = client.get_run(v1.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == experiment_name(settings)
    assert run.data.params["training.model_name"] == MODEL
    assert run.data.params["promotion.first_model_floor"] == "0.0"
    assert run.data.tags["lineage.train_rows"] == "48"
    assert run.data.tags["lineage.batch_ids"] == "b1"
    assert len(run.data.tags["lineage.train_hash"]) == 64
    assert run.data.tags["lineage.expectations.passed"] == "true"
    assert run.data.tags["lineage.expectations.overridden"] == "false"
    assert run.data.tags["git.commit"] != ""
    for key in (
        "calibration.temperature",
        "calibration.ece_before",
        "calibration.ece_after",
        "test.macro_f1",
        "test.accuracy",
        "test.recall.red",
        "test.f1.blue",
    ):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(v1.run_id, "eval")}
    assert {
        "eval/test_confusion.png",
        "eval/test_report.json",
        "eval/calibration.json",
    } <= artifacts
    version_tags = client.get_model_version(name, "1").tags
    assert version_tags["lineage.train_hash"] == run.data.tags["lineage.train_hash"]
    # Artifacts live beside the SQLite store, not in the cwd.
    assert (home / "mlartifacts").is_dir() and not Path("mlruns").exists()

    start = time.perf_counter()
    first = promote(settings)
    timings["promote_v1"] = time.perf_counter() - start
    assert first.decision.promoted and first.champion_version is None
    assert first.challenger_report.n == 24
    assert first.challenger_report.macro_f1 == pytest.approx(v1_test.macro_f1)
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "1").tags["promotion.decision"] == "promoted"

    # v2: trained -> beats v1 -> champion, v1 previous-champion
    v2, v2_test = _register(settings, checkpoints["trained"], lake_rows, "trained")
    assert v2_test.accuracy >= 0.9, v2_test
    second = promote(settings, v2.version)
    assert second.decision.promoted, second.decision.reason
    assert second.champion_version == "1"
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "previous-champion").version) == "1"
    tags = client.get_model_version(name, "2").tags
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_version"] == "1"
    assert float(tags["promotion.delta"]) > 0
    assert client.get_run(v2.run_id).data.tags["promotion.decision"] == "promoted"
    assert second.rows[0]["passed"] and len(second.rows) == 1 + len(CLASSES)

    # The champion through the stock API, in this process and in a fresh one.
    images, labels = _test_images(lake_rows)
    mlflow.set_tracking_uri(settings.resolved_mlflow_uri)
    champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    import pandas as pd

    output = champion.predict(pd.DataFrame({"image": images}))
    assert list(output.columns) == ["label", "probabilities", "confidence"]
    assert (output["label"] == labels).mean() >= 0.9
    assert all(abs(sum(p) - 1) < 1e-6 and len(p) == 3 for p in output["probabilities"])
    encoded = [base64.b64encode(image).decode() for image in images[:3]]
    as_strings = champion.predict(pd.DataFrame({"image": encoded}))
    assert list(as_strings["label"]) == list(output["label"][:3])
    # The JSON scoring server's request path: base64 strings in the binary `image` column.
    from mlflow.pyfunc.scoring_server import invocations

    request = {"dataframe_split": {"columns": ["image"], "data": [[e] for e in encoded]}}
    response = invocations(
        json.dumps(request), "application/json", champion, champion.metadata.get_input_schema()
    )
    assert response.status == 200, response.response
    served = json.loads(response.response)["predictions"]
    assert [row["label"] for row in served] == list(output["label"][:3])

    start = time.perf_counter()
    fresh = _predict_in_fresh_process(settings, images[:6], home)
    timings["fresh_process_load_predict"] = time.perf_counter() - start
    assert fresh["labels"] == list(output["label"][:6])
    # The pyfunc code came from the model's own code_paths copy, not the repo checkout.
    assert fresh["module"].endswith("/code/visionloop/training/pyfunc.py"), fresh
    assert not fresh["module"].startswith(str(REPO_ROOT)), fresh

    # v3: untrained again -> rejected (worse than v2); aliases unchanged
    v3, _ = _register(settings, checkpoints["untrained"], lake_rows, "weak")
    third = promote(settings, v3.version)
    assert not third.decision.promoted
    assert "does not beat" in third.decision.reason
    assert str(client.get_model_version_by_alias(name, "champion").version) == "2"
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "3"
    assert client.get_model_version(name, "3").tags["promotion.decision"] == "rejected"

    # rollback: champion <- previous-champion, the demoted one is tagged
    result = rollback(settings)
    assert (result.champion_version, result.demoted_version) == ("1", "2")
    assert str(client.get_model_version_by_alias(name, "champion").version) == "1"
    assert client.get_model_version(name, "2").tags["rolled_back"] == "true"
    assert "previous-champion" not in client.get_registered_model(name).aliases
    with pytest.raises(NoPreviousChampionError, match="no 'previous-champion' alias"):
        rollback(settings)
    print("timings", json.dumps({k: round(v, 1) for k, v in timings.items()}))


def _predict_in_fresh_process(settings: Settings, images: list[bytes], home: Path) -> dict:
    script = home / "fresh_predict.py"
    script.write_text(
        textwrap.dedent(
            """
            import base64, json, sys
            import mlflow.pyfunc
            import pandas as pd

            name, payload = sys.argv[1], json.loads(sys.stdin.read())
            model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
            images = [base64.b64decode(item) for item in payload]
            output = model.predict(pd.DataFrame({"image": images}))
            module = sys.modules["visionloop.training.pyfunc"].__file__
            print(json.dumps({"labels": list(output["label"]), "module": module}))
            """
        )
    )
    env = {**os.environ, "MLFLOW_TRACKING_URI": settings.resolved_mlflow_uri}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(script), settings.registered_model_name],
        input=json.dumps([base64.b64encode(image).decode() for image in images]),
        capture_output=True,
        text=True,
        cwd=home,
        env=env,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_failed_registration_leaves_nothing(
    home: Path, lake_rows, checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from visionloop.training.registry import (
        RegistrationError,
        client_for,
        log_and_register,
        start_training_run,
    )

    settings = _settings(home)
    run_id = start_training_run(settings)

    def broken(self, name, alias, version):
        raise RuntimeError("alias service down")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RegistrationError, match="partial registration was removed"):
        log_and_register(settings, run_id, checkpoints["trained"])
    client = client_for(settings)
    assert client.search_model_versions(f"name='{settings.registered_model_name}'") == []
    assert client.search_registered_models() == []
    assert client.get_run(run_id).info.status == "FAILED"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_fails_fast(home: Path, checkpoints) -> None:
    from visionloop.training.promotion import promote, rollback
    from visionloop.training.registry import (
        TrackingUnavailableError,
        log_and_register,
        start_training_run,
    )

    uri = f"http://127.0.0.1:{_closed_port()}"
    settings = _settings(home, mlflow_tracking_uri=uri)
    calls = [
        lambda: start_training_run(settings),
        lambda: log_and_register(settings, "0" * 32, checkpoints["trained"]),
        lambda: promote(settings, "1"),
        lambda: rollback(settings),
    ]
    for call in calls:
        start = time.perf_counter()
        with pytest.raises(TrackingUnavailableError) as info:
            call()
        assert time.perf_counter() - start < 5
        message = str(info.value)
        assert uri in message
        assert (
            "VISIONLOOP_MLFLOW_TRACKING_URI" in message and "start the tracking server" in message
        )
    # Nothing was created locally either.
    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists()
