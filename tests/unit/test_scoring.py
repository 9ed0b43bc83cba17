"""Uncertainty statistics of calibrated probabilities, and the prediction rows they become."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from visionloop.lake.contract import PREDICTIONS_SCHEMA
from visionloop.registry.scoring import prediction_table, uncertainty


def test_confidence_margin_and_entropy() -> None:
    probabilities = np.array([[0.7, 0.2, 0.1], [1 / 3, 1 / 3, 1 / 3], [0.0, 1.0, 0.0]])
    stats = uncertainty(probabilities)
    assert stats["index"].tolist() == [0, 0, 1]
    assert stats["confidence"] == pytest.approx([0.7, 1 / 3, 1.0])
    assert stats["margin"] == pytest.approx([0.5, 0.0, 1.0])
    expected = -(0.7 * np.log(0.7) + 0.2 * np.log(0.2) + 0.1 * np.log(0.1))
    assert stats["entropy"] == pytest.approx([expected, np.log(3), 0.0], abs=1e-9)


def test_prediction_rows_follow_the_contract() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    table = prediction_table(
        ["a", "b"], np.array([[0.9, 0.1], [0.4, 0.6]]), ["cat", "dog"], "m", "3", now
    )
    assert table.schema == PREDICTIONS_SCHEMA
    rows = table.to_pylist()
    assert [row["label"] for row in rows] == ["cat", "dog"]
    assert rows[1]["margin"] == pytest.approx(0.2) and rows[0]["model_version"] == "3"
