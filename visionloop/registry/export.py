"""The champion as ONNX: the same images in, the same calibrated probabilities out.

:func:`export_version` turns a registered version into an MLflow model with two flavours,
logged beside its pyfunc (another LoggedModel of the same run):

* ``onnx`` — the graph alone (``mlflow.onnx.load_model``): input ``pixels``, float32
  ``(batch, 3, input_size, input_size)``, normalised as the model's pretrained config says;
  outputs ``logits`` and ``probabilities`` (``softmax(logits / temperature)``, the fitted
  temperature baked in). The input H/W are fixed (``tf_efficientnet_lite0`` computes its
  'same' padding from them at run time), the batch is dynamic. A serving stack that feeds it
  must run the pre-step below itself.
* ``python_function`` — :class:`OnnxClassifierModel`: encoded image bytes in, the torch
  pyfunc's contract out (``label``, ``probabilities``, ``confidence``). Its pre-step is the
  one the torch model uses, :class:`~visionloop.training.inputs.ModelInputs`
  (:func:`visionloop.preprocessing.model_image`, then resize and normalise), and then
  onnxruntime runs the graph. It carries the package as ``code_paths``, as the torch one does.

Nothing is logged unless the export passes a parity check against the version's torch pyfunc
on the images given (the snapshot's test split in the flow): probabilities within
:data:`PARITY_ATOL` and identical labels. The version and its run are tagged ``onnx.*``, so a
second call returns the first export (a retried task or a rerun logs nothing twice). The
logged model is an output of the run (``run.outputs.model_outputs``), which the run's page in
the MLflow UI lists.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.served_model import (
    IMAGE_COLUMN,
    PACKAGE_DIR,
    grey_png,
    model_files,
    model_signature,
    pip_requirements,
    prediction_frame,
)
from visionloop.registry.tracking import CHAMPION, Tracking, now_iso
from visionloop.settings import Settings

#: The largest |probability difference| to the torch model an export may have.
PARITY_ATOL = 1e-4
INPUT_NAME, OUTPUT_NAMES = "pixels", ("logits", "probabilities")
ONNX_ARTIFACT, CONFIG_ARTIFACT = "model_onnx", "config"
ONNX_MODEL_NAME_IN_RUN = "onnx_model"
#: Version (and run) tags an export writes; ``onnx.model_id`` marks a version as exported.
MODEL_ID_TAG, LOCATION_TAG = "onnx.model_id", "onnx.artifact_location"
EXPORT_BATCH = 64
#: How many of the snapshot's test images the flow's parity check uses.
PARITY_IMAGES = 256
MODEL_CODE = """from mlflow.models import set_model

from visionloop.registry.export import OnnxClassifierModel

set_model(OnnxClassifierModel())
"""


class ExportParityError(RuntimeError):
    """The ONNX model disagrees with the torch model; it was not logged."""


class VersionNotFoundError(LookupError):
    """No champion, no such version, or (to load) no ONNX export of it."""


@dataclass(frozen=True)
class Parity:
    """How far one model's predictions are from another's on the same images."""

    images: int
    max_abs_diff: float
    label_mismatches: int

    @property
    def holds(self) -> bool:
        return self.images > 0 and self.label_mismatches == 0 and self.max_abs_diff <= PARITY_ATOL


@dataclass(frozen=True)
class ExportedModel:
    """A version's ONNX model in the registry's store, and the parity it was logged with."""

    name: str
    version: str
    model_id: str
    artifact_location: str
    parity: Parity
    reused: bool = False  # True: exported earlier, nothing logged now

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------- the graph


def calibrated(model: Any, temperature: float) -> Any:
    """``model`` with a second output, the probabilities at ``temperature``."""
    import torch
    from torch import nn

    class Calibrated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model.eval()
            self.register_buffer("temperature", torch.tensor(float(temperature)))

        def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            logits = self.model(pixels)
            return logits, torch.softmax(logits / self.temperature, dim=1)

    return Calibrated().eval()


def export_graph(model: Any, input_size: int, temperature: float, path: Path) -> Path:
    """timm's dynamo export of ``model`` at a fixed H/W with a dynamic batch; checked by onnx."""
    from timm.utils.onnx import onnx_export

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx_export(
        calibrated(model, temperature),
        str(path),
        input_size=(3, input_size, input_size),
        batch_size=2,  # torch.export specialises a batch of 1
        use_dynamo=True,
        input_names=[INPUT_NAME],
        output_names=list(OUTPUT_NAMES),
        check=True,
    )
    return path


# --------------------------------------------------------------------------- the pyfunc


