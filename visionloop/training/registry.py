"""MLflow tracking and registration: runs, lineage, evaluation artifacts, the pyfunc model.

Everything goes to ``settings.resolved_mlflow_uri`` (a SQLite store under the data home by
default, or any tracking server via ``VISIONLOOP_MLFLOW_TRACKING_URI``). Every entry point
probes the store first (:func:`ensure_reachable`), so an unreachable server fails in seconds
with :class:`TrackingUnavailableError` before anything is created; a registration that
fails midway deletes the version (and the registered model, if it made it) again.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

from visionloop.settings import Settings
from visionloop.training.calibration import CalibrationReport
from visionloop.training.evaluate import EvalReport
from visionloop.training.lineage import (
    git_commit,
    lineage_tags,
    truncate,
)

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS_CHAMPION = "previous-champion"
MODEL_ARTIFACT_NAME = "model"
PROBE_TIMEOUT_S = 5
PARAM_VALUE_LIMIT = 6000
URI_ENV_VAR = "VISIONLOOP_MLFLOW_TRACKING_URI"
# The modules the logged pyfunc needs, shipped with it (code_paths).
PYFUNC_MODULES = ("predict.py", "pyfunc.py")


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached; the message names the URI and the fix."""


class RegistrationError(RuntimeError):
    """Logging or registering the model failed; nothing half-registered was left behind."""


@dataclass(frozen=True)
class RegisteredVersion:
    """A registered model version and where it came from."""

    name: str
    version: str
    run_id: str
    model_id: str | None
    logged_model_uri: str

    @property
    def model_uri(self) -> str:
        return f"models:/{self.name}/{self.version}"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "model_uri": self.model_uri}


# --------------------------------------------------------------------------- connection


def _mlflow():
    import mlflow

    return mlflow


def client_for(settings: Settings):
    """An ``MlflowClient`` on the settings' tracking and registry URI."""
    from mlflow import MlflowClient

    uri = settings.resolved_mlflow_uri
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def use_tracking(settings: Settings) -> str:
    """Point the (process-global) fluent MLflow API at the settings' store; returns the URI."""
    mlflow = _mlflow()
    uri = settings.resolved_mlflow_uri
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


@contextlib.contextmanager
def _quick_http(timeout_s: int) -> Iterator[None]:
    """No retries and a short timeout for MLflow HTTP requests, restored afterwards."""
    wanted = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": str(timeout_s)}
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _http_probe(uri: str, timeout_s: float) -> None:
    """Raise (``ConnectionError``/``TimeoutError``) unless something answers HTTP at ``uri``;
    any HTTP status counts as an answer."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # the server answered (401/403/404 ...); the API call below judges it
    except urllib.error.URLError as error:
        raise ConnectionError(f"cannot connect: {error.reason}") from error


def ensure_reachable(uri: str, timeout_s: int = PROBE_TIMEOUT_S) -> None:
    """Probe the tracking store with one cheap call; raise :class:`TrackingUnavailableError`.

    HTTP stores are probed with no retries and a ``timeout_s`` timeout, so a closed port
    fails in well under a second. A SQLite store gets its folder created first.
    """
    sqlite_path = _sqlite_path(uri)
    if sqlite_path is not None:
        try:
            sqlite_path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise TrackingUnavailableError(
                f"cannot create the folder of the MLflow SQLite store {uri}: {error}; "
                f"point {URI_ENV_VAR} at a writable location"
            ) from error
    scheme = urlparse(uri).scheme
    try:
        if scheme in ("http", "https"):
            _http_probe(uri, timeout_s)  # fast, before MLflow's (slow-importing) REST client
        from mlflow import MlflowClient

        with _quick_http(timeout_s):
            MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1)
    except Exception as error:
        fix = (
            "start the tracking server (e.g. `mlflow server --host 127.0.0.1 --port 5000`) "
            f"or set {URI_ENV_VAR} to a reachable server, or unset it to use the local "
            "SQLite store under the data home"
            if scheme in ("http", "https")
            else f"check the store or set {URI_ENV_VAR} to a reachable tracking URI"
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else ""
        raise TrackingUnavailableError(
            f"MLflow tracking store {uri} is unreachable ({type(error).__name__}: "
            f"{first_line[:300]}); {fix}"
        ) from error


def experiment_name(settings: Settings) -> str:
    """One experiment per model architecture, under the registered model's name."""
    return f"{settings.registered_model_name}/{settings.training.model_name}"


