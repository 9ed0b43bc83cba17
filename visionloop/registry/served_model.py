"""The served model: an MLflow pyfunc over :class:`~visionloop.training.classifier.ImageClassifier`.

Contract: input is a pandas DataFrame with a column ``image`` of encoded image bytes (any
format ingest accepts; a base64 ``str`` too, since JSON serving sends strings). Output has
``label`` (str), ``probabilities`` (floats in label order, after the fitted temperature)
and ``confidence`` (the top probability). Each image is preprocessed exactly as ingest
does (EXIF orientation, alpha over white, 16-bit scaling, letterbox) before the model sees
it.

The model carries its code: the ``visionloop`` package is logged as ``code_paths`` (so an
old version keeps the preprocessing it was trained with) and its ``requirements.txt`` pins
the third-party packages that code imports. It loads with stock
``mlflow.pyfunc.load_model`` in any environment with those installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib.metadata import version as installed_version
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd

from visionloop.registry.scoring import ScoringJob
from visionloop.registry.tracking import CHALLENGER, CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.training.calibration import CalibrationReport
from visionloop.training.classifier import ImageClassifier
from visionloop.training.evaluate import EvalReport

IMAGE_COLUMN = "image"
OUTPUT_COLUMNS = ("label", "probabilities", "confidence")
MODEL_PT_ARTIFACT, CONFIG_ARTIFACT = "model_pt", "config"
MODEL_NAME_IN_RUN = "model"
PACKAGE_DIR = Path(__file__).resolve().parents[1]
#: What the served model's code imports, pinned to the versions it was logged with.
REQUIREMENTS = (
    "mlflow",
    "torch",
    "torchvision",
    "timm",
    "pillow",
    "pillow-heif",
    "numpy",
    "pandas",
    "pyarrow",
    "pydantic",
    "pydantic-settings",
    "PyYAML",
)


#: The models-from-code entry file logged with the model (MLflow runs it at load time).
MODEL_CODE = """from mlflow.models import set_model

from visionloop.registry.served_model import ImageClassifierModel

set_model(ImageClassifierModel())
"""


class RegistrationError(RuntimeError):
    """Logging or registering the model failed; nothing half-registered was left behind."""


class ImageClassifierModel(mlflow.pyfunc.PythonModel):
    """Images in, label + calibrated probabilities out."""

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        config = json.loads(Path(context.artifacts[CONFIG_ARTIFACT]).read_text())
        self.classifier = ImageClassifier.load(
            context.artifacts[MODEL_PT_ARTIFACT], temperature=float(config["temperature"])
        )
        self.config = config

    @property
    def labels(self) -> list[str]:
        return self.classifier.labels

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
        probabilities = self.classifier.predict_proba(list(model_input[IMAGE_COLUMN]))
        return prediction_frame(probabilities, self.labels, model_input.index)


def prediction_frame(probabilities: np.ndarray, labels: list[str], index: Any) -> pd.DataFrame:
    if not len(probabilities):
        return pd.DataFrame({name: [] for name in OUTPUT_COLUMNS})
    return pd.DataFrame(
        {
            "label": [labels[i] for i in probabilities.argmax(axis=1)],
            "probabilities": [row.tolist() for row in probabilities],
            "confidence": probabilities.max(axis=1).astype(float),
        },
        index=index,
    )


def predict_proba_fn(model: mlflow.pyfunc.PyFuncModel):
    """Labels and an images -> probabilities function through the model's stock ``predict``."""
    labels = list(model.unwrap_python_model().labels)

    def predict_proba(images: list[bytes]) -> np.ndarray:
        output = model.predict(pd.DataFrame({IMAGE_COLUMN: images}))
        return np.asarray([list(row) for row in output["probabilities"]], dtype=np.float64)

    return labels, predict_proba


# --------------------------------------------------------------------------- logging


def pip_requirements() -> list[str]:
    return [f"{name}=={installed_version(name).split('+')[0]}" for name in REQUIREMENTS]