def session(path: str | Path, threads: int = 0) -> Any:
    """An onnxruntime CPU session (``threads`` 0: onnxruntime's default)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


class OnnxClassifierModel(mlflow.pyfunc.PythonModel):
    """Images in, label + calibrated probabilities out: the project's pre-step, then onnxruntime."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        from visionloop.preprocessing import ImageOptions
        from visionloop.training.inputs import ModelInputs
        from visionloop.training.models import ModelSpec

        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        spec = ModelSpec(
            config["model_name"],
            tuple(config["labels"]),
            int(config["input_size"]),
            tuple(config["mean"]),
            tuple(config["std"]),
        )
        self.config = config
        self.inputs = ModelInputs(spec, ImageOptions(**config["preprocessing"]))
        self.session = session(context.artifacts[ONNX_ARTIFACT])

    @property
    def labels(self) -> list[str]:
        return list(self.config["labels"])

    def predict_proba(self, images: Sequence[Any]) -> np.ndarray:
        chunks = [
            self.session.run(
                ["probabilities"],
                {INPUT_NAME: self.inputs.tensor(images[start : start + EXPORT_BATCH]).numpy()},
            )[0]
            for start in range(0, len(images), EXPORT_BATCH)
        ]
        if not chunks:
            return np.zeros((0, len(self.labels)))
        return np.concatenate(chunks).astype(np.float64)

    def predict(
        self,
        context: mlflow.pyfunc.PythonModelContext | None,
        model_input: pd.DataFrame,
        params: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        if isinstance(model_input, pd.Series):
            model_input = model_input.to_frame(IMAGE_COLUMN)
        if not isinstance(model_input, pd.DataFrame) or IMAGE_COLUMN not in model_input:
            columns = list(getattr(model_input, "columns", []))
            raise ValueError(
                f"expected a DataFrame with an '{IMAGE_COLUMN}' column of encoded image bytes "
                f"(or base64 strings), got columns {columns}"
            )
        probabilities = self.predict_proba(list(model_input[IMAGE_COLUMN]))
        return prediction_frame(probabilities, self.labels, model_input.index)


def onnx_requirements() -> list[str]:
    return [
        *pip_requirements(),
        *(f"{name}=={installed_version(name)}" for name in ("onnx", "onnxruntime")),
    ]


def save_onnx_model(directory: Path, model_pt: Path, temperature: float) -> Path:
    """Export ``model_pt`` and write the two-flavour MLflow model into ``directory``."""
    import onnx
    from mlflow.models import Model

    from visionloop.training.classifier import ImageClassifier

    classifier = ImageClassifier.load(model_pt)
    spec = classifier.spec
    config = {
        "temperature": float(temperature),
        "labels": list(spec.labels),
        "model_name": spec.model_name,
        "input_size": spec.input_size,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "preprocessing": classifier.options.to_dict(),
        "input_name": INPUT_NAME,
        "output_names": list(OUTPUT_NAMES),
    }
    with tempfile.TemporaryDirectory(prefix="visionloop-onnx-parts-") as temporary:
        parts = Path(temporary)
        graph = export_graph(classifier.model, spec.input_size, temperature, parts / "model.onnx")
        (parts / "config.json").write_text(json.dumps(config, indent=2))
        code = parts / "code" / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        entry = parts / "visionloop_onnx_model.py"
        entry.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(directory),
            python_model=str(entry),
            artifacts={ONNX_ARTIFACT: str(graph), CONFIG_ARTIFACT: str(parts / "config.json")},
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: [grey_png(classifier.options.size)]}),
            pip_requirements=onnx_requirements(),
        )
    model = Model.load(str(directory / "MLmodel"))
    model.add_flavor(
        "onnx",
        onnx_version=onnx.__version__,
        data=f"artifacts/{graph.name}",
        providers=["CPUExecutionProvider"],
        onnx_session_options=None,
        code=None,
    )
    model.save(str(directory / "MLmodel"))
    return directory


# --------------------------------------------------------------------------- parity


def probabilities(model: mlflow.pyfunc.PyFuncModel, images: Sequence[bytes]) -> np.ndarray:
    output = model.predict(pd.DataFrame({IMAGE_COLUMN: list(images)}))
    return np.asarray([list(row) for row in output["probabilities"]], dtype=np.float64)


def parity(expected: np.ndarray, actual: np.ndarray) -> Parity:
    """``actual`` probabilities against ``expected`` ones for the same images."""
    if expected.shape != actual.shape:
        raise ValueError(f"probabilities of shape {actual.shape}, expected {expected.shape}")
    if not len(expected):
        return Parity(0, 0.0, 0)
    mismatches = int((expected.argmax(axis=1) != actual.argmax(axis=1)).sum())
    return Parity(len(expected), float(np.abs(expected - actual).max()), mismatches)


def parity_images(snapshot: LakeSnapshot, limit: int = PARITY_IMAGES) -> list[bytes]:
    """The first ``limit`` labelled test-split images of ``snapshot`` (stored bytes)."""
    images: list[bytes] = []
    for batch in snapshot.labelled("test", limit):
        images += batch["image"]
        if len(images) >= limit:
            break
    return images[:limit]


# --------------------------------------------------------------------------- the registry