def _artifact_location(settings: Settings) -> str | None:
    """Keep artifacts beside a SQLite store (MLflow would use ``./mlruns`` of the cwd)."""
    sqlite_path = _sqlite_path(settings.resolved_mlflow_uri)
    if sqlite_path is None:
        return None
    return (sqlite_path.parent / "mlartifacts").resolve().as_uri()


def ensure_experiment(settings: Settings, client=None) -> str:
    """The experiment id for the settings' model name, created when missing."""
    from mlflow.exceptions import MlflowException

    client = client or client_for(settings)
    name = experiment_name(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        if experiment.lifecycle_stage == "deleted":
            client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id
    try:
        return client.create_experiment(name, artifact_location=_artifact_location(settings))
    except MlflowException:  # created concurrently
        experiment = client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists and scalars to JSON-ish strings."""
    if isinstance(data, dict):
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = data if isinstance(data, str) else json.dumps(data)
    return {prefix.rstrip("."): value}


# --------------------------------------------------------------------------- runs


def start_training_run(
    settings: Settings,
    snapshot: dict[str, Any] | None = None,
    expectations: dict[str, Any] | None = None,
    run_name: str | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Create the training run (status RUNNING) with params and lineage; returns its id.

    The training loop logs its per-epoch metrics to this run id; :func:`log_and_register`
    finishes it (or call :func:`end_run` with ``"FAILED"`` when training fails).
    """
    from mlflow.entities import Param

    ensure_reachable(settings.resolved_mlflow_uri)
    client = client_for(settings)
    experiment_id = ensure_experiment(settings, client)
    all_tags = {
        **lineage_tags(snapshot, expectations, git_commit()),
        "visionloop.model_name": settings.training.model_name,
        "visionloop.registered_model_name": settings.registered_model_name,
        **(tags or {}),
    }
    run = client.create_run(experiment_id, tags=all_tags, run_name=run_name)
    run_id = run.info.run_id
    params = [
        Param(key[:250], truncate(value, PARAM_VALUE_LIMIT))
        for key, value in flatten(settings.model_dump(mode="json")).items()
    ]
    for start in range(0, len(params), 100):
        client.log_batch(run_id, params=params[start : start + 100])
    client.log_text(run_id, settings.to_yaml(), "settings.yaml")
    if snapshot is not None:
        client.log_dict(run_id, snapshot, "lineage/lake_snapshot.json")
    if expectations is not None:
        client.log_dict(run_id, expectations, "lineage/expectations.json")
    return run_id


def end_run(settings: Settings, run_id: str, status: str = "FINISHED") -> None:
    """Mark a run ``FINISHED`` / ``FAILED`` / ``KILLED``."""
    client_for(settings).set_terminated(run_id, status=status)


def confusion_figure(report: EvalReport, title: str):
    """A matplotlib figure of the confusion matrix (Agg canvas; no pyplot global state)."""
    from matplotlib.figure import Figure

    matrix = np.asarray(report.confusion)
    size = max(4.0, 0.6 * len(report.labels) + 2)
    figure = Figure(figsize=(size, size))
    axes = figure.add_subplot()
    axes.imshow(matrix, cmap="Blues")
    ticks = range(len(report.labels))
    axes.set_xticks(list(ticks), report.labels, rotation=45, ha="right")
    axes.set_yticks(list(ticks), report.labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(f"{title} (n={report.n}, acc={report.accuracy:.3f})")
    threshold = matrix.max() / 2 if matrix.size else 0
    for i in ticks:
        for j in ticks:
            axes.text(
                j,
                i,
                str(matrix[i, j]),
                ha="center",
                va="center",
                fontsize=8,
                color="white" if matrix[i, j] > threshold else "black",
            )
    figure.tight_layout()
    return figure


def log_evaluation(settings: Settings, run_id: str, report: EvalReport, name: str) -> None:
    """Metrics ``<name>.*``, ``eval/<name>_confusion.png`` and ``eval/<name>_report.json``."""
    from mlflow.entities import Metric

    client = client_for(settings)
    now = int(time.time() * 1000)
    metrics = [
        Metric(key, float(value), now, 0)
        for key, value in report.summary_metrics(f"{name}.").items()
    ]
    for start in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[start : start + 1000])
    client.log_figure(run_id, confusion_figure(report, name), f"eval/{name}_confusion.png")
    client.log_dict(run_id, report.to_dict(), f"eval/{name}_report.json")


def log_calibration(settings: Settings, run_id: str, calibration: CalibrationReport) -> None:
    client = client_for(settings)
    for key, value in calibration.to_dict().items():
        client.log_metric(run_id, f"calibration.{key}", float(value))
    client.log_dict(run_id, calibration.to_dict(), "eval/calibration.json")


# --------------------------------------------------------------------------- the model


def _pip_requirements() -> list[str]:
    from importlib.metadata import version

    pins = []
    for package in ("mlflow", "torch", "timm", "pillow", "numpy", "pandas"):
        try:
            pins.append(f"{package}=={version(package).split('+')[0]}")
        except Exception:
            pins.append(package)
    return pins


MODEL_CODE = '''"""MLflow models-from-code entry point: the visionloop image classifier pyfunc."""

from mlflow.models import set_model

from visionloop.training.pyfunc import ImageClassifierModel

set_model(ImageClassifierModel())
'''


@contextlib.contextmanager
def _staged_code() -> Iterator[tuple[Path, Path]]:
    """A minimal ``visionloop/training`` package (what the pyfunc imports) and the
    models-from-code entry file; returns ``(package_dir, model_code_file)``."""
    source = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory(prefix="visionloop-code-") as temporary:
        package = Path(temporary) / "visionloop"
        (package / "training").mkdir(parents=True)
        (package / "training" / "__init__.py").write_text(
            '"""visionloop classifier inference, as shipped inside an MLflow model."""\n'
        )
        for module in PYFUNC_MODULES:
            shutil.copy2(source / module, package / "training" / module)
        model_code = Path(temporary) / "visionloop_model.py"
        model_code.write_text(MODEL_CODE)
        yield package, model_code


def _example_image(input_size: int) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (input_size, input_size), (128, 128, 128)).save(buffer, format="PNG")
    return buffer.getvalue()


