"""Promote flow: evaluate challenger and champion on the lake's test split, decide, and
export a new champion to ONNX (as the train flow does after a promotion)."""

from __future__ import annotations

from dataclasses import dataclass

from prefect import flow

from visionloop.parameters import PromoteParameters
from visionloop.registry.export import ExportedModel
from visionloop.registry.promotion import PromotionResult
from visionloop.settings import load_settings
from visionloop.tasks.export import export_if_promoted
from visionloop.tasks.train import connect_tracking, promote_model, snapshot_lake


@dataclass(frozen=True)
class PromoteResult:
    """The decision and, when it made a champion, its ONNX export (or why that failed: the
    champion stands either way)."""

    promotion: PromotionResult
    export: ExportedModel | None = None
    export_error: str | None = None


@flow(name="promote", log_prints=True)
def promote(params: PromoteParameters = PromoteParameters()) -> PromoteResult:
    """Promote the given version (default: the ``challenger`` alias) if it beats the champion."""
    settings = load_settings(params.config)
    tracking = connect_tracking(settings)
    snapshot = snapshot_lake(settings)
    promotion = promote_model(tracking, settings, snapshot, params.version)
    return PromoteResult(promotion, *export_if_promoted(tracking, snapshot, promotion))
