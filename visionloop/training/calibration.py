"""Temperature scaling: one scalar ``T`` fitted on validation logits by NLL minimisation.

Probabilities are ``softmax(logits / T)``; ``T > 1`` softens an over-confident model,
``T < 1`` sharpens an under-confident one. Accuracy never changes (argmax is unchanged).
Pure numpy/scipy, so it is cheap to unit-test and to run in any process.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import minimize_scalar

ECE_BINS = 15
# log(T) is searched in this interval: T in [~0.018, ~54.6] covers any sane network.
_LOG_T_BOUNDS = (-4.0, 4.0)


@dataclass(frozen=True)
class CalibrationReport:
    """The fitted temperature and what it did to the validation NLL and ECE."""

    temperature: float
    nll_before: float
    nll_after: float
    ece_before: float
    ece_after: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def _as_arrays(logits: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if logits.ndim != 2 or labels.ndim != 1 or len(logits) != len(labels):
        raise ValueError(
            f"expected logits (N, C) and labels (N,), got {logits.shape} and {labels.shape}"
        )
    if len(labels) and (labels.min() < 0 or labels.max() >= logits.shape[1]):
        raise ValueError(f"labels must be class indices in [0, {logits.shape[1]})")
    return logits, labels


def _log_softmax(scaled: np.ndarray) -> np.ndarray:
    shifted = scaled - scaled.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``, numerically stable."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return np.exp(_log_softmax(np.asarray(logits, dtype=np.float64) / temperature))


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the true classes under ``softmax(logits / T)``."""
    logits, labels = _as_arrays(logits, labels)
    if not len(labels):
        return float("nan")
    log_probs = _log_softmax(logits / temperature)
    return float(-log_probs[np.arange(len(labels)), labels].mean())


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS
) -> float:
    """ECE with ``n_bins`` equal-width confidence bins: sum_b |B|/N * |acc(B) - conf(B)|."""
    probabilities, labels = _as_arrays(probabilities, labels)
    if not len(labels):
        return float("nan")
    confidence = probabilities.max(axis=1)
    correct = (probabilities.argmax(axis=1) == labels).astype(np.float64)
    # Bin b holds confidences in (b/n, (b+1)/n]; confidence 0 (impossible for softmax) goes to 0.
    bins = np.clip(np.ceil(confidence * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    total = 0.0
    for b in range(n_bins):
        mask = bins == b
        if mask.any():
            total += mask.mean() * abs(correct[mask].mean() - confidence[mask].mean())
    return float(total)


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature minimising validation NLL (1.0 when there is nothing to fit on)."""
    logits, labels = _as_arrays(logits, labels)
    if len(labels) == 0 or logits.shape[1] < 2:
        return 1.0
    result = minimize_scalar(
        lambda log_t: nll(logits, labels, float(np.exp(log_t))),
        bounds=_LOG_T_BOUNDS,
        method="bounded",
        options={"xatol": 1e-4},
    )
    temperature = float(np.exp(result.x))
    # Never return something worse than doing nothing (flat or degenerate objectives).
    if not np.isfinite(temperature) or nll(logits, labels, temperature) > nll(logits, labels):
        return 1.0
    return temperature


def calibrate(logits: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> CalibrationReport:
    """Fit a temperature on (validation) logits and report NLL and ECE before and after."""
    logits, labels = _as_arrays(logits, labels)
    temperature = fit_temperature(logits, labels)
    return CalibrationReport(
        temperature=temperature,
        nll_before=nll(logits, labels),
        nll_after=nll(logits, labels, temperature),
        ece_before=expected_calibration_error(softmax(logits), labels, n_bins),
        ece_after=expected_calibration_error(softmax(logits, temperature), labels, n_bins),
        n=len(labels),
    )
