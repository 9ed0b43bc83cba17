"""Shared fixtures: one Spark local session per test run, stopped at the end."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(scope="session", autouse=True)
def _isolated_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Prefect state per test run, and a patient ephemeral API start (18-32 s here)."""
    home: Path = tmp_path_factory.mktemp("prefect-home")
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    yield
    # Prefect stops its ephemeral API at interpreter exit, after pytest closed the streams
    # its log handler writes to; keep that last INFO line from ending in a logging error.
    logging.getLogger("prefect").setLevel(logging.WARNING)


@pytest.fixture(scope="session")
def spark() -> Iterator:
    from visionloop.settings import load_settings
    from visionloop.spark import spark_session

    session = spark_session(load_settings(spark_master="local[2]"), "visionloop-tests")
    yield session
    session.stop()
