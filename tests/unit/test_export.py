"""The export's parity rule: probabilities within PARITY_ATOL and identical labels."""

from __future__ import annotations

import numpy as np
import pytest

from visionloop.registry.export import PARITY_ATOL, Parity, parity

TORCH = np.array([[0.70, 0.20, 0.10], [0.34, 0.33, 0.33]])


def test_parity_holds_within_the_tolerance() -> None:
    close = TORCH + np.array([[PARITY_ATOL / 2, -PARITY_ATOL / 2, 0.0], [0.0, 0.0, 0.0]])
    checked = parity(TORCH, close)
    assert checked == Parity(2, pytest.approx(PARITY_ATOL / 2), 0)
    assert checked.holds


def test_a_larger_difference_or_another_label_breaks_it() -> None:
    far = TORCH + np.array([[3 * PARITY_ATOL, -3 * PARITY_ATOL, 0.0], [0.0, 0.0, 0.0]])
    assert not parity(TORCH, far).holds
    # 0.34 vs 0.33 flips within 0.02: labels differ, however small the tolerance allowed.
    flipped = np.array([[0.70, 0.20, 0.10], [0.33, 0.34, 0.33]])
    checked = parity(TORCH, flipped)
    assert checked.label_mismatches == 1 and not checked.holds


def test_no_images_is_no_evidence_and_shapes_must_match() -> None:
    assert not parity(np.zeros((0, 3)), np.zeros((0, 3))).holds
    with pytest.raises(ValueError, match="shape"):
        parity(TORCH, TORCH[:, :2])
