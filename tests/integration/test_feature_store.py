"""The nightly Feast refresh pushes only partitions not yet written online.

Synthetic lake tables (no Spark): each night commits one partition per table. Partitions
already pushed are overwritten with garbage bytes before the next refresh, so a refresh that
read them would fail; the online rows are compared with what Feast's own
``materialize_incremental`` gives on a copy of the same lake.
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from visionloop.embeddings import feature_store as features
from visionloop.lake import commit as lake
from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.compaction import compact_table
from visionloop.lake.contract import IMAGES_SCHEMA, PREDICTIONS_SCHEMA, embeddings_schema
from visionloop.lake.label_events import events_table
from visionloop.lake.snapshot import list_table
from visionloop.lake.versions import versioned_batch_id
from visionloop.settings import Settings, load_settings

START = datetime(2026, 11, 1, 2, tzinfo=UTC)
DIMENSIONS = 4
ALL_FEATURES = (
    "image_embeddings:vector",
    "image_embeddings:embedder_version",
    "image_predictions:model_version",
    "image_predictions:label",
    "image_predictions:confidence",
    "image_facts:split",
    "image_facts:width",
    "image_labels:label",
    "image_labels:label_source",
)


def _id(number: int) -> str:
    return f"{number:064x}"


def _write(settings: Settings, table: str, batch_id: str, rows: pa.Table) -> None:
    staging = lake.stage(settings, batch_id)
    staging.table(table).mkdir()
    pq.write_table(rows, staging.table(table) / "part-00000.parquet", row_group_size=64)
    lake.commit(settings, batch_id, {"batch_id": batch_id, "table": table})


def embed(settings: Settings, numbers: range, at: datetime, version: str) -> None:
    """A partition of embeddings of ``version`` for images ``numbers``, created ``at``."""
    rows = [
        {
            "image_id": _id(n),
            "embedder_version": version,
            "vector": [float(n), float(len(version)), at.day, 1.0],
            "fingerprint": [0.0, 1.0],
            "created_at": at,
        }
        for n in numbers
    ]
    table = pa.Table.from_pylist(rows, schema=embeddings_schema(DIMENSIONS, 2))
    _write(settings, "embeddings", versioned_batch_id("embeddings", version, at), table)


def score(settings: Settings, numbers: range, at: datetime, version: str) -> None:
    """A partition of predictions of model ``version`` for images ``numbers``, scored ``at``."""
    rows = [
        {
            "image_id": _id(n),
            "model_name": "classifier",
            "model_version": version,
            "label": f"class-{(n + int(version)) % 3}",
            "probabilities": [0.7, 0.2, 0.1],
            "confidence": 0.7 - n / 1000,
            "margin": 0.5,
            "entropy": 0.8,
            "scored_at": at,
        }
        for n in numbers
    ]
    table = pa.Table.from_pylist(rows, schema=PREDICTIONS_SCHEMA)
    _write(settings, "predictions", versioned_batch_id("predictions", version, at), table)


def ingest(settings: Settings, numbers: range, at: datetime) -> None:
    """Images ``numbers`` and their seed label events, in one batch."""
    batch_id = new_batch_id(None, at)
    images = pa.Table.from_pylist(
        [
            {
                "image_id": _id(n),
                "image": b"png",
                "label": f"class-{n % 3}",
                "split": ("train", "val", "test")[n % 3],
                "width": 28 + n,
                "height": 28,
                "source_format": "PNG",
                "ingested_at": at,
            }
            for n in numbers
        ],
        schema=IMAGES_SCHEMA,
    )
    staging = lake.stage(settings, batch_id)
    for table, rows in (("images", images), ("label_events", label(numbers, at, "seed"))):
        staging.table(table).mkdir()
        pq.write_table(rows, staging.table(table) / "part-00000.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id})


def label(numbers: range, at: datetime, source: str) -> pa.Table:
    return events_table(
        {
            "event_id": f"{source}-{n}-{at.isoformat()}",
            "image_id": _id(n),
            "label": f"{source}-{n % 4}",
            "label_source": source,
            "annotator": None if source == "seed" else "ann@example.com",
            "labelled_at": at,
            "recorded_at": at,
        }
        for n in numbers
    )


def relabel(settings: Settings, numbers: range, at: datetime) -> None:
    batch_id = new_batch_id("labels", at)
    _write(settings, "label_events", batch_id, label(numbers, at, "annotator"))


def night(settings: Settings, numbers: range, at: datetime, embedder: str = "e1") -> None:
    """What a night commits for new images ``numbers``: images, vectors, predictions."""
    ingest(settings, numbers, at)
    embed(settings, numbers, at + timedelta(minutes=5), embedder)
    score(settings, numbers, at + timedelta(minutes=10), "1")


def refresh(settings: Settings) -> list[str]:
    store = features.feature_store(settings)
    features.apply(store, settings)
    return features.materialise(store, settings)


def online(settings: Settings, numbers: range) -> pd.DataFrame:
    store = features.feature_store(settings)
    return features.online_features(store, [_id(n) for n in numbers], ALL_FEATURES)


def garble(paths: list[Path]) -> None:
    """Make files unreadable for real (root ignores permissions)."""
    for path in paths:
        path.write_bytes(b"not parquet any more " * 8)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return load_settings(data_home=tmp_path / "home", lake_maintenance={"min_files": 2})


def test_a_refresh_reads_only_partitions_not_yet_pushed(settings: Settings) -> None:
    night(settings, range(0, 20), START)
    assert set(refresh(settings)) == set(features.VIEWS)
    night(settings, range(20, 30), START + timedelta(days=1))
    refresh(settings)
    # Compacting pushed partitions makes a new one that holds only rows already online.
    assert compact_table(settings, "embeddings", START + timedelta(days=1, hours=3)) == 2
    pushed = [
        path
        for table in ("embeddings", "predictions", "images", "label_events")
        for path in list_table(settings.lake_dir, table)
    ]
    garble(pushed)

    night(settings, range(30, 40), START + timedelta(days=2))
    relabel(settings, range(0, 5), START + timedelta(days=2, hours=1))
    assert set(refresh(settings)) == set(features.VIEWS)

    served = online(settings, range(0, 40))
    assert served["image_embeddings__vector"].map(lambda v: v[0]).tolist() == list(range(40))
    assert served["image_facts__width"].tolist() == [28 + n for n in range(40)]
    assert served["image_predictions__model_version"].tolist() == ["1"] * 40
    labels = served["image_labels__label"].tolist()
    assert labels == [f"annotator-{n % 4}" if n < 5 else f"seed-{n % 4}" for n in range(40)]
    assert set(features.load_pushed(settings)["image_embeddings"]) == {
        path.parent.name.removeprefix("batch_id=")
        for path in list_table(settings.lake_dir, "embeddings")
    }


def test_a_partition_of_a_failed_night_is_pushed_the_next_night(settings: Settings) -> None:
    night(settings, range(0, 10), START)
    refresh(settings)
    night(settings, range(10, 20), START + timedelta(days=1))
    new = max(list_table(settings.lake_dir, "predictions"))
    good = new.read_bytes()
    garble([new])  # the night's refresh fails reading its predictions
    with pytest.raises(pa.ArrowInvalid):
        refresh(settings)
    assert online(settings, range(10, 20))["image_embeddings__vector"].notna().all()
    assert online(settings, range(10, 20))["image_predictions__label"].isna().all()

    new.write_bytes(good)
    garble([p for p in list_table(settings.lake_dir, "embeddings")])  # all pushed already
    refresh(settings)
    served = online(settings, range(0, 20))
    assert served["image_predictions__label"].tolist() == [
        f"class-{(n + 1) % 3}" for n in range(20)
    ]


def test_online_rows_equal_what_materialize_incremental_gives(
    settings: Settings, tmp_path: Path
) -> None:
    night(settings, range(0, 30), START)
    refresh(settings)
    # A new embedder and champion: newer rows for the same images; corrected labels.
    day = START + timedelta(days=1)
    embed(settings, range(0, 30), day, "e2")
    score(settings, range(0, 30), day, "2")
    relabel(settings, range(0, 5), day)
    refresh(settings)
    # A night whose refresh never ran: e1 vectors for new images, then compaction merges
    # them with the e1 rows of night one, already pushed and older than their e2 rows.
    night(settings, range(30, 40), START + timedelta(days=2), embedder="e1")
    assert compact_table(settings, "embeddings", START + timedelta(days=2, hours=3)) == 2
    night(settings, range(40, 50), START + timedelta(days=3), embedder="e2")
    relabel(settings, range(3, 8), START + timedelta(days=3, hours=1))
    refresh(settings)

    reference = load_settings(data_home=tmp_path / "reference")
    shutil.copytree(settings.lake_dir, reference.lake_dir)
    store = features.feature_store(reference)
    features.apply(store, reference)
    store.materialize_incremental(end_date=datetime.now(UTC), feature_views=list(features.VIEWS))

    ours, theirs = online(settings, range(0, 50)), online(reference, range(0, 50))
    assert (
        ours["image_embeddings__embedder_version"].tolist()
        == ["e2"] * 30 + ["e1"] * 10 + ["e2"] * 10
    )
    vectors = ours.pop("image_embeddings__vector"), theirs.pop("image_embeddings__vector")
    np.testing.assert_allclose(np.stack(vectors[0]), np.stack(vectors[1]))
    pd.testing.assert_frame_equal(ours, theirs)
