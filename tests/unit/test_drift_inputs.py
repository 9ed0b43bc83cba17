"""The drift reference: a seeded sample of the champion's training images, drawn once."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.lakes import tiny_lake
from visionloop.lake import commit as lake
from visionloop.lake.contract import embeddings_schema
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.lake.versions import versioned_batch_id
from visionloop.monitoring.drift import PREDICTED, UNSCORED
from visionloop.monitoring.inputs import _sample, drift_sets, file_rows, reference_rows
from visionloop.registry.scoring import prediction_table
from visionloop.settings import Settings

EMBEDDER, CHAMPION = "embedder-1", "3"


def _commit(settings: Settings, table: str, version: str, rows: pa.Table) -> None:
    batch_id = versioned_batch_id(table, version)
    staging = lake.stage(settings, batch_id)
    staging.table(table).mkdir()
    pq.write_table(rows, staging.table(table) / "part-00000.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id, "written": rows.num_rows})


def _embed_and_score(settings: Settings, image_ids: list[str]) -> None:
    vectors = np.random.default_rng(0).normal(size=(len(image_ids), 4)).astype(np.float32)
    now = datetime.now(UTC)
    rows = {
        "image_id": image_ids,
        "embedder_version": [EMBEDDER] * len(image_ids),
        "vector": vectors.tolist(),
        "fingerprint": vectors.tolist(),
        "created_at": [now] * len(image_ids),
    }
    _commit(settings, "embeddings", EMBEDDER, pa.table(rows, schema=embeddings_schema(4, 4)))
    probabilities = np.full((len(image_ids), 2), 0.5)
    predictions = prediction_table(image_ids, probabilities, ["a", "b"], "m", CHAMPION, now)
    _commit(settings, "predictions", CHAMPION, predictions)


def _sets(snapshot: LakeSnapshot, cache: Path, size: int = 40):
    batches = list(snapshot.batch_rows)
    return drift_sets(snapshot, EMBEDDER, CHAMPION, snapshot, batches, size, 0, cache)


def test_the_sample_is_drawn_from_ids_and_matches_a_sample_of_the_whole_split(
    tmp_path: Path,
) -> None:
    settings = tiny_lake(tmp_path, labelled=160, unlabelled=0)
    snapshot = take(settings.lake_dir)
    drawn = reference_rows(snapshot, 30, seed=4)
    whole = _sample(file_rows(snapshot.paths, "train"), 30, seed=4)
    assert drawn["image_id"].tolist() == whole["image_id"].tolist()
    assert drawn["image"].tolist() == whole["image"].tolist()
    assert set(drawn["split"]) == {"train"}


def test_the_reference_frame_is_kept_once_complete_and_read_back(tmp_path: Path) -> None:
    settings = tiny_lake(tmp_path, labelled=160, unlabelled=0)
    snapshot = take(settings.lake_dir)
    ids = file_rows(snapshot.paths, None, ["image_id"])["image_id"].tolist()
    cache = tmp_path / "references"
    _embed_and_score(settings, ids[: len(ids) // 2])
    partial = _sets(snapshot, cache).reference
    assert not cache.exists() or not any(cache.iterdir())  # images still unscored: not kept

    _embed_and_score(settings, ids[len(ids) // 2 :])
    first = _sets(snapshot, cache).reference
    assert len(first) > len(partial) and (first[PREDICTED] != UNSCORED).all()
    (kept,) = cache.iterdir()
    kept_at = kept.stat().st_mtime_ns

    again = _sets(snapshot, cache).reference
    assert again.equals(first) and kept.stat().st_mtime_ns == kept_at
    assert len(_sets(snapshot, cache, size=20).reference) == 20  # another size, another frame
    assert len(list(cache.iterdir())) == 2
