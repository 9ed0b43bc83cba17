"""MLflow tracking, registration, promotion and rollback against a real SQLite store.

A tiny lake of coloured squares (three classes, 32 px PNG) is committed to a lake; a
100k-parameter timm model is trained on it for a few steps (seconds on CPU) and an untrained
copy serves as the weak model.
"""

from __future__ import annotations

import base64
import concurrent.futures
import hashlib
import io
import json
import os
import socket
import subprocess
import sys
import tempfile
import textwrap
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.lakes import commit_rows
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.preprocessing import ImageOptions
from visionloop.registry.lineage import Fingerprint
from visionloop.registry.promotion import PAIRED_PREDICTIONS
from visionloop.registry.tracking import Tracking
from visionloop.settings import REPO_ROOT, Settings, load_settings
from visionloop.training.models import ModelSpec

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
    spec = ModelSpec(MODEL, tuple(CLASSES), SIZE, MEAN, STD)
    options = ImageOptions(size=SIZE, image_format="PNG").to_dict()
    torch.save(spec.checkpoint(model.state_dict(), options), path)
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
    commit_rows(_settings(tmp_path), lake_rows, batch_id="b1", row_group_rows=20)
    return tmp_path


def _test_images(rows: list[dict]) -> tuple[list[bytes], list[str]]:
    test = [row for row in rows if row["split"] == "test"]
    return [row["image"] for row in test], [row["label"] for row in test]


def test_classifier_preprocesses_like_ingest(checkpoints, lake_rows) -> None:
    from visionloop.preprocessing import ImageRejectedError
    from visionloop.training.classifier import ImageClassifier

    images, labels = _test_images(lake_rows)
    loaded = ImageClassifier.load(checkpoints["trained"])
    logits = loaded.logits(images, batch_size=5)
    assert logits.shape == (24, 3)
    assert (logits.argmax(1) == [CLASSES.index(label) for label in labels]).mean() >= 0.9
    # base64 strings decode like bytes
    as_text = [base64.b64encode(image).decode() for image in images[:2]]
    np.testing.assert_allclose(loaded.logits(as_text), logits[:2], rtol=1e-5, atol=1e-5)
    # a larger, non-square image is letterboxed as ingest would store it
    wide = io.BytesIO()
    Image.open(io.BytesIO(images[0])).resize((96, 48)).save(wide, format="PNG")
    assert loaded.predict_proba([wide.getvalue()]).shape == (1, 3)
    with pytest.raises(ImageRejectedError, match="not_an_image"):
        loaded.logits([b"not an image"])


def _register(
    tracking: Tracking, settings: Settings, snapshot: LakeSnapshot, model_pt: Path, note: str
):
    """Register a checkpoint as training would (its own fingerprint, so versions differ)."""
    from visionloop.registry.challenger import register_trained

    fingerprint = Fingerprint.of(snapshot, settings, code=note)
    expectations = {"passed": True, "overridden": False, "suite": "images"}
    run_id = tracking.start_training_run(settings, snapshot, fingerprint, expectations)
    registered, _, test_report = register_trained(tracking, snapshot, run_id, model_pt)
    return registered, test_report


