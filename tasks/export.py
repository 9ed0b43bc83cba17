"""Prefect task of the export stage: the new champion as ONNX (``visionloop.registry.export``)."""

from __future__ import annotations

from typing import Any

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.export import (
    ExportedModel,
    ExportParityError,
    export_version,
    parity_images,
)
from visionloop.registry.promotion import PromotionResult
from visionloop.registry.tracking import Tracking


def _unless_parity(task: Any, task_run: Any, state: Any) -> bool:
    """Retry an export unless it failed its parity check (a retry exports the same graph)."""
    return not isinstance(state.result(raise_on_failure=False), ExportParityError)


@task(retries=2, retry_delay_seconds=10, retry_condition_fn=_unless_parity, cache_policy=NONE)
def export_onnx(tracking: Tracking, snapshot: LakeSnapshot, version: str) -> ExportedModel:
    """``version`` as ONNX beside its pyfunc, its parity checked on the snapshot's test split.

    Idempotent: a version exported before is returned as it is (``reused``).
    """
    exported = export_version(tracking, version, parity_images(snapshot))
    parity = exported.parity
    create_table_artifact(
        key="onnx-export",
        table=[
            {"measure": "model_id", "value": exported.model_id},
            {"measure": "artifact_location", "value": exported.artifact_location},
            {"measure": "parity_images", "value": parity.images},
            {"measure": "parity_max_abs_diff", "value": f"{parity.max_abs_diff:.2e}"},
            {"measure": "parity_label_mismatches", "value": parity.label_mismatches},
            {"measure": "exported_earlier", "value": exported.reused},
        ],
        description=f"{exported.name} v{version} as ONNX, checked against its torch model",
    )
    return exported


def export_if_promoted(
    tracking: Tracking, snapshot: LakeSnapshot, promotion: PromotionResult | None
) -> tuple[ExportedModel | None, str | None]:
    """A promoted version's ONNX export, or why it failed (the champion stands either way);
    ``(None, None)`` when nothing was promoted."""
    if promotion is None or not promotion.decision.promoted:
        return None, None
    state = export_onnx(tracking, snapshot, promotion.challenger_version, return_state=True)
    if state.is_completed():
        return state.result(), None
    return None, str(state.result(raise_on_failure=False))
