"""Promote flow: evaluate challenger and champion on the frozen test split, then decide."""

from __future__ import annotations

from typing import Any

from prefect import flow

from tasks.train import promote_model
from visionloop.parameters import PromoteParameters
from visionloop.settings import load_settings


@flow(name="promote", log_prints=True)
def promote(params: PromoteParameters | None = None) -> dict[str, Any]:
    """Promote the given version (default: the ``challenger`` alias) if it beats the champion."""
    params = params or PromoteParameters()
    return promote_model(load_settings(params.config), params.version)