def exported(tracking: Tracking, version: str) -> ExportedModel | None:
    """The version's earlier export, when its tags name a READY logged model."""
    from mlflow.exceptions import MlflowException

    tags = tracking.version_tags(version)
    model_id = tags.get(MODEL_ID_TAG)
    if not model_id:
        return None
    try:
        logged = tracking.client.get_logged_model(model_id)
    except MlflowException:
        return None
    if str(logged.status) != "READY":  # a FAILED or unfinished upload is exported again
        return None
    found = Parity(
        int(tags.get("onnx.parity_images", "0")),
        float(tags.get("onnx.parity_max_abs_diff", "nan")),
        int(tags.get("onnx.parity_label_mismatches", "0")),
    )
    location = tags.get(LOCATION_TAG, logged.artifact_location)
    return ExportedModel(tracking.model_name, version, model_id, location, found, reused=True)


def export_version(
    tracking: Tracking, version: str, images: Sequence[bytes], *, force: bool = False
) -> ExportedModel:
    """Export ``version`` to ONNX, check parity on ``images`` and log it beside its pyfunc.

    Returns the earlier export when there is one (unless ``force``). Raises
    :class:`ExportParityError`, logging nothing, when the ONNX model disagrees.
    """
    if not force and (earlier := exported(tracking, version)) is not None:
        _link_output(tracking, version, earlier.model_id)  # an export from before the link
        return earlier
    if not images:
        raise ValueError("the parity check needs at least one image")
    with tempfile.TemporaryDirectory(prefix="visionloop-onnx-") as temporary:
        torch_dir = tracking.download_model(version, Path(temporary) / "torch")
        model_pt, temperature = model_files(torch_dir)
        local = save_onnx_model(Path(temporary) / "onnx", model_pt, temperature)
        checked = parity(
            probabilities(mlflow.pyfunc.load_model(str(torch_dir)), images),
            probabilities(mlflow.pyfunc.load_model(str(local)), images),
        )
        if not checked.holds:
            raise ExportParityError(
                f"ONNX export of {tracking.model_name} v{version} disagrees with its torch "
                f"model on {checked.images} images (max |dp| {checked.max_abs_diff:.2e}, "
                f"{checked.label_mismatches} labels differ; allowed {PARITY_ATOL:g}, 0); "
                "nothing was logged"
            )
        model_id, location = _log(tracking, version, local, temperature)
    tracking.tag_version(
        version,
        {
            MODEL_ID_TAG: model_id,
            LOCATION_TAG: location,
            "onnx.parity_images": str(checked.images),
            "onnx.parity_max_abs_diff": f"{checked.max_abs_diff:.3e}",
            "onnx.parity_label_mismatches": str(checked.label_mismatches),
            "onnx.exported_at": now_iso(),
        },
    )
    return ExportedModel(tracking.model_name, version, model_id, location, checked)


def _log(tracking: Tracking, version: str, local: Path, temperature: float) -> tuple[str, str]:
    """``local`` as a LoggedModel of the version's run (client API only): id and location."""
    client = tracking.client
    run_id = client.get_model_version(tracking.model_name, version).run_id
    logged = client.create_logged_model(
        client.get_run(run_id).info.experiment_id,
        name=ONNX_MODEL_NAME_IN_RUN,
        source_run_id=run_id,
        tags={"visionloop.temperature": f"{temperature:.6g}", "visionloop.flavour": "onnx"},
    )
    try:
        client.log_model_artifacts(logged.model_id, str(local))
    except Exception:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    _link_output(tracking, version, logged.model_id)
    return logged.model_id, logged.artifact_location


def _link_output(tracking: Tracking, version: str, model_id: str) -> None:
    """Record the logged model as an output of the version's run (once), so the run's page
    in the MLflow UI lists it under its logged models."""
    from mlflow.entities import LoggedModelOutput

    client = tracking.client
    run_id = client.get_model_version(tracking.model_name, version).run_id
    outputs = client.get_run(run_id).outputs
    if any(output.model_id == model_id for output in (outputs.model_outputs if outputs else [])):
        return
    client.log_outputs(run_id, [LoggedModelOutput(model_id, step=0)])


def export_registered(
    tracking: Tracking, settings: Settings, version: str | None = None, *, force: bool = False
) -> ExportedModel:
    """For the CLI: export ``version`` (default: the champion), its parity checked on the
    current lake's test split."""
    from mlflow.exceptions import MlflowException

    from visionloop.lake.snapshot import take

    version = version or tracking.alias_version(CHAMPION)
    if version is None:
        raise VersionNotFoundError(
            f"registered model {tracking.model_name} has no '{CHAMPION}' version; promote one "
            "first or name one with --version"
        )
    try:
        tracking.version_tags(version)
    except MlflowException as error:
        if error.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise VersionNotFoundError(
            f"registered model {tracking.model_name} has no version {version}"
        ) from error
    return export_version(tracking, version, parity_images(take(settings.lake_dir)), force=force)


def load_onnx_pyfunc(tracking: Tracking, version: str) -> mlflow.pyfunc.PyFuncModel:
    """The version's exported ONNX pyfunc (raises VersionNotFoundError when it was never
    exported)."""
    import mlflow.artifacts

    found = exported(tracking, version)
    if found is None:
        raise VersionNotFoundError(f"{tracking.model_name} v{version} has no ONNX export")
    local = mlflow.artifacts.download_artifacts(
        artifact_uri=found.artifact_location, tracking_uri=tracking.uri
    )
    return mlflow.pyfunc.load_model(local)