@pytest.mark.slow
def test_register_promote_rollback(home: Path, lake_rows, checkpoints) -> None:
    import mlflow
    import pandas as pd

    from visionloop.registry.promotion import NoPreviousChampionError, promote, rollback
    from visionloop.registry.tracking import CHALLENGER

    settings = _settings(home, promotion={"first_model_floor": 0.0, "min_improvement": 0.0})
    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    client, name = tracking.client, settings.registered_model_name

    # v1: an untrained model -> challenger -> first model, above a floor of 0 -> champion
    v1, v1_test = _register(tracking, settings, snapshot, checkpoints["untrained"], "untrained")
    assert v1.version == "1"
    assert tracking.alias_version(CHALLENGER) == "1"
    run = client.get_run(v1.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == f"{name}/{MODEL}"
    assert run.data.params["training.model_name"] == MODEL
    assert run.data.params["promotion.first_model_floor"] == "0.0"
    assert run.data.tags["lineage.train_rows"] == "48"
    assert run.data.tags["lineage.batch_ids"] == "b1"
    assert run.data.tags["lineage.snapshot_id"] == snapshot.id
    assert run.data.tags["lineage.train_hash"] == snapshot.train_hash
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
        "eval/test_predictions.json",
        "eval/calibration.json",
    } <= artifacts
    assert run.data.tags["eval.test.snapshot_id"] == snapshot.id
    version_tags = tracking.version_tags("1")
    assert version_tags["lineage.fingerprint"] == run.data.tags["lineage.fingerprint"]
    # Artifacts live beside the SQLite store, not in the cwd.
    assert (home / "mlartifacts").is_dir() and not Path("mlruns").exists()

    first = promote(tracking, settings, snapshot)
    assert first.decision.promoted and first.champion_version is None
    assert first.challenger_report.n == 24
    assert first.challenger_report.macro_f1 == pytest.approx(v1_test.macro_f1)
    assert tracking.alias_version("champion") == "1"
    assert tracking.version_tags("1")["promotion.decision"] == "promoted"

    # v2: trained -> beats v1 -> champion, v1 previous-champion
    v2, v2_test = _register(tracking, settings, snapshot, checkpoints["trained"], "trained")
    assert v2_test.accuracy >= 0.9, v2_test
    second = promote(tracking, settings, snapshot, v2.version)
    assert second.decision.promoted, second.decision.reason
    assert second.champion_version == "1"
    assert tracking.alias_version("champion") == "2"
    assert tracking.alias_version("previous-champion") == "1"
    tags = tracking.version_tags("2")
    assert tags["promotion.decision"] == "promoted"
    assert tags["promotion.champion_version"] == "1"
    assert json.loads(tags["promotion.numbers"])["delta"] > 0
    assert client.get_run(v2.run_id).data.tags["promotion.decision"] == "promoted"
    assert second.rows[0]["passed"] and len(second.rows) == 1 + len(CLASSES)
    # The paired bootstrap's interval, as tags of its own and in the decision's first row.
    assert 0 < float(tags["promotion.delta_ci_low"]) <= float(tags["promotion.delta"])
    assert float(tags["promotion.delta"]) <= float(tags["promotion.delta_ci_high"])
    assert tags["promotion.bootstrap_resamples"] == "1000"
    assert tags["promotion.confidence"] == "0.95" and tags["promotion.paired_images"] == "24"
    assert "95% CI" in second.rows[0]["check"]
    _check_paired_predictions(tracking, v2.run_id, lake_rows)
    _check_logged_evaluation_is_the_pyfuncs(tracking, settings, snapshot, lake_rows)

    # A retry of the same promotion replays the recorded decision; nothing moves.
    again = promote(tracking, settings, snapshot, v2.version)
    assert again.replayed and again.decision == second.decision
    assert tracking.alias_version("champion") == "2"
    assert tracking.alias_version("previous-champion") == "1"

    # The champion through the stock API, in this process and in a fresh one.
    images, labels = _test_images(lake_rows)
    mlflow.set_tracking_uri(settings.resolved_mlflow_uri)
    try:
        champion = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    finally:
        mlflow.set_tracking_uri(None)
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

    fresh = _predict_in_fresh_process(settings, images[:6], home)
    assert fresh["labels"] == list(output["label"][:6])
    # The model's code came from its own code_paths copy, not the repo checkout.
    assert fresh["module"].endswith("/code/visionloop/registry/served_model.py"), fresh
    assert fresh["preprocessing"].endswith("/code/visionloop/preprocessing.py"), fresh
    assert not fresh["module"].startswith(str(REPO_ROOT)), fresh
    model_dir = Path(fresh["module"]).parents[3]  # <model>/code/visionloop/registry/...
    requirements = (model_dir / "requirements.txt").read_text()
    assert "torch==" in requirements and "timm==" in requirements and "pillow==" in requirements
    assert "pillow-heif==" in requirements  # the preprocessing opens HEIC with it

    # v3: untrained again -> rejected (worse than v2); aliases unchanged
    v3, _ = _register(tracking, settings, snapshot, checkpoints["untrained"], "weak")
    third = promote(tracking, settings, snapshot, v3.version)
    assert not third.decision.promoted
    assert "does not beat" in third.decision.reason
    assert tracking.alias_version("champion") == "2"
    assert tracking.alias_version("challenger") == "3"
    assert tracking.version_tags("3")["promotion.decision"] == "rejected"

    # rollback: champion <- previous-champion, the demoted one is tagged
    result = rollback(tracking, settings)
    assert (result.champion_version, result.demoted_version) == ("1", "2")
    assert tracking.alias_version("champion") == "1"
    assert tracking.version_tags("2")["rolled_back"] == "true"
    assert "previous-champion" not in client.get_registered_model(name).aliases
    with pytest.raises(NoPreviousChampionError, match="no 'previous-champion' alias"):
        rollback(tracking, settings)
    # A rolled-back version is never promoted again, whatever its recorded decision.
    revived = promote(tracking, settings, snapshot, "2")
    assert not revived.decision.promoted and "rolled back" in revived.decision.reason
    assert tracking.alias_version("champion") == "1"


