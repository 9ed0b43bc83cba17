"""The champion as ONNX: same answers as the torch pyfunc on the frozen test split and on raw
files of every awkward kind (EXIF-rotated, RGBA, 16-bit, CMYK, palette, non-square), logged
beside the pyfunc in a real SQLite MLflow store, exported by the train flow on promotion.
"""

from __future__ import annotations

from pathlib import Path

import mlflow.onnx
import numpy as np
import pandas as pd
import pytest
import torch

from tests import lakes
from tests.corpus import OK, build_bad_corpus
from tests.integration.test_train_flow import TINY_TRAINING
from visionloop.flows.train import train
from visionloop.lake.snapshot import take
from visionloop.parameters import TrainParameters
from visionloop.preprocessing import image_options
from visionloop.registry.challenger import register_trained
from visionloop.registry.export import (
    MODEL_ID_TAG,
    ONNX_MODEL_NAME_IN_RUN,
    PARITY_ATOL,
    export_graph,
    export_registered,
    export_version,
    load_onnx_pyfunc,
    parity_images,
    probabilities,
    session,
)
from visionloop.registry.lineage import Fingerprint
from visionloop.registry.tracking import Tracking
from visionloop.training.models import create_model, model_spec

pytestmark = pytest.mark.slow
SIZE = 32
CLASSES = (0, 1, 7)  # t-shirt, trouser, sneaker
#: Corpus entries whose awkward kind the parity check must cover.
AWKWARD = {
    "shirt/rotated.jpg",
    "shirt/rgba.png",
    "shirt/gray16.png",
    "trouser/cmyk.jpg",
    "trouser/palette.png",
    "shirt/good_b.jpg",  # 100 x 60
    "shirt/phone.heic",
    "trouser/camera.avif",
    "trouser/rotated.heif",
}


def _raw_corpus(root: Path) -> list[bytes]:
    entries = [e for e in build_bad_corpus(root) if e.expected == OK and e.scope == "file"]
    assert {entry.relpath for entry in entries} >= AWKWARD
    return [(root / entry.relpath).read_bytes() for entry in entries]


def _registered(home: Path) -> tuple[Tracking, object, str]:
    """A random-weight resnet10t (its logits still move with the input), calibrated and
    registered on a tiny lake as training would register it."""
    settings = lakes.tiny_lake(home, labelled=150, unlabelled=0, size=SIZE, classes=CLASSES)
    snapshot = take(settings.lake_dir)
    torch.manual_seed(0)
    model = create_model("resnet10t", 3)
    labels = [lakes.FASHION_CLASSES[number] for number in CLASSES]
    spec = model_spec(model, "resnet10t", labels, SIZE)
    model_pt = home / "model.pt"
    torch.save(spec.checkpoint(model.state_dict(), image_options(settings).to_dict()), model_pt)
    tracking = Tracking.connect(settings)
    fingerprint = Fingerprint.of(snapshot, settings, code="onnx-test")
    run_id = tracking.start_training_run(settings, snapshot, fingerprint)
    registered, calibration, _ = register_trained(tracking, snapshot, run_id, model_pt)
    assert abs(calibration.temperature - 1.0) > 0.05  # so the test sees it carried
    return tracking, snapshot, registered.version


