"""Evaluation on a split of a frozen lake snapshot: the metrics a promotion needs.

Rows stream through :meth:`~visionloop.lake.snapshot.LakeSnapshot.labelled`, so the table
is never in memory whole; the metrics are scikit-learn's. :func:`evaluate_images` also keeps
each image's prediction keyed by ``image_id`` (:class:`ImagePredictions`), so two models
evaluated on the same split can be compared image by image (the promotion's paired test).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from sklearn import metrics

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.training.calibration import ECE_BINS, expected_calibration_error

SUPPORTED_METRICS = ("macro_f1", "accuracy")

# images -> probabilities (N, C) in the predictor's label order
ProbabilityFn = Callable[[list[bytes]], np.ndarray]


class EvaluationError(RuntimeError):
    """Evaluation could not run (no rows, unreadable lake); the message says why."""


@dataclass(frozen=True)
class EvalReport:
    """Metrics of one model on one split.

    ``per_class`` maps every label (the model's, then any unknown true labels) to
    ``{"precision", "recall", "f1", "support"}``; recall is ``None`` for classes with no
    true examples. ``confusion[i][j]`` counts true ``labels[i]`` predicted as ``labels[j]``.
    """

    accuracy: float
    macro_f1: float
    per_class: dict[str, dict[str, float | int | None]]
    confusion: list[list[int]]
    labels: list[str]
    n: int
    ece: float | None = None
    split: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def metric(self, name: str) -> float:
        if name not in SUPPORTED_METRICS:
            raise ValueError(
                f"unsupported promotion metric {name!r}; use one of {list(SUPPORTED_METRICS)}"
            )
        return float(getattr(self, name))

    def recall(self, label: str) -> float | None:
        stats = self.per_class.get(label)
        return None if stats is None else stats.get("recall")  # type: ignore[return-value]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> EvalReport:
        return cls(**data)

    def summary_metrics(self, prefix: str) -> dict[str, float]:
        """Flat MLflow metrics: ``<prefix>accuracy``, ``<prefix>recall.<label>``, ..."""
        metrics = {f"{prefix}accuracy": self.accuracy, f"{prefix}macro_f1": self.macro_f1}
        if self.ece is not None:
            metrics[f"{prefix}ece"] = self.ece
        for label, stats in self.per_class.items():
            for key in ("precision", "recall", "f1"):
                value = stats.get(key)
                if value is not None:
                    metrics[f"{prefix}{key}.{metric_safe(label)}"] = float(value)
        return metrics


def metric_safe(name: str) -> str:
    """MLflow metric/tag keys allow alphanumerics, ``_ - . / space``; replace the rest."""
    return "".join(ch if ch.isalnum() or ch in "_-. /" else "_" for ch in name)


def report_from_predictions(
    true_labels: Sequence[str],
    predicted: Sequence[int] | np.ndarray,
    labels: Sequence[str],
    probabilities: np.ndarray | None = None,
    split: str | None = None,
) -> EvalReport:
    """Accuracy, macro-F1, per-class P/R/F1, confusion (scikit-learn) and 15-bin ECE.

    ``predicted`` holds indices into ``labels`` (the model's label order). True labels the
    model does not know are appended to the label list; they count as errors. Macro-F1
    averages over classes present in the true labels or predicted at least once.
    """
    labels = [str(label) for label in labels]
    unknown = sorted({str(label) for label in true_labels} - set(labels))
    all_labels = labels + unknown
    index = {label: i for i, label in enumerate(all_labels)}
    y_true = np.asarray([index[str(label)] for label in true_labels], dtype=np.int64)
    y_pred = np.asarray(predicted, dtype=np.int64)
    if len(y_true) != len(y_pred):
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    every = list(range(len(all_labels)))
    confusion = metrics.confusion_matrix(y_true, y_pred, labels=every)
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        y_true, y_pred, labels=every, zero_division=0
    )
    per_class: dict[str, dict[str, float | int | None]] = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]) if support[i] else None,
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(all_labels)
    }
    present = sorted(set(y_true.tolist()) | set(y_pred.tolist()))
    n = len(y_true)
    return EvalReport(
        accuracy=float(metrics.accuracy_score(y_true, y_pred)) if n else 0.0,
        macro_f1=float(
            metrics.f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)
        )
        if n
        else 0.0,
        per_class=per_class,
        confusion=confusion.tolist(),
        labels=all_labels,
        n=n,
        ece=_ece(probabilities, y_true, len(labels)),
        split=split,
    )


def _ece(probabilities: np.ndarray | None, y_true: np.ndarray, known: int) -> float | None:
    """ECE over the rows whose true class the model can express."""
    if probabilities is None or not len(y_true):
        return None
    rows = y_true < known
    if not rows.any():
        return None
    return expected_calibration_error(probabilities[rows], y_true[rows], ECE_BINS)


@dataclass(frozen=True)
class ImagePredictions:
    """One model's prediction for each image of a split, keyed by ``image_id``."""

    image_ids: tuple[str, ...]
    true_labels: tuple[str, ...]
    predicted: tuple[str, ...]
    confidence: tuple[float, ...]

    COLUMNS = ("image_id", "label", "predicted", "confidence")

    def __post_init__(self) -> None:
        sizes = {len(self.image_ids), len(self.true_labels), len(self.predicted)}
        if len(sizes | {len(self.confidence)}) != 1:
            raise ValueError("image_ids, true_labels, predicted and confidence differ in length")
        if len(set(self.image_ids)) != len(self.image_ids):
            raise ValueError("an image_id appears twice in the predictions")

    @classmethod
    def from_probabilities(
        cls,
        image_ids: Sequence[str],
        true_labels: Sequence[str],
        probabilities: np.ndarray,
        labels: Sequence[str],
    ) -> ImagePredictions:
        best = probabilities.argmax(axis=1)
        return cls(
            tuple(image_ids),
            tuple(str(label) for label in true_labels),
            tuple(str(labels[i]) for i in best),
            tuple(float(p) for p in probabilities.max(axis=1)),
        )

    def to_table(self) -> dict[str, list[Any]]:
        """Columns for ``MlflowClient.log_table`` (an MLflow eval table keyed by image_id)."""
        columns = (self.image_ids, self.true_labels, self.predicted, self.confidence)
        return {name: list(values) for name, values in zip(self.COLUMNS, columns, strict=True)}

    @classmethod
    def from_table(cls, table: dict[str, Any]) -> ImagePredictions:
        """Back from :meth:`to_table` or MLflow's logged table JSON (``columns`` + ``data``)."""
        if "columns" in table and "data" in table:
            position = {name: i for i, name in enumerate(table["columns"])}
            table = {name: [row[position[name]] for row in table["data"]] for name in cls.COLUMNS}
        return cls(*(tuple(table[name]) for name in cls.COLUMNS))


@dataclass(frozen=True)
class Evaluation:
    """A model's metrics on a split and the per-image predictions they were computed from."""

    report: EvalReport
    predictions: ImagePredictions


def evaluate_snapshot(
    predict_proba: ProbabilityFn,
    snapshot: LakeSnapshot,
    labels: Sequence[str],
    split: str = "test",
    batch_size: int = 256,
) -> EvalReport:
    """Evaluate a predictor (images -> probabilities in ``labels`` order) on a snapshot split."""
    return evaluate_images(predict_proba, snapshot, labels, split, batch_size).report


def evaluate_images(
    predict_proba: ProbabilityFn,
    snapshot: LakeSnapshot,
    labels: Sequence[str],
    split: str = "test",
    batch_size: int = 256,
) -> Evaluation:
    """:func:`evaluate_snapshot`, keeping every image's prediction by ``image_id``."""
    image_ids: list[str] = []
    true_labels: list[str] = []
    probabilities: list[np.ndarray] = []
    for batch in snapshot.labelled(split, batch_size):
        probs = np.asarray(predict_proba(batch["image"]), dtype=np.float64)
        if probs.shape != (len(batch["image"]), len(labels)):
            raise EvaluationError(
                f"predictor returned shape {probs.shape} for {len(batch['image'])} images and "
                f"{len(labels)} labels"
            )
        image_ids += batch["image_id"]
        true_labels += batch["label"]
        probabilities.append(probs)
    if not true_labels:
        raise EvaluationError(
            f"no labelled rows in split {split!r} of lake snapshot {snapshot.id}; "
            "ingest labelled data first"
        )
    stacked = np.concatenate(probabilities)
    report = report_from_predictions(
        true_labels, stacked.argmax(axis=1), labels, probabilities=stacked, split=split
    )
    predictions = ImagePredictions.from_probabilities(image_ids, true_labels, stacked, labels)
    return Evaluation(report, predictions)


def collect_logits(
    logits_fn: Callable[[list[bytes]], np.ndarray],
    snapshot: LakeSnapshot,
    labels: Sequence[str],
    split: str = "val",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray]:
    """Logits and label indices of a snapshot split's labelled rows (to fit a temperature)."""
    index = {str(label): i for i, label in enumerate(labels)}
    chunks: list[np.ndarray] = []
    targets: list[int] = []
    for batch in snapshot.labelled(split, batch_size):
        chunks.append(np.asarray(logits_fn(batch["image"])))
        targets += [index[label] for label in batch["label"]]
    if not chunks:
        raise EvaluationError(f"no labelled rows in split {split!r} of snapshot {snapshot.id}")
    return np.concatenate(chunks), np.asarray(targets, dtype=np.int64)
