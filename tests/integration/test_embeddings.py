"""Embeddings and batch scoring as Spark jobs over the lake, and the Feast store on top.

Real Spark ``local[2]``, the packaged ImageNet embedder, a real (random-weight) classifier
saved as the served model, Feast's local provider with the SQLite online store and the
file offline store reading the lake's Parquet.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
import torch

from tests.lakes import commit_rows, image_rows, tiny_lake
from visionloop.embeddings import feature_store as features
from visionloop.embeddings import fingerprints
from visionloop.embeddings.embedder import EmbedderSource, embedding_job
from visionloop.embeddings.vectors import read_vectors
from visionloop.lake import commit as lake
from visionloop.lake.compaction import compact_table
from visionloop.lake.label_events import ANNOTATOR, event_id, events_table
from visionloop.lake.snapshot import take
from visionloop.preprocessing import image_options
from visionloop.registry.scoring import ScoringJob
from visionloop.registry.served_model import model_files, save_model
from visionloop.spark_jobs.infer_images import (
    Coverage,
    coverage,
    run_inference,
    todo_images,
)
from visionloop.training.models import create_model, model_spec

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory):
    home = tmp_path_factory.mktemp("embeddings") / "home"
    return tiny_lake(home, labelled=120, unlabelled=30, size=32, batches=1, spark_master="local[2]")


def _table(settings, name: str):
    return ds.dataset(settings.lake_dir / name, format="parquet", partitioning="hive").to_table()


def test_embeddings_are_incremental_by_image_and_version(spark, settings) -> None:
    source = EmbedderSource("tf_efficientnet_lite0", "packaged", 32, image_options(settings))
    job = embedding_job(settings, source)
    first = run_inference(spark, settings, take(settings.lake_dir), job)
    assert first.written == 150 and first.version == source.version
    assert first.record()["embedder_version"] == source.version  # the committed batch report
    schema = pq.read_schema(next((settings.lake_dir / "embeddings").glob("*/*.parquet")))
    assert str(schema.field("vector").type) == "fixed_size_list<element: float>[1280]"
    width = fingerprints.SPECTRUM_SIZE
    assert str(schema.field("fingerprint").type) == f"fixed_size_list<element: float>[{width}]"

    again = run_inference(spark, settings, take(settings.lake_dir), job)
    assert again.written == 0 and not (settings.staging_dir / again.batch_id).exists()

    commit_rows(settings, image_rows(20, size=32, offset=2000), batch_id="later")
    later = run_inference(spark, settings, take(settings.lake_dir), job)
    assert later.written == 20

    other = embedding_job(settings, dataclasses.replace(source, input_size=48))
    assert other.version != job.version
    assert run_inference(spark, settings, take(settings.lake_dir), other).written == 170
    table = _table(settings, "embeddings")
    counts = table.group_by("embedder_version").aggregate([("image_id", "count_distinct")])
    assert sorted(counts["image_id_count_distinct"].to_pylist()) == [170, 170]
    vectors = read_vectors(settings.lake_dir, job.version)
    assert len(vectors) == 170 and vectors.matrix.shape == (170, 1280)
    assert np.isfinite(vectors.matrix).all() and len(set(vectors.ids)) == 170

    # The same bytes embed to the same vector in the driver as in the Spark workers.
    snapshot = take(settings.lake_dir)
    image = next(snapshot.row_groups(["image_id", "image"])).table.slice(0, 1).to_pylist()[0]
    here = source.build().embed([image["image"]])[0]
    stored = read_vectors(settings.lake_dir, job.version, image_ids=[image["image_id"]])
    np.testing.assert_allclose(stored.matrix[0], here, rtol=1e-4, atol=1e-4)


def test_a_run_reads_only_the_image_partitions_no_run_of_its_version_covered(
    spark, tmp_path: Path
) -> None:
    settings = tiny_lake(
        tmp_path / "home",
        labelled=40,
        unlabelled=0,
        size=32,
        spark_master="local[2]",
        lake_maintenance={"min_files": 2},
    )
    job = embedding_job(
        settings, EmbedderSource("tf_efficientnet_lite0", "packaged", 32, image_options(settings))
    )
    first = run_inference(spark, settings, take(settings.lake_dir), job)
    assert set(first.covered) == {"b0", "b1"} and not first.compared
    assert first.summary()["covered_partitions"] == 2

    new_files = commit_rows(settings, image_rows(10, size=32, offset=3000), batch_id="later")
    snapshot = take(settings.lake_dir)
    done = coverage(settings.lake_dir, job)
    assert done.batches == {"b0", "b1"} and not done.unrecorded
    read = todo_images(spark, settings, snapshot, job, done).inputFiles()
    assert sorted(Path(uri).name for uri in read) == sorted(path.name for path in new_files)
    assert run_inference(spark, settings, snapshot, job).written == 10

    compact_table(settings, "embeddings", datetime.now(UTC))  # rows rewritten, reports kept
    assert coverage(settings.lake_dir, job).batches == {"b0", "b1", "later"}

    # Reports from before coverage was recorded: the next run compares ids, once.
    for path in (settings.lake_dir / "_batches").glob("*-embeddings-*.json"):
        record = json.loads(path.read_text())
        record.pop("covered", None)
        path.write_text(json.dumps(record))
    commit_rows(settings, image_rows(5, size=32, offset=4000), batch_id="latest")
    assert coverage(settings.lake_dir, job) == Coverage(frozenset(), unrecorded=True)
    compared = run_inference(spark, settings, take(settings.lake_dir), job)
    assert compared.written == 5 and compared.compared  # none of the 50 embedded twice
    assert not coverage(settings.lake_dir, job).unrecorded
    vectors = read_vectors(settings.lake_dir, job.version)
    assert len(vectors) == len(set(vectors.ids)) == take(settings.lake_dir).rows


def _served_model(settings, directory: Path) -> Path:
    torch.manual_seed(0)
    snapshot = take(settings.lake_dir)
    model = create_model("resnet10t", len(snapshot.classes))
    spec = model_spec(model, "resnet10t", snapshot.classes, 32)
    model_pt = directory / "model.pt"
    torch.save(spec.checkpoint(model.state_dict(), image_options(settings).to_dict()), model_pt)
    return save_model(directory / "served", model_pt, temperature=1.7)


def test_scoring_writes_calibrated_predictions_once_per_model_version(
    spark, settings, tmp_path: Path
) -> None:
    model_pt, temperature = model_files(_served_model(settings, tmp_path))
    assert temperature == pytest.approx(1.7)
    job = ScoringJob(str(model_pt), temperature, "vl-test", "1")
    snapshot = take(settings.lake_dir)
    assert run_inference(spark, settings, snapshot, job).written == snapshot.rows
    assert run_inference(spark, settings, snapshot, job).written == 0
    predictions = _table(settings, "predictions").to_pandas()
    probabilities = np.stack(predictions["probabilities"].to_numpy())
    assert np.allclose(probabilities.sum(axis=1), 1.0)
    ordered = np.sort(probabilities, axis=1)
    assert np.allclose(predictions["confidence"], ordered[:, -1])
    assert np.allclose(predictions["margin"], ordered[:, -1] - ordered[:, -2])
    labels = take(settings.lake_dir).classes
    assert (predictions["label"] == [labels[i] for i in probabilities.argmax(axis=1)]).all()

    rescored = dataclasses.replace(job, model_version="2")  # a new champion rescores all
    assert run_inference(spark, settings, snapshot, rescored).written == snapshot.rows


def _correct_a_label(settings, image_id: str, label: str, at: datetime) -> None:
    staging = lake.stage(settings, "relabel")
    staging.table("label_events").mkdir()
    event = {
        "event_id": event_id(ANNOTATOR, image_id, label, at),
        "image_id": image_id,
        "label": label,
        "label_source": ANNOTATOR,
        "annotator": "ann@example.com",
        "labelled_at": at,
        "recorded_at": at,
        "task_id": 1,
        "annotation_id": 7,
    }
    pq.write_table(events_table([event]), staging.table("label_events") / "part-0.parquet")
    lake.commit(settings, "relabel", {"batch_id": "relabel", "table": "label_events"})


def test_feature_store_serves_a_batch_and_builds_point_in_time_frames(settings) -> None:
    store = features.feature_store(settings)
    assert "image_embeddings" in features.apply(store, settings)
    assert set(features.materialise(store, settings)) >= {"image_embeddings", "image_labels"}

    embeddings = _table(settings, "embeddings").to_pandas()
    first = embeddings[embeddings["embedder_version"] == embeddings["embedder_version"].iloc[-1]]
    ids = [*first["image_id"].tolist()[:40][::-1], "0" * 64]
    online = features.online_features(store, ids)
    assert online["image_id"].tolist() == ids
    assert online["image_embeddings__vector"].iloc[-1] is None  # unknown id: nulls, not a shift
    expected = dict(zip(first["image_id"], first["vector"], strict=True))
    for image_id, vector in zip(ids[:-1], online["image_embeddings__vector"][:-1], strict=True):
        np.testing.assert_allclose(vector, expected[image_id], rtol=1e-6)
    predicted = _table(settings, "predictions").to_pandas()
    latest = predicted[predicted["model_version"] == "2"].set_index("image_id")["label"]
    assert (online["image_predictions__label"][:-1] == latest.loc[ids[:-1]].to_numpy()).all()

    # A label corrected later does not leak into a frame taken before the correction.
    labelled = next(
        row
        for part in take(settings.lake_dir).row_groups(["image_id", "label", "ingested_at"])
        for row in part.table.to_pylist()
        if row["label"] is not None
    )
    corrected_at = datetime.now(UTC)
    new_label = "pullover" if labelled["label"] != "pullover" else "coat"
    _correct_a_label(settings, labelled["image_id"], new_label, corrected_at)
    before, after = corrected_at - timedelta(milliseconds=500), corrected_at + timedelta(hours=1)
    entities = pd.DataFrame(
        {
            "image_id": [labelled["image_id"], labelled["image_id"], labelled["image_id"]],
            "event_timestamp": [before, after, before],  # a repeated key comes back twice
        }
    )
    frame = features.training_frame(
        store, entities, ["image_labels:label", "image_labels:label_source", "image_facts:split"]
    )
    assert frame["label"].tolist() == [labelled["label"], new_label, labelled["label"]]
    assert frame["label_source"].tolist() == ["seed", ANNOTATOR, "seed"]
    features.materialise(store, settings)
    now = features.online_features(store, [labelled["image_id"]], ["image_labels:label"])
    assert now["image_labels__label"].tolist() == [new_label]
