"""The MLflow tracking resource: connected once per flow and passed down, never set globally.

:meth:`Tracking.connect` probes ``settings.resolved_mlflow_uri`` (a SQLite store under the
data home by default, or the server named by ``VISIONLOOP_MLFLOW_TRACKING_URI`` or the YAML
file) and fails in seconds with :class:`TrackingUnavailableError` before anything is
created. Every call then goes through the one ``MlflowClient`` it holds, with explicit URIs:
an inherited ``MLFLOW_TRACKING_URI`` plays no part, and nothing mutates MLflow's process-wide
state. URIs shown in logs, params and artifacts have their credentials redacted.
"""

from __future__ import annotations

import json
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.lineage import Fingerprint, git_commit, lineage_tags, truncate
from visionloop.settings import Settings
from visionloop.training.calibration import CalibrationReport
from visionloop.training.evaluate import EvalReport

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.pyfunc import PyFuncModel

PROBE_TIMEOUT_S = 5
PARAM_VALUE_LIMIT = 6000
URI_SETTING = "VISIONLOOP_MLFLOW_TRACKING_URI"
#: The run artifact holding a model's whole training snapshot (every file and its hash).
TRAINING_SNAPSHOT = "lineage/snapshot.json"
CHALLENGER, CHAMPION, PREVIOUS_CHAMPION = "challenger", "champion", "previous-champion"


class TrackingUnavailableError(RuntimeError):
    """The MLflow tracking store cannot be reached; the message names the URI and the fix."""


@dataclass(frozen=True)
class ChampionSummary:
    """The champion's version and the test metrics and label count recorded on it."""

    version: str
    test_accuracy: float
    test_macro_f1: float
    annotator_labels: int  # annotator labels in its training split


def redact(uri: str) -> str:
    """The URI with any ``user:password@`` replaced by ``***@``."""
    parts = urlsplit(uri)
    if not parts.netloc or "@" not in parts.netloc:
        return uri
    host = parts.netloc.rsplit("@", 1)[1]
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


def redacted_settings(settings: Settings) -> dict[str, Any]:
    """The settings as JSON-able data, with the tracking URI's credentials redacted."""
    data = settings.model_dump(mode="json")
    if data.get("mlflow_tracking_uri"):
        data["mlflow_tracking_uri"] = redact(data["mlflow_tracking_uri"])
    return data


def _sqlite_path(uri: str) -> Path | None:
    if not uri.startswith("sqlite:///"):
        return None
    path = uri[len("sqlite:///") :]
    return None if path in ("", ":memory:") else Path(path)


