"""Temperature scaling and ECE on synthetic logits with known miscalibration."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.training.calibration import (
    calibrate,
    expected_calibration_error,
    fit_temperature,
    nll,
    softmax,
)
from visionloop.training.evaluate import report_from_predictions


def _overconfident(n: int = 4000, classes: int = 5, scale: float = 6.0, seed: int = 0):
    """Logits from a calibrated model (temperature 1), then multiplied by ``scale``."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, size=n)
    logits = rng.normal(0.0, 1.0, size=(n, classes))
    logits[np.arange(n), labels] += 1.5  # a moderately accurate, calibrated model
    return logits * scale, labels


def test_temperature_reduces_nll_and_ece_on_overconfident_logits() -> None:
    logits, labels = _overconfident()
    report = calibrate(logits, labels)
    assert report.temperature > 3.0  # undoes most of the x6 sharpening
    assert report.nll_after < report.nll_before * 0.5
    assert report.ece_after < report.ece_before * 0.3
    assert report.ece_after < 0.05
    assert report.n == len(labels)


def test_temperature_sharpens_underconfident_logits() -> None:
    logits, labels = _overconfident(scale=0.25, seed=1)
    temperature = fit_temperature(logits, labels)
    assert temperature < 0.5
    assert nll(logits, labels, temperature) < nll(logits, labels)


def test_temperature_keeps_predictions() -> None:
    logits, labels = _overconfident(n=500)
    temperature = fit_temperature(logits, labels)
    assert (softmax(logits, temperature).argmax(1) == logits.argmax(1)).all()


def test_degenerate_inputs_give_identity() -> None:
    assert fit_temperature(np.zeros((0, 3)), np.zeros(0, dtype=int)) == 1.0
    assert fit_temperature(np.zeros((4, 1)), np.zeros(4, dtype=int)) == 1.0
    with pytest.raises(ValueError, match="labels must be class indices"):
        fit_temperature(np.zeros((2, 3)), np.array([0, 3]))


def test_ece_known_value() -> None:
    # Two bins used: confidence 0.9 (all correct) and 0.6 (half correct).
    probabilities = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    labels = np.array([0, 0, 0, 1])
    # |1.0 - 0.9| * 0.5 + |0.5 - 0.6| * 0.5 = 0.1
    assert expected_calibration_error(probabilities, labels) == pytest.approx(0.1)
    perfect = np.eye(3)[[0, 1, 2]]
    assert expected_calibration_error(perfect, np.array([0, 1, 2])) == pytest.approx(0.0)


def test_report_from_predictions_metrics() -> None:
    labels = ["a", "b", "c"]
    true = ["a", "a", "b", "b", "c", "z"]  # "z" is unknown to the model
    predicted = [0, 1, 1, 1, 2, 0]
    report = report_from_predictions(true, predicted, labels)
    assert report.labels == ["a", "b", "c", "z"]
    assert report.n == 6
    assert report.accuracy == pytest.approx(4 / 6)
    assert report.per_class["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert report.per_class["b"]["precision"] == pytest.approx(2 / 3)
    assert report.per_class["b"]["recall"] == 1.0
    assert report.per_class["z"]["recall"] == 0.0
    assert report.confusion[0] == [1, 1, 0, 0]
    assert report.confusion[3] == [1, 0, 0, 0]
    expected_f1 = np.mean([0.5, 0.8, 1.0, 0.0])
    assert report.macro_f1 == pytest.approx(expected_f1)
    unseen = report_from_predictions(["a"], [0], labels)
    assert unseen.per_class["c"]["recall"] is None  # no true examples
