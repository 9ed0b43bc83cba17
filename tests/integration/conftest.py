"""Fixtures of the integration tests that several modules share."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.wheel import build_wheel


@pytest.fixture(scope="session")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project's wheel, built once per test run."""
    return build_wheel(tmp_path_factory.mktemp("wheel") / "dist")
