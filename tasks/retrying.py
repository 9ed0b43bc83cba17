"""When a task's retry can help: never for input the same retry would reject again."""

from __future__ import annotations

from typing import Any

from visionloop.ingest.landing import LandingError
from visionloop.settings import SettingsError

#: Errors about the input itself (a missing landing path, invalid settings): deterministic.
PERMANENT = (LandingError, SettingsError)


def transient_only(task: Any, task_run: Any, state: Any) -> bool:
    """``retry_condition_fn``: retry unless the failure is one a retry would repeat."""
    error = state.result(raise_on_failure=False)
    return not isinstance(error, PERMANENT)