def _http_probe(uri: str, timeout_s: float) -> None:
    """Raise ``ConnectionError`` unless something answers HTTP at ``uri`` (any status)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout_s):
            return
    except urllib.error.HTTPError:
        return  # the server answered (401/403/404 ...); the API call below judges it
    except (urllib.error.URLError, TimeoutError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise ConnectionError(f"cannot connect: {reason}") from error


def _unavailable(uri: str, error: BaseException) -> TrackingUnavailableError:
    remote = urlsplit(uri).scheme in ("http", "https")
    fix = (
        "start the tracking server (e.g. `mlflow server --host 127.0.0.1 --port 5000`), or set "
        f"{URI_SETTING} to a reachable server, or unset it to use the local SQLite store "
        "under the data home"
        if remote
        else f"check the store, or set {URI_SETTING} to a reachable tracking URI"
    )
    first_line = (str(error).strip().splitlines() or [""])[0]
    return TrackingUnavailableError(
        f"MLflow tracking store {redact(uri)} is unreachable ({type(error).__name__}: "
        f"{first_line[:300]}); {fix}"
    )


def flatten(data: Any, prefix: str = "") -> dict[str, str]:
    """Nested dicts to dotted keys; lists and scalars to JSON-ish strings."""
    if isinstance(data, dict):
        flat: dict[str, str] = {}
        for key, value in data.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        return flat
    value = data if isinstance(data, str) else json.dumps(data)
    return {prefix.rstrip("."): value}


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class Tracking:
    """One reachable tracking store, its client, and the registered model it manages."""

    uri: str
    client: MlflowClient
    model_name: str
    artifact_location: str | None  # beside a SQLite store; the server decides otherwise

    @classmethod
    def connect(cls, settings: Settings, timeout_s: float = PROBE_TIMEOUT_S) -> Tracking:
        """Probe the store once and return the resource (raises TrackingUnavailableError)."""
        from mlflow import MlflowClient

        uri = settings.resolved_mlflow_uri
        sqlite_path = _sqlite_path(uri)
        try:
            if sqlite_path is not None:
                sqlite_path.parent.mkdir(parents=True, exist_ok=True)
            if urlsplit(uri).scheme in ("http", "https"):
                _http_probe(uri, timeout_s)
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
        except Exception as error:
            raise _unavailable(uri, error) from error
        location = None
        if sqlite_path is not None:
            location = (sqlite_path.parent / "mlartifacts").resolve().as_uri()
        return cls(uri, client, settings.registered_model_name, location)

    @property
    def display_uri(self) -> str:
        return redact(self.uri)

    # ------------------------------------------------------------------ experiments and runs

    def experiment_id(self, name: str) -> str:
        """The experiment called ``name``, created (or restored) when needed."""
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            if experiment.lifecycle_stage == "deleted":
                self.client.restore_experiment(experiment.experiment_id)
            return experiment.experiment_id
        try:
            return self.client.create_experiment(name, artifact_location=self.artifact_location)
        except MlflowException:  # created concurrently
            experiment = self.client.get_experiment_by_name(name)
            if experiment is None:
                raise
            return experiment.experiment_id

    def start_training_run(
        self,
        settings: Settings,
        snapshot: LakeSnapshot,
        fingerprint: Fingerprint,
        expectations: dict[str, Any] | None = None,
        tags: dict[str, str] | None = None,
    ) -> str:
        """Create a RUNNING training run with params, lineage tags and artifacts; its id."""
        from mlflow.entities import Param

        experiment = self.experiment_id(f"{self.model_name}/{settings.training.model_name}")
        all_tags = {
            **lineage_tags(snapshot, fingerprint, expectations, git_commit()),
            "visionloop.model_name": settings.training.model_name,
            "visionloop.registered_model_name": self.model_name,
            **(tags or {}),
        }
        run_id = self.client.create_run(experiment, tags=all_tags).info.run_id
        safe = redacted_settings(settings)
        params = [
            Param(key[:250], truncate(value, PARAM_VALUE_LIMIT))
            for key, value in flatten(safe).items()
        ]
        for start in range(0, len(params), 100):
            self.client.log_batch(run_id, params=params[start : start + 100])
        self.client.log_dict(run_id, safe, "settings.json")
        self.client.log_dict(run_id, snapshot.summary(), "lineage/lake_snapshot.json")
        self.client.log_dict(run_id, snapshot.to_dict(), TRAINING_SNAPSHOT)
        if expectations is not None:
            self.client.log_dict(run_id, expectations, "lineage/expectations.json")
        return run_id

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        """Mark a run ``FINISHED`` / ``FAILED`` / ``KILLED``."""
        self.client.set_terminated(run_id, status=status)

    def log_evaluation(self, run_id: str, report: EvalReport, name: str) -> None:
        """Metrics ``<name>.*``, ``eval/<name>_confusion.png`` and ``eval/<name>_report.json``."""
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        values = report.summary_metrics(f"{name}.").items()
        metrics = [Metric(key, float(value), stamp, 0) for key, value in values]
        for start in range(0, len(metrics), 1000):
            self.client.log_batch(run_id, metrics=metrics[start : start + 1000])
        self.client.log_figure(run_id, confusion_figure(report, name), f"eval/{name}_confusion.png")
        self.client.log_dict(run_id, report.to_dict(), f"eval/{name}_report.json")

    def log_calibration(self, run_id: str, calibration: CalibrationReport) -> None:
        for key, value in calibration.to_dict().items():
            self.client.log_metric(run_id, f"calibration.{key}", float(value))
        self.client.log_dict(run_id, calibration.to_dict(), "eval/calibration.json")

    # ------------------------------------------------------------------ the registry

    def alias_version(self, alias: str) -> str | None:
        """The version an alias points at, or None (also when the model does not exist)."""
        from mlflow.exceptions import MlflowException

        try:
            return str(self.client.get_model_version_by_alias(self.model_name, alias).version)
        except MlflowException as error:
            if "RESOURCE_DOES_NOT_EXIST" in str(error.error_code) or "not found" in str(error):
                return None
            raise

    def aliased_versions(self) -> set[str]:
        """The versions the champion, previous-champion and challenger aliases point at."""
        aliases = (CHAMPION, PREVIOUS_CHAMPION, CHALLENGER)
        return {version for alias in aliases if (version := self.alias_version(alias))}

    def version_tags(self, version: str) -> dict[str, str]:
        return dict(self.client.get_model_version(self.model_name, version).tags)

    def versions_tagged(self, key: str, value: str) -> list[str]:
        """Versions of the registered model whose tag ``key`` equals ``value``, oldest first."""
        found = self.client.search_model_versions(
            f"name = '{self.model_name}' and tags.`{key}` = '{value}'"
        )
        return sorted((str(item.version) for item in found), key=int)

    def tag_version(self, version: str, tags: dict[str, str]) -> None:
        """Tags on a version and on the run that made it."""
        for key, value in tags.items():
            self.client.set_model_version_tag(self.model_name, version, key, value)
        run_id = self.client.get_model_version(self.model_name, version).run_id
        for key, value in tags.items():
            if run_id:
                self.client.set_tag(run_id, key, value)

    def champion(self) -> ChampionSummary | None:
        """The champion's version and its recorded test metrics, or None."""
        version = self.alias_version(CHAMPION)
        if version is None:
            return None
        tags = self.version_tags(version)
        return ChampionSummary(
            version=version,
            test_accuracy=float(tags.get("test.accuracy", "nan")),
            test_macro_f1=float(tags.get("test.macro_f1", "nan")),
            annotator_labels=int(tags.get("lineage.annotator_labels", "0")),
        )

    def training_snapshot(self, version: str) -> LakeSnapshot | None:
        """The exact lake snapshot (files and hashes) a version was trained on, read back
        whole from its run; None for versions registered before it was logged."""
        from mlflow.exceptions import MlflowException

        run_id = self.client.get_model_version(self.model_name, version).run_id
        with tempfile.TemporaryDirectory(prefix="vl-snapshot-") as directory:
            try:
                local = self.client.download_artifacts(run_id, TRAINING_SNAPSHOT, directory)
            except (MlflowException, OSError):
                return None
            return LakeSnapshot.load(Path(local))

    def download_model(self, version: str, directory: Path) -> Path:
        """The version's served-model folder, fetched once under ``directory/<name>/<version>``.

        Spark workers and the embedder read ``artifacts/model.pt`` from there, so on a
        cluster ``directory`` must be storage every executor reads (the data home).
        """
        import mlflow.artifacts

        target = directory / self.model_name / version
        done = target / ".downloaded"  # holds where the model landed
        if not done.exists():
            target.mkdir(parents=True, exist_ok=True)
            source = self.client.get_model_version_download_uri(self.model_name, version)
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=source, dst_path=str(target), tracking_uri=self.uri
            )
            done.write_text(str(Path(local).resolve()))
        return Path(done.read_text())

    def load_model(self, version: str) -> PyFuncModel:
        """The registered pyfunc of ``version``, fetched with this store's explicit URI."""
        import mlflow.artifacts
        import mlflow.pyfunc

        source = self.client.get_model_version_download_uri(self.model_name, version)
        local = mlflow.artifacts.download_artifacts(
            artifact_uri=source, tracking_uri=self.uri, registry_uri=self.uri
        )
        return mlflow.pyfunc.load_model(local)


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
            colour = "white" if matrix[i, j] > threshold else "black"
            axes.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8, color=colour)
    figure.tight_layout()
    return figure