@pytest.mark.slow
def test_promotions_are_serialised_and_finish_an_interrupted_alias_move(
    home: Path, checkpoints
) -> None:
    from visionloop.registry.promotion import Decision, promote, record_decision

    settings = _settings(home, promotion={"first_model_floor": 0.0, "min_improvement": 0.0})
    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    _register(tracking, settings, snapshot, checkpoints["untrained"], "base")
    promote(tracking, settings, snapshot, "1")
    for note in ("a", "b"):
        _register(tracking, settings, snapshot, checkpoints["trained"], note)

    # Two promotions at once: the lock makes the second decide against the first's result.
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda v: promote(tracking, settings, snapshot, v), ["2", "3"]))
    against = sorted(tracking.version_tags(v)["promotion.champion_version"] for v in ("2", "3"))
    winner = next(r.challenger_version for r in results if r.decision.promoted)
    assert against == sorted(["1", winner]), against
    assert tracking.alias_version("champion") == winner
    assert tracking.alias_version("previous-champion") == "1"

    # A decision recorded just before a crash, aliases not yet moved: the retry finishes it.
    _register(tracking, settings, snapshot, checkpoints["trained"], "c")
    record_decision(tracking, "4", Decision(True, "recorded before a crash", {}), winner)
    replay = promote(tracking, settings, snapshot, "4")
    assert replay.replayed and replay.decision.reason == "recorded before a crash"
    assert tracking.alias_version("champion") == "4"
    assert tracking.alias_version("previous-champion") == winner


def _check_paired_predictions(tracking: Tracking, run_id: str, rows: list[dict]) -> None:
    """Both models' predictions on every test image, keyed by image_id, on the challenger's run."""
    with tempfile.TemporaryDirectory() as directory:
        path = tracking.client.download_artifacts(run_id, PAIRED_PREDICTIONS, directory)
        table = json.loads(Path(path).read_text())
    assert table["columns"] == ["image_id", "label", "challenger", "champion"]
    truth = {row["image_id"]: row["label"] for row in rows if row["split"] == "test"}
    assert {image_id: label for image_id, label, _, _ in table["data"]} == truth
    assert all(row[2] in CLASSES and row[3] in CLASSES for row in table["data"])


def _check_logged_evaluation_is_the_pyfuncs(
    tracking: Tracking, settings: Settings, snapshot: LakeSnapshot, rows: list[dict]
) -> None:
    """The predictions registration logged are read back only on their own snapshot, and
    are what the served pyfunc predicts."""
    from visionloop.registry.promotion import evaluate_version, logged_evaluation

    logged = logged_evaluation(tracking, "2", snapshot)
    assert logged is not None
    fresh = evaluate_version(tracking, "2", snapshot)
    assert logged.predictions.image_ids == fresh.predictions.image_ids
    assert logged.predictions.predicted == fresh.predictions.predicted
    assert logged.report.macro_f1 == pytest.approx(fresh.report.macro_f1)
    more = _rows({"test": 1}, seed=9)
    commit_rows(settings, more, batch_id="b-later", row_group_rows=20)
    assert logged_evaluation(tracking, "2", take(settings.lake_dir)) is None