def _signature():
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema
    from mlflow.types.schema import Array

    return ModelSignature(
        inputs=Schema([ColSpec(DataType.binary, "image")]),
        outputs=Schema(
            [
                ColSpec(DataType.string, "label"),
                ColSpec(Array(DataType.double), "probabilities"),
                ColSpec(DataType.double, "confidence"),
            ]
        ),
    )


def log_model(
    settings: Settings,
    run_id: str,
    model_pt: Path,
    temperature: float = 1.0,
    example_images: list[bytes] | None = None,
    extra_config: dict[str, Any] | None = None,
):
    """Log ``model_pt`` as the pyfunc to the run; returns MLflow's ``ModelInfo``."""
    import pandas as pd
    import torch

    from visionloop.training.pyfunc import CONFIG_ARTIFACT, MODEL_PT_ARTIFACT, write_config

    mlflow = _mlflow()
    checkpoint = torch.load(Path(model_pt), map_location="cpu", weights_only=True)
    labels = [str(label) for label in checkpoint["labels"]]
    example = example_images or [_example_image(int(checkpoint["input_size"]))]
    use_tracking(settings)
    with tempfile.TemporaryDirectory(prefix="visionloop-model-") as temporary:
        config = write_config(
            Path(temporary) / "config.json",
            temperature=temperature,
            labels=labels,
            model_name=checkpoint["model_name"],
            input_size=int(checkpoint["input_size"]),
            **(extra_config or {}),
        )
        with _staged_code() as (code, model_code), mlflow.start_run(run_id=run_id):
            return mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                python_model=str(model_code),
                artifacts={MODEL_PT_ARTIFACT: str(model_pt), CONFIG_ARTIFACT: str(config)},
                code_paths=[str(code)],
                signature=_signature(),
                input_example=pd.DataFrame({"image": example[:2]}),
                pip_requirements=_pip_requirements(),
                tags={"visionloop.temperature": str(temperature)},
            )


