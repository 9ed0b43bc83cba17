"""Prefect tasks of the embed stage: embeddings, the similar-image index, the leakage check
and the feature store."""

from __future__ import annotations

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.alerts import emit_leakage
from visionloop.embeddings import feature_store as features
from visionloop.embeddings.embedder import current_embedder, embedding_job
from visionloop.embeddings.index import LakeIndexes, updated_indexes
from visionloop.embeddings.leakage import check_batches, pairs_markdown, pairs_table
from visionloop.embeddings.results import IndexUpdate, LeakageResult
from visionloop.lake.exclusions import exclude
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.quality.gate import enforce, leakage_gate
from visionloop.registry.tracking import Tracking
from visionloop.settings import Settings
from visionloop.spark_jobs.infer_images import InferenceReport, run_inference
from visionloop.web import report_url


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def embedder_version(settings: Settings, tracking: Tracking) -> str:
    return current_embedder(settings, tracking).version


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def embed_images(
    spark: SparkSession, settings: Settings, snapshot: LakeSnapshot, tracking: Tracking
) -> InferenceReport:
    """Vectors for the snapshot's images that have none for the current embedder version."""
    job = embedding_job(settings, current_embedder(settings, tracking))
    report = run_inference(spark, settings, snapshot, job)
    create_table_artifact(
        key="embeddings",
        table=[{"measure": key, "value": str(value)} for key, value in report.summary().items()],
        description=f"Embeddings, version {job.version}",
    )
    get_run_logger().info("embedded %d images (%s)", report.written, job.version)
    return report


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def update_index(settings: Settings, embedder_version: str) -> IndexUpdate:
    """Grow (or build) the persisted indexes of the embedder version by the partitions of
    vectors they do not hold yet."""
    indexes, added = updated_indexes(
        settings.index_dir, settings.lake_dir, embedder_version, settings.similarity
    )
    return IndexUpdate(embedder_version, len(indexes.vectors), added)


@task(retries=1, retry_delay_seconds=10, cache_policy=NONE)
def check_leakage(
    settings: Settings, snapshot: LakeSnapshot, embedder_version: str, batch_ids: list[str]
) -> LeakageResult:
    """Near-duplicates and cross-split leakage of the batches' images; the expectation on the
    leakage rate (critical when ``leakage.severity`` says so) stops the flow."""
    indexes = LakeIndexes.load(settings.index_dir, embedder_version, settings.similarity)
    found = check_batches(snapshot, indexes, batch_ids, settings.leakage)
    name = "-".join(sorted(batch_ids))[:120] or "lake"
    report = settings.reports_dir / "leakage" / f"{name}.parquet"
    report.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pairs_table(found.pairs, embedder_version), report)
    summary = found.summary.to_dict()
    copies = found.leaked_copies() if settings.leakage.exclude else []
    summary["excluded"] = len(copies)
    excluded = exclude(
        settings, copies, by="leakage check", reason=f"copies across splits in {report}"
    )
    gate = leakage_gate(settings, name, summary)
    pairs = report_url(settings, report)
    create_table_artifact(key="leakage", table=[summary], description=f"Pairs: [{pairs}]({pairs})")
    create_markdown_artifact(
        key="leakage-pairs", markdown=pairs_markdown(found.pairs, found.images)
    )
    emit_leakage(gate, report_url(settings, gate.data_docs))
    enforce(gate)
    return LeakageResult(found.summary, len(copies), report, gate, excluded)


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def refresh_feature_store(settings: Settings) -> list[str]:
    """``feast apply`` the definitions, then push the partitions not yet written online."""
    store = features.feature_store(settings)
    features.apply(store, settings)
    return features.materialise(store, settings)