def _predict_in_fresh_process(settings: Settings, images: list[bytes], home: Path) -> dict:
    script = home / "fresh_predict.py"
    script.write_text(
        textwrap.dedent(
            """
            import base64, json, sys
            import mlflow, mlflow.pyfunc
            import pandas as pd

            uri, name, payload = sys.argv[1], sys.argv[2], json.loads(sys.stdin.read())
            mlflow.set_tracking_uri(uri)
            model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
            images = [base64.b64decode(item) for item in payload]
            output = model.predict(pd.DataFrame({"image": images}))
            print(json.dumps({
                "labels": list(output["label"]),
                "module": sys.modules["visionloop.registry.served_model"].__file__,
                "preprocessing": sys.modules["visionloop.preprocessing"].__file__,
            }))
            """
        )
    )
    env = {key: value for key, value in os.environ.items() if not key.startswith("VISIONLOOP_")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [sys.executable, str(script), settings.resolved_mlflow_uri, settings.registered_model_name],
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
    home: Path, checkpoints, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow import MlflowClient

    from visionloop.registry.challenger import register_trained
    from visionloop.registry.served_model import RegistrationError

    settings = _settings(home)
    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    run_id = tracking.start_training_run(settings, snapshot, Fingerprint.of(snapshot, settings))

    def broken(self, name, alias, version):
        raise RuntimeError("alias service down")

    monkeypatch.setattr(MlflowClient, "set_registered_model_alias", broken)
    with pytest.raises(RegistrationError, match="partial registration was removed"):
        register_trained(tracking, snapshot, run_id, checkpoints["trained"])
    client = tracking.client
    assert client.search_model_versions(f"name='{settings.registered_model_name}'") == []
    assert client.search_registered_models() == []
    assert client.get_run(run_id).info.status == "FAILED"


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_tracking_server_is_named_with_the_fix_and_no_credentials(home: Path) -> None:
    from visionloop.registry.tracking import TrackingUnavailableError

    port = _closed_port()
    settings = _settings(home, mlflow_tracking_uri=f"http://alice:s3cret@127.0.0.1:{port}")
    with pytest.raises(TrackingUnavailableError) as info:
        Tracking.connect(settings)
    message = str(info.value)
    assert f"http://***@127.0.0.1:{port}" in message and "s3cret" not in message
    assert "VISIONLOOP_MLFLOW_TRACKING_URI" in message and "start the tracking server" in message
    # Nothing was created locally either.
    assert not (home / "mlflow.db").exists() and not (home / "mlartifacts").exists()


def test_logged_settings_never_hold_the_tracking_credentials(home: Path) -> None:
    from visionloop.registry.tracking import redact, redacted_settings

    uri = "https://bob:pa55@mlflow.example:5000/path?x=1"
    assert redact(uri) == "https://***@mlflow.example:5000/path?x=1"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"
    logged = redacted_settings(_settings(home, mlflow_tracking_uri=uri))
    assert "pa55" not in json.dumps(logged)

    # The same through a real run against the SQLite store: params and settings artifact.
    settings = _settings(home)
    tracking = Tracking.connect(settings)
    snapshot = take(settings.lake_dir)
    secret = settings.model_copy(update={"mlflow_tracking_uri": uri})
    run_id = tracking.start_training_run(secret, snapshot, Fingerprint.of(snapshot, settings))
    run = tracking.client.get_run(run_id)
    assert run.data.params["mlflow_tracking_uri"] == "https://***@mlflow.example:5000/path?x=1"
    logged_file = tracking.client.download_artifacts(run_id, "settings.json", str(home))
    assert "pa55" not in Path(logged_file).read_text()
