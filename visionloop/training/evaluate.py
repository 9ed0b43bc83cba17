"""Evaluation on a frozen lake split: a streaming reader and the metrics a promotion needs.

The reader walks the images table one Parquet row group at a time: it reads the small
``split``/``label`` columns first and the ``image`` column only for row groups that hold
wanted rows, so the whole table is never in memory.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

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
    """Accuracy, macro-F1, per-class P/R/F1, confusion and (given probabilities) 15-bin ECE.

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
    k = len(all_labels)
    confusion = np.zeros((k, k), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(np.float64)
    support = confusion.sum(axis=1)
    predicted_count = confusion.sum(axis=0)
    per_class: dict[str, dict[str, float | int | None]] = {}
    f1s = []
    for i, label in enumerate(all_labels):
        precision = tp[i] / predicted_count[i] if predicted_count[i] else 0.0
        recall = tp[i] / support[i] if support[i] else None
        r = recall or 0.0
        f1 = 2 * precision * r / (precision + r) if precision + r else 0.0
        per_class[label] = {
            "precision": float(precision),
            "recall": None if recall is None else float(recall),
            "f1": float(f1),
            "support": int(support[i]),
        }
        if support[i] or predicted_count[i]:
            f1s.append(f1)
    n = len(y_true)
    ece = None
    if probabilities is not None and n:
        known = y_true < len(labels)
        # ECE over rows whose true class the model can express.
        ece = (
            expected_calibration_error(probabilities[known], y_true[known], ECE_BINS)
            if known.any()
            else None
        )
    return EvalReport(
        accuracy=float(tp.sum() / n) if n else 0.0,
        macro_f1=float(np.mean(f1s)) if f1s else 0.0,
        per_class=per_class,
        confusion=confusion.tolist(),
        labels=all_labels,
        n=n,
        ece=ece,
        split=split,
    )


def images_files(images_dir: Path) -> list[Path]:
    """The committed Parquet files of the images table, in a stable order."""
    return sorted(Path(images_dir).glob("batch_id=*/*.parquet"))


def iter_labelled(
    images_dir: Path, split: str, batch_size: int = 256
) -> Iterator[tuple[list[bytes], list[str]]]:
    """Yield ``(images, labels)`` batches of a split's labelled rows, one row group at a time."""
    images: list[bytes] = []
    labels: list[str] = []
    for path in images_files(images_dir):
        parquet = pq.ParquetFile(path)
        for group in range(parquet.num_row_groups):
            keys = parquet.read_row_group(group, columns=["split", "label"])
            mask = pc.and_(
                pc.fill_null(pc.equal(keys["split"], pa.scalar(split)), False),
                pc.is_valid(keys["label"]),
            )
            if not pc.any(mask).as_py():
                continue
            wanted = parquet.read_row_group(group, columns=["image"]).filter(mask)
            images.extend(wanted["image"].to_pylist())
            labels.extend(keys["label"].filter(mask).to_pylist())
            while len(images) >= batch_size:
                yield images[:batch_size], labels[:batch_size]
                images, labels = images[batch_size:], labels[batch_size:]
    if images:
        yield images, labels


def evaluate_split(
    predict_proba: ProbabilityFn,
    images_dir: Path,
    labels: Sequence[str],
    split: str = "test",
    batch_size: int = 256,
) -> EvalReport:
    """Evaluate a predictor (images -> probabilities in ``labels`` order) on a lake split."""
    true_labels: list[str] = []
    predicted: list[np.ndarray] = []
    probabilities: list[np.ndarray] = []
    for images, batch_labels in iter_labelled(images_dir, split, batch_size):
        probs = np.asarray(predict_proba(images), dtype=np.float64)
        if probs.shape != (len(images), len(labels)):
            raise EvaluationError(
                f"predictor returned shape {probs.shape} for {len(images)} images and "
                f"{len(labels)} labels"
            )
        true_labels.extend(batch_labels)
        predicted.append(probs.argmax(axis=1))
        probabilities.append(probs)
    if not true_labels:
        raise EvaluationError(
            f"no labelled rows in split {split!r} under {images_dir}; ingest labelled data first"
        )
    return report_from_predictions(
        true_labels,
        np.concatenate(predicted),
        labels,
        probabilities=np.concatenate(probabilities),
        split=split,
    )


def collect_logits(
    logits_fn: Callable[[list[bytes]], np.ndarray],
    images_dir: Path,
    labels: Sequence[str],
    split: str = "val",
    batch_size: int = 256,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Logits and label indices of a split's labelled rows (for fitting a temperature).

    Rows whose label the model does not know are dropped (they cannot be calibrated);
    their labels are returned as the third item so the caller can report them.
    """
    index = {str(label): i for i, label in enumerate(labels)}
    chunks: list[np.ndarray] = []
    targets: list[int] = []
    dropped: list[str] = []
    for images, batch_labels in iter_labelled(images_dir, split, batch_size):
        keep = [i for i, label in enumerate(batch_labels) if label in index]
        dropped.extend(label for label in batch_labels if label not in index)
        if keep:
            chunks.append(np.asarray(logits_fn([images[i] for i in keep])))
            targets.extend(index[batch_labels[i]] for i in keep)
    if not chunks:
        raise EvaluationError(
            f"no labelled rows with known labels in split {split!r} under {images_dir}"
        )
    return np.concatenate(chunks), np.asarray(targets, dtype=np.int64), dropped