def _cleanup_registration(
    client, name: str, version: str | None, run_id: str, source: str, created_model: bool
) -> list[str]:
    """Delete what a failed registration created; returns problems that remain.

    When the failing call did not return a version number (e.g. the response was lost),
    versions of this run with exactly this source are the ones it may have created.
    """
    problems: list[str] = []
    versions: list[str] = [version] if version else []
    if not versions:
        with contextlib.suppress(Exception):
            versions = [
                str(mv.version)
                for mv in client.search_model_versions(f"name='{name}' and run_id='{run_id}'")
                if mv.source == source
            ]
    for number in versions:
        try:
            client.delete_model_version(name, number)
        except Exception as error:
            problems.append(f"could not delete version {number} of {name}: {error}")
    if created_model:
        try:
            if not client.search_model_versions(f"name='{name}'"):
                client.delete_registered_model(name)
        except Exception as error:
            problems.append(f"could not delete registered model {name}: {error}")
    return problems


def register(
    settings: Settings, run_id: str, model_info, tags: dict[str, str] | None = None
) -> RegisteredVersion:
    """Register the logged model as a new version and point ``challenger`` at it.

    All or nothing: if any step fails, the version (and a registered model this call
    created) is deleted again and :class:`RegistrationError` is raised.
    """
    from mlflow.exceptions import MlflowException

    ensure_reachable(settings.resolved_mlflow_uri)
    client = client_for(settings)
    name = settings.registered_model_name
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
        created = client.create_model_version(
            name,
            source=model_info.model_uri,
            run_id=run_id,
            tags=tags,
            model_id=getattr(model_info, "model_id", None),
        )
        version = str(created.version)
        client.set_registered_model_alias(name, CHALLENGER, version)
    except Exception as error:
        problems = _cleanup_registration(
            client, name, version, run_id, model_info.model_uri, created_model
        )
        detail = f"; cleanup left: {'; '.join(problems)}" if problems else ""
        raise RegistrationError(
            f"registering {model_info.model_uri} as {name} failed ({error}); "
            f"the partial registration was removed{detail}"
        ) from error
    return RegisteredVersion(
        name=name,
        version=version,
        run_id=run_id,
        model_id=getattr(model_info, "model_id", None),
        logged_model_uri=model_info.model_uri,
    )


def log_and_register(
    settings: Settings,
    run_id: str,
    model_pt: Path,
    *,
    temperature: float = 1.0,
    calibration: CalibrationReport | None = None,
    val_report: EvalReport | None = None,
    test_report: EvalReport | None = None,
    example_images: list[bytes] | None = None,
) -> RegisteredVersion:
    """Log evaluation + calibration, log the pyfunc, register it with alias ``challenger``.

    ``temperature`` defaults to ``calibration.temperature`` when a calibration is given.
    The run ends FINISHED when the model is logged (MLflow's ``start_run`` context does
    that) and is marked FAILED if anything here fails.
    """
    ensure_reachable(settings.resolved_mlflow_uri)
    if calibration is not None:
        temperature = calibration.temperature
    try:
        if calibration is not None:
            log_calibration(settings, run_id, calibration)
        for name, report in (("val", val_report), ("test", test_report)):
            if report is not None:
                log_evaluation(settings, run_id, report, name)
        info = log_model(settings, run_id, model_pt, temperature, example_images)
        tags = dict(client_for(settings).get_run(run_id).data.tags)
        version_tags = {
            key: value
            for key, value in tags.items()
            if key.startswith(("lineage.", "git.", "visionloop."))
        }
        version_tags["visionloop.temperature"] = f"{temperature:.6g}"
        if test_report is not None:
            version_tags["test.macro_f1"] = f"{test_report.macro_f1:.6f}"
            version_tags["test.accuracy"] = f"{test_report.accuracy:.6f}"
        registered = register(settings, run_id, info, version_tags)
    except TrackingUnavailableError:
        raise
    except Exception:
        with contextlib.suppress(Exception):
            end_run(settings, run_id, "FAILED")
        raise
    return registered
