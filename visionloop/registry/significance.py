"""Is a challenger's gain on the test split more than noise? A paired bootstrap.

Both models' predictions on the same test images are paired by ``image_id``. Each resample
draws the images with replacement — the same draw for both models — and computes the
primary metric (macro-F1 or accuracy) of each, so the resampled deltas (challenger minus
champion) carry the test split's noise but not the difference between two draws. The
percentile interval of those deltas at ``confidence`` is what the gate judges; with a fixed
seed and the images in ``image_id`` order it is the same on every run.

Pure numpy: a resample's confusion matrix is one ``bincount`` of (true, predicted) codes, and
macro-F1 averages over the classes present in the resample's true labels or predictions,
as :func:`~visionloop.training.evaluate.report_from_predictions` does.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from visionloop.training.evaluate import SUPPORTED_METRICS, ImagePredictions

#: Resamples drawn at a time (bounds memory: chunk x images indices).
CHUNK = 200


class PairingError(ValueError):
    """The two models' predictions are not on the same labelled images."""


@dataclass(frozen=True)
class PairedDelta:
    """The metric delta on the full split and its bootstrap interval."""

    metric: str
    delta: float  # challenger - champion, on every paired image
    low: float
    high: float
    confidence: float
    resamples: int
    seed: int
    images: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _by_id(predictions: ImagePredictions) -> dict[str, tuple[str, str]]:
    """``image_id -> (true label, predicted label)``."""
    pairs = zip(predictions.true_labels, predictions.predicted, strict=True)
    return dict(zip(predictions.image_ids, pairs, strict=True))


def paired_codes(
    challenger: ImagePredictions, champion: ImagePredictions
) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """True, challenger and champion class codes per image (``image_id`` order), and the
    number of classes; raises :class:`PairingError` unless both saw the same images and labels.
    """
    ours, theirs = _by_id(challenger), _by_id(champion)
    if ours.keys() != theirs.keys():
        only = len(ours.keys() - theirs.keys()), len(theirs.keys() - ours.keys())
        raise PairingError(
            f"not the same images: {only[0]} only in the challenger's predictions, "
            f"{only[1]} only in the champion's; evaluate both on one snapshot split"
        )
    ids = sorted(ours)
    if not ids:
        raise PairingError("no images to compare")
    changed = sum(ours[i][0] != theirs[i][0] for i in ids)
    if changed:
        raise PairingError(f"{changed} images have different true labels in the two evaluations")
    rows = [(*ours[i], theirs[i][1]) for i in ids]  # (true, challenger, champion)
    classes = sorted({label for row in rows for label in row})
    code = {label: k for k, label in enumerate(classes)}
    codes = np.asarray([[code[label] for label in row] for row in rows], dtype=np.int64)
    return codes[:, 0], codes[:, 1], codes[:, 2], len(classes)


def confusions(pairs: np.ndarray, draws: np.ndarray, classes: int) -> np.ndarray:
    """``(resamples, C, C)`` confusion matrices; ``pairs`` = true x C + predicted per image,
    ``draws`` = ``(resamples, images)`` image indices."""
    cells = classes * classes
    offsets = np.arange(len(draws), dtype=np.int64)[:, None] * cells
    counts = np.bincount((offsets + pairs[draws]).ravel(), minlength=len(draws) * cells)
    return counts.reshape(len(draws), classes, classes)


def metric_of(matrices: np.ndarray, metric: str) -> np.ndarray:
    """Macro-F1 or accuracy of each confusion matrix (rows true, columns predicted)."""
    hits = np.diagonal(matrices, axis1=1, axis2=2).astype(np.float64)
    if metric == "accuracy":
        return hits.sum(axis=1) / matrices.sum(axis=(1, 2))
    if metric != "macro_f1":
        raise ValueError(f"unsupported metric {metric!r}; use one of {list(SUPPORTED_METRICS)}")
    # 2TP + FP + FN = true count + predicted count; a class with neither is not present.
    denominator = matrices.sum(axis=2) + matrices.sum(axis=1)
    present = denominator > 0
    f1 = np.divide(2 * hits, denominator, out=np.zeros_like(hits), where=present)
    return f1.sum(axis=1) / present.sum(axis=1)


def paired_bootstrap(
    challenger: ImagePredictions,
    champion: ImagePredictions,
    metric: str,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> PairedDelta:
    """The delta of ``metric`` on the paired images and its percentile bootstrap interval."""
    if resamples < 1 or not 0 < confidence < 1:
        raise ValueError("resamples must be >= 1 and confidence in (0, 1)")
    true, new, old, classes = paired_codes(challenger, champion)
    ours, theirs = true * classes + new, true * classes + old
    images = len(true)

    def deltas(draws: np.ndarray) -> np.ndarray:
        return metric_of(confusions(ours, draws, classes), metric) - metric_of(
            confusions(theirs, draws, classes), metric
        )

    observed = float(deltas(np.arange(images)[None, :])[0])
    rng = np.random.default_rng(seed)
    chunks = []
    for start in range(0, resamples, CHUNK):
        size = min(CHUNK, resamples - start)
        chunks.append(deltas(rng.integers(0, images, size=(size, images))))
    alpha = 1 - confidence
    low, high = np.quantile(np.concatenate(chunks), [alpha / 2, 1 - alpha / 2])
    return PairedDelta(
        metric, observed, float(low), float(high), confidence, resamples, seed, images
    )


def recall_drop_lows(
    challenger: ImagePredictions,
    champion: ImagePredictions,
    *,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Per true class: the lower end of the paired bootstrap interval of its recall drop
    (champion minus challenger), resampling that class's test images (``image_id`` order).

    With a dozen test images of a class one image moves its recall by 8 %: a drop counts
    only when its whole interval lies beyond the tolerance, as a gain must for the metric.
    """
    ours, theirs = _by_id(challenger), _by_id(champion)
    rng = np.random.default_rng(seed)
    alpha = 1 - confidence
    lows = {}
    for label in sorted({true for true, _ in ours.values()}):
        ids = sorted(image for image, (true, _) in ours.items() if true == label)
        old = np.asarray([theirs[image][1] == label for image in ids], np.float64)
        new = np.asarray([ours[image][1] == label for image in ids], np.float64)
        draws = rng.integers(0, len(ids), size=(resamples, len(ids)))
        drops = old[draws].mean(axis=1) - new[draws].mean(axis=1)
        lows[label] = float(np.quantile(drops, alpha / 2))
    return lows
