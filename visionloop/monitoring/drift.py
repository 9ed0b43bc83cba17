"""Drift of a batch of images against a reference, with Evidently 0.7.

Three embedding-drift methods vote (a classifier telling the sets apart, MMD, the share of
drifted dimensions); each has a test with its threshold (``include_tests=True``), and the
batch has drifted when at least ``settings.drift.votes`` tests fail. Predicted-class shares
and simple image statistics (size, brightness, contrast, saturation) are reported beside
them to explain a decision, not to make it. :func:`image_statistics` and the frames are
plain pandas; :func:`drift_report` runs Evidently and returns the decision with its numbers.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from visionloop.preprocessing import decode_stored
from visionloop.settings import DriftSettings

STATISTICS = ("brightness", "contrast", "saturation", "width", "height")
PREDICTED = "predicted_label"
UNSCORED = "unscored"  # the predicted label of an image the model has not scored
EMBEDDING = "embedding"
METHODS = ("classifier", "mmd", "ratio")


class DriftInputError(ValueError):
    """The reference or the current batch cannot be judged (too few rows, NaN vectors)."""


def image_statistics(images: Sequence[bytes]) -> pd.DataFrame:
    """Brightness, contrast (mean and std of grey, 0..1) and saturation (mean HSV S, 0..1)."""
    rows = []
    for data in images:
        rgb = decode_stored(data)
        grey = np.asarray(rgb.convert("L"), dtype=np.float64) / 255
        saturation = np.asarray(rgb.convert("HSV"), dtype=np.float64)[..., 1] / 255
        rows.append((grey.mean(), grey.std(), saturation.mean()))
    return pd.DataFrame(rows, columns=["brightness", "contrast", "saturation"])


def drift_frame(
    vectors: np.ndarray,
    statistics: pd.DataFrame,
    sizes: pd.DataFrame,
    predicted: Sequence[str | None],
) -> pd.DataFrame:
    """One row per image: embedding columns, predicted label, image statistics."""
    frame = pd.DataFrame(vectors, columns=embedding_columns(vectors.shape[1]))
    frame[PREDICTED] = [label or UNSCORED for label in predicted]
    for name in ("brightness", "contrast", "saturation"):
        frame[name] = statistics[name].to_numpy()
    for name in ("width", "height"):
        frame[name] = sizes[name].to_numpy()
    return frame


def embedding_columns(dimensions: int) -> list[str]:
    return [f"e{i}" for i in range(dimensions)]


@dataclass(frozen=True)
class MethodResult:
    method: str
    score: float
    threshold: float
    drifted: bool


@dataclass(frozen=True)
class DriftResult:
    """The decision, its votes, and the explaining column drifts."""

    drifted: bool
    votes: int
    votes_needed: int
    methods: list[MethodResult]
    columns: dict[str, dict[str, Any]] = field(default_factory=dict)
    reference_rows: int = 0
    current_rows: int = 0

    @property
    def reason(self) -> str:
        scores = ", ".join(
            f"{m.method} {m.score:.4g} {'>' if m.drifted else '<='} {m.threshold:.4g}"
            for m in self.methods
        )
        verdict = "drifted" if self.drifted else "no drift"
        return f"{verdict}: {self.votes} of {len(self.methods)} embedding tests failed ({scores})"

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "reason": self.reason}


@dataclass(frozen=True)
class DriftCheck:
    """A drift check of some batches: the decision (None when drift was not judged), why,
    its Evidently report, and the images to send to annotators first."""

    result: DriftResult | None
    note: str  # the decision's reason, or why drift was not judged
    report: Path | None = None  # the HTML report
    drifted_ids: list[str] = field(default_factory=list)  # the batches' images, if drifted

    @property
    def drifted(self) -> bool | None:
        """True or False when judged; None when not (no champion, too few new images)."""
        return None if self.result is None else self.result.drifted


def _methods(settings: DriftSettings) -> list[tuple[str, Any, float]]:
    from evidently.metrics.embeddings import MMDDriftMethod, ModelDriftMethod, RatioDriftMethod

    return [
        (
            "classifier",
            ModelDriftMethod(threshold=settings.classifier_auc),
            settings.classifier_auc,
        ),
        ("mmd", MMDDriftMethod(threshold=settings.mmd), settings.mmd),
        ("ratio", RatioDriftMethod(threshold=settings.ratio), settings.ratio),
    ]


@contextlib.contextmanager
def _pca_picture() -> Iterator[None]:
    """Evidently's EmbeddingsDrift draws its HTML plot from a TSNE of up to 5,000 rows: tens
    of seconds per metric on two cores (115 s for three), for a picture. While a report
    runs, a 2-D PCA draws it instead; the drift scores do not depend on it."""
    import evidently.legacy.metrics.data_drift.embeddings_drift as plot_module
    from sklearn.decomposition import PCA

    class TwoComponents:
        def __init__(self, n_components: int = 2, **_: Any) -> None:
            self.pca = PCA(n_components=n_components, random_state=0)

        def fit_transform(self, data: Any) -> np.ndarray:
            return self.pca.fit_transform(data)

    original = plot_module.TSNE
    plot_module.TSNE = TwoComponents
    try:
        yield
    finally:
        plot_module.TSNE = original


def check_inputs(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings) -> None:
    if len(current) < settings.min_current:
        raise DriftInputError(
            f"{len(current)} new images with embeddings: too few to judge drift (needs "
            f"{settings.min_current}, drift.min_current)"
        )
    if len(reference) < 200:
        raise DriftInputError(f"{len(reference)} reference images: too few (needs 200)")
    columns = [c for c in reference.columns if c.startswith("e") and c[1:].isdigit()]
    for name, frame in (("reference", reference), ("current", current)):
        if not np.isfinite(frame[columns].to_numpy(dtype=np.float64)).all():
            raise DriftInputError(f"{name} embeddings hold NaN or infinite values")


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, settings: DriftSettings):
    """Run the Evidently report; returns ``(DriftResult, snapshot)`` (save HTML from it)."""
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import DriftedColumnsCount, EmbeddingsDrift, ValueDrift
    from evidently.tests import lte

    check_inputs(reference, current, settings)
    columns = [c for c in reference.columns if c.startswith("e") and c[1:].isdigit()]
    definition = DataDefinition(
        numerical_columns=list(STATISTICS),
        categorical_columns=[PREDICTED],
        embeddings={EMBEDDING: columns},
    )
    methods = _methods(settings)
    metrics: list[Any] = [
        EmbeddingsDrift(embeddings_name=EMBEDDING, drift_method=method, tests=[lte(threshold)])
        for _, method, threshold in methods
    ]
    metrics += [ValueDrift(column=name) for name in (PREDICTED, *STATISTICS)]
    metrics.append(DriftedColumnsCount(columns=[PREDICTED, *STATISTICS]))
    with _pca_picture(), warnings.catch_warnings():
        # Evidently divides by a zero spread for a constant column (every image one size).
        warnings.filterwarnings("ignore", "invalid value encountered in divide", RuntimeWarning)
        snapshot = Report(metrics, include_tests=True).run(
            current_data=Dataset.from_pandas(current, data_definition=definition),
            reference_data=Dataset.from_pandas(reference, data_definition=definition),
        )
    return summarise(snapshot, methods, settings, len(reference), len(current)), snapshot


def summarise(
    snapshot: Any,
    methods: list[tuple[str, Any, float]],
    settings: DriftSettings,
    reference_rows: int,
    current_rows: int,
) -> DriftResult:
    """The decision from the snapshot's tests (joined to their metrics by metric id)."""
    data = snapshot.dict()
    failed: dict[str, bool] = {}
    for test in data["tests"]:
        metric = test["metric_config"]["metric_id"]
        failed[metric] = failed.get(metric, False) or _status(test) == "FAIL"
    embedding_metrics = [m for m in data["metrics"] if m["config"].get("drift_method")]
    results = [
        MethodResult(name, float(metric["value"]), threshold, failed.get(metric["id"], False))
        for (name, _, threshold), metric in zip(methods, embedding_metrics, strict=True)
    ]
    columns = {
        m["config"]["column"]: {
            "score": float(m["value"]),
            "method": m["config"].get("method"),
            "threshold": m["config"].get("threshold"),
            "drifted": failed.get(m["id"], False),
        }
        for m in data["metrics"]
        if m["config"].get("column")
    }
    votes = sum(result.drifted for result in results)
    return DriftResult(
        drifted=votes >= settings.votes,
        votes=votes,
        votes_needed=settings.votes,
        methods=results,
        columns=columns,
        reference_rows=reference_rows,
        current_rows=current_rows,
    )


def _status(test: dict[str, Any]) -> str:
    status = test["status"]
    return str(getattr(status, "value", status))


def save(snapshot: Any, result: DriftResult, directory: Path, name: str) -> dict[str, Path]:
    """The HTML report and the decision as JSON, under ``directory``."""
    import json

    directory.mkdir(parents=True, exist_ok=True)
    html = directory / f"{name}.html"
    snapshot.save_html(str(html))
    record = directory / f"{name}.json"
    record.write_text(json.dumps(result.to_dict(), indent=2, default=float) + "\n")
    return {"html": html, "json": record}
