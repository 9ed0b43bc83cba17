"""Shared fixtures: one Spark local session per test run, stopped at the end."""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PREFECT_HOME = pytest.StashKey[Path]()


def pytest_configure(config: pytest.Config) -> None:
    """Prefect state per test run, and a patient ephemeral API start (18-32 s here).

    Set before any test module is imported: Prefect reads its settings once, on import.
    """
    home = config.stash[PREFECT_HOME] = Path(tempfile.mkdtemp(prefix="vl-tests-prefect-"))
    os.environ["PREFECT_HOME"] = str(home)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def pytest_unconfigure(config: pytest.Config) -> None:
    if PREFECT_HOME in config.stash:
        shutil.rmtree(config.stash[PREFECT_HOME], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def _quiet_prefect_at_exit() -> Iterator[None]:
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
