"""Promote flow: evaluate challenger and champion on the lake's test split, then decide."""

from __future__ import annotations

from prefect import flow

from visionloop.parameters import PromoteParameters
from visionloop.registry.promotion import PromotionResult
from visionloop.settings import load_settings
from visionloop.tasks.train import connect_tracking, promote_model, snapshot_lake


@flow(name="promote", log_prints=True)
def promote(params: PromoteParameters = PromoteParameters()) -> PromotionResult:
    """Promote the given version (default: the ``challenger`` alias) if it beats the champion."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    return promote_model(tracking, settings, snapshot_lake(settings), params.version)
