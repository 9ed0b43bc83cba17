"""Prefect task of lake maintenance: compaction and retention of the side tables."""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.lake.compaction import Compacted, maintain
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def maintain_lake(settings: Settings, tracking: Tracking, embedder_version: str) -> list[Compacted]:
    """Retire outputs of versions nobody reads, merge small partitions, remove what was
    replaced longer ago than the grace period."""
    keep = {"embeddings": {embedder_version}, "predictions": tracking.aliased_versions()}
    results = maintain(settings, keep)
    create_table_artifact(
        key="lake-maintenance",
        table=[result.row() for result in results],
        description="Partitions before and after compaction, retired and removed",
    )
    return results