def test_onnx_export_gives_the_torch_models_answers_on_test_split_and_raw_files(
    tmp_path: Path,
) -> None:
    tracking, snapshot, version = _registered(tmp_path / "home")
    split = parity_images(snapshot)
    raw = _raw_corpus(tmp_path / "corpus")
    assert len(split) >= 20

    exported = export_version(tracking, version, split)
    assert exported.parity.holds and exported.parity.images == len(split)
    assert not exported.reused

    # Logged beside the pyfunc: another model of the same run, with the onnx flavour.
    client = tracking.client
    run_id = client.get_model_version(tracking.model_name, version).run_id
    logged = client.get_logged_model(exported.model_id)
    assert logged.source_run_id == run_id and logged.name == ONNX_MODEL_NAME_IN_RUN
    assert tracking.version_tags(version)[MODEL_ID_TAG] == exported.model_id
    graph = mlflow.onnx.load_model(exported.artifact_location)
    (pixels,) = graph.graph.input
    dims = [d.dim_param or d.dim_value for d in pixels.type.tensor_type.shape.dim]
    assert dims == ["batch", 3, SIZE, SIZE]

    # Raw bytes in: the same probabilities and labels from a fresh load of each pyfunc.
    torch_model = tracking.load_model(version)
    onnx_model = load_onnx_pyfunc(tracking, version)
    for images in (split, raw):
        frame = pd.DataFrame({"image": images})
        expected, actual = torch_model.predict(frame), onnx_model.predict(frame)
        assert actual["label"].tolist() == expected["label"].tolist()
        np.testing.assert_allclose(
            np.array(actual["probabilities"].tolist()),
            np.array(expected["probabilities"].tolist()),
            rtol=0,
            atol=PARITY_ATOL,
        )

    # The graph alone, at any batch size, carries the temperature: its logits' plain
    # softmax is measurably not the served answer, its probabilities are.
    served = onnx_model.unwrap_python_model()
    inputs, onnx_session = served.inputs, served.session
    calibrated = probabilities(torch_model, raw)
    for batch in (1, 5, len(raw)):
        logits, probs = onnx_session.run(None, {"pixels": inputs.tensor(raw[:batch]).numpy()})
        np.testing.assert_allclose(probs, calibrated[:batch], rtol=0, atol=PARITY_ATOL)
    plain = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    assert np.abs(plain - calibrated).max() > 10 * PARITY_ATOL

    # A second export (a retried task, a rerun) logs nothing new.
    again = export_version(tracking, version, split)
    assert again.reused and again.model_id == exported.model_id
    experiment = client.get_run(run_id).info.experiment_id
    onnx_models = [
        model
        for model in client.search_logged_models(experiment_ids=[experiment])
        if model.name == ONNX_MODEL_NAME_IN_RUN
    ]
    assert len(onnx_models) == 1
    # An output of the run (what its page in the MLflow UI lists), linked once.
    outputs = client.get_run(run_id).outputs.model_outputs
    assert [output.model_id for output in outputs] == [exported.model_id]


def test_tf_efficientnet_lite0_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """The packaged weights at the serving size: its 'same' padding is computed from the
    input's H/W at run time, so those are fixed; any batch size then runs."""
    torch.manual_seed(0)
    model = create_model("tf_efficientnet_lite0", 4, "packaged").eval()
    path = export_graph(model, 64, 1.5, tmp_path / "lite0.onnx")
    onnx_session = session(path)
    (pixels,) = onnx_session.get_inputs()
    assert pixels.shape == ["batch", 3, 64, 64]
    for batch in (1, 3, 64):
        tensor = torch.randn(batch, 3, 64, 64)
        with torch.inference_mode():
            expected = torch.softmax(model(tensor) / 1.5, dim=1).numpy()
        _, probs = onnx_session.run(None, {"pixels": tensor.numpy()})
        np.testing.assert_allclose(probs, expected, rtol=0, atol=PARITY_ATOL)


def test_train_flow_exports_each_new_champion_once(tmp_path: Path) -> None:
    settings = lakes.tiny_lake(
        tmp_path / "home",
        labelled=120,
        size=SIZE,
        classes=CLASSES,
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
    )
    config = str(settings.save(tmp_path / "config"))

    first = train(TrainParameters(config=config))
    assert first.promotion.decision.promoted and first.export_error is None
    assert first.export.version == first.champion.version and not first.export.reused
    tracking = Tracking.connect(settings)
    assert tracking.version_tags(first.champion.version)[MODEL_ID_TAG] == first.export.model_id

    by_hand = export_registered(tracking, settings)  # what `visionloop export` calls
    assert by_hand.reused and by_hand.model_id == first.export.model_id

    unchanged = train(TrainParameters(config=config))  # same data: skipped, nothing exported
    assert unchanged.plan.action == "skip" and unchanged.export is None