def model_signature():
    """Encoded images in; label, probabilities, confidence out (the torch and ONNX pyfuncs)."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, IMAGE_COLUMN)]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(Array(DataType.double), "probabilities"),
                ColSpec(DataType.double, "confidence"),
            ]
        ),
    )


def grey_png(size: int) -> bytes:
    """A mid-grey square PNG: the logged models' input example."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def save_model(
    directory: Path, model_pt: Path, temperature: float, examples: list[bytes] | None = None
) -> Path:
    """Write the pyfunc model (code, artifacts, signature, requirements) into ``directory``."""
    classifier = ImageClassifier.load(model_pt)
    config = {
        "temperature": float(temperature),
        "labels": classifier.labels,
        "model_name": classifier.spec.model_name,
        "input_size": classifier.spec.input_size,
        "preprocessing": classifier.options.to_dict(),
    }
    example = examples or [grey_png(classifier.options.size)]
    with tempfile.TemporaryDirectory(prefix="visionloop-model-parts-") as parts:
        config_path = Path(parts) / "config.json"
        config_path.write_text(json.dumps(config, indent=2))
        code = Path(parts) / "code" / PACKAGE_DIR.name
        shutil.copytree(PACKAGE_DIR, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        entry = Path(parts) / "visionloop_model.py"
        entry.write_text(MODEL_CODE)
        mlflow.pyfunc.save_model(
            path=str(directory),
            python_model=str(entry),
            artifacts={MODEL_PT_ARTIFACT: str(model_pt), CONFIG_ARTIFACT: str(config_path)},
            code_paths=[str(code)],
            signature=model_signature(),
            input_example=pd.DataFrame({IMAGE_COLUMN: example[:2]}),
            pip_requirements=pip_requirements(),
        )
    return directory


def model_files(model_dir: Path) -> tuple[Path, float]:
    """The ``model.pt`` and fitted temperature inside a saved (or downloaded) served model."""
    import yaml

    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["python_function"]
    artifacts = flavor["artifacts"]
    config = json.loads((model_dir / artifacts[CONFIG_ARTIFACT]["path"]).read_text())
    return model_dir / artifacts[MODEL_PT_ARTIFACT]["path"], float(config["temperature"])


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and where it came from."""

    name: str
    version: str
    run_id: str
    model_id: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri}


def champion_scoring(settings: Settings, tracking: Tracking) -> ScoringJob | None:
    """The scoring job of the current champion, its files fetched; None without one."""
    version = tracking.alias_version(CHAMPION)
    if version is None:
        return None
    model_pt, temperature = model_files(tracking.download_model(version, settings.models_dir))
    return ScoringJob(
        str(model_pt),
        temperature,
        tracking.model_name,
        version,
        settings.embeddings.batch_size,
        settings.embeddings.threads_per_task,
    )


def log_and_register(
    tracking: Tracking,
    run_id: str,
    model_pt: Path,
    *,
    calibration: CalibrationReport,
    test_report: EvalReport,
    version_tags: dict[str, str],
) -> RegisteredVersion:
    """Log evaluation, calibration and the pyfunc to the run; register it as ``challenger``.

    All or nothing: if anything fails, the run is marked FAILED and a version (and a
    registered model) this call created is deleted again (:class:`RegistrationError`).
    """
    try:
        tracking.log_calibration(run_id, calibration)
        tracking.log_evaluation(run_id, test_report, "test")
        model = _log_model(tracking, run_id, model_pt, calibration.temperature)
        tags = {
            **version_tags,
            "visionloop.temperature": f"{calibration.temperature:.6g}",
            "test.macro_f1": f"{test_report.macro_f1:.6f}",
            "test.accuracy": f"{test_report.accuracy:.6f}",
        }
        version = _register(tracking, run_id, model, tags)
    except Exception:
        with contextlib.suppress(Exception):
            tracking.end_run(run_id, "FAILED")
        raise
    tracking.end_run(run_id)
    return RegisteredVersion(tracking.model_name, version, run_id, model[0])


def _log_model(
    tracking: Tracking, run_id: str, model_pt: Path, temperature: float
) -> tuple[str, str]:
    """The pyfunc as an MLflow LoggedModel of the run (client API only): id and location."""
    client = tracking.client
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(
        experiment_id,
        name=MODEL_NAME_IN_RUN,
        source_run_id=run_id,
        tags={"visionloop.temperature": f"{temperature:.6g}"},
    )
    try:
        with tempfile.TemporaryDirectory(prefix="visionloop-model-") as temporary:
            local = save_model(Path(temporary) / "model", model_pt, temperature)
            client.log_model_artifacts(logged.model_id, str(local))
    except Exception:
        client.finalize_logged_model(logged.model_id, "FAILED")
        raise
    client.finalize_logged_model(logged.model_id, "READY")
    return logged.model_id, logged.artifact_location


def _register(tracking: Tracking, run_id: str, model: tuple[str, str], tags: dict[str, str]) -> str:
    from mlflow.exceptions import MlflowException

    client, name = tracking.client, tracking.model_name
    model_id, location = model
    created_model = False
    try:
        client.create_registered_model(
            name, description="visionloop image classifier (champion/challenger aliases)"
        )
        created_model = True
    except MlflowException as error:
        if "ALREADY_EXISTS" not in str(error.error_code):
            raise RegistrationError(f"cannot create registered model {name}: {error}") from error
    version: str | None = None
    try:
        # The artifact location, not models:/<id>: MLflow resolves that through its global
        # tracking URI, which visionloop never sets.
        created = client.create_model_version(
            name, source=location, run_id=run_id, tags=tags, model_id=model_id
        )
        version = str(created.version)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception as error:
        problems = _cleanup(tracking, version, model_id, created_model)
        detail = f"; cleanup left: {'; '.join(problems)}" if problems else ""
        raise RegistrationError(
            f"registering model {model_id} of run {run_id} as {name} failed ({error}); "
            f"the partial registration was removed{detail}"
        ) from error
    return version


def _cleanup(
    tracking: Tracking, version: str | None, model_id: str, created_model: bool
) -> list[str]:
    """Delete what a failed registration created; returns problems that remain.

    When the failing call returned no version number (e.g. the response was lost), the
    versions made from this logged model are the ones it may have created.
    """
    client, name = tracking.client, tracking.model_name
    problems: list[str] = []
    versions = [version] if version else []
    if not versions:
        with contextlib.suppress(Exception):
            versions = [
                str(item.version)
                for item in client.search_model_versions(f"name = '{name}'")
                if getattr(item, "model_id", None) == model_id
            ]
    for number in versions:
        try:
            client.delete_model_version(name, number)
        except Exception as error:
            problems.append(f"could not delete version {number} of {name}: {error}")
    if created_model:
        try:
            if not client.search_model_versions(f"name = '{name}'"):
                client.delete_registered_model(name)
        except Exception as error:
            problems.append(f"could not delete registered model {name}: {error}")
    return problems
