"""Atomic batch commits: a batch is in the lake whole or not at all."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from visionloop.lake import commit as lake
from visionloop.lake import label_map, snapshot
from visionloop.lake.contract import split_for
from visionloop.lake.label_events import events_table, latest_labels
from visionloop.settings import SplitFractions, load_settings


def _stage_with_files(settings, batch_id: str, labels=("cat",)) -> lake.BatchStaging:
    staging = lake.stage(settings, batch_id)
    for name in ("images", "quarantine"):
        staging.table(name).mkdir()
        table = pa.table({"label": pa.array(list(labels), pa.string())})
        pq.write_table(table, staging.table(name) / "part-0.parquet")
    return staging


def test_commit_moves_tables_and_records_the_report(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    _stage_with_files(settings, "b1")
    lake.commit(settings, "b1", {"batch_id": "b1", "written": 1})
    assert (settings.images_dir / "batch_id=b1" / "part-0.parquet").exists()
    assert (settings.quarantine_dir / "batch_id=b1" / "part-0.parquet").exists()
    assert lake.committed_batches(settings) == [{"batch_id": "b1", "written": 1}]
    assert not (settings.staging_dir / "b1").exists()


def test_recover_discards_unfinished_and_rolls_forward_ready(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    _stage_with_files(settings, "killed")
    ready = _stage_with_files(settings, "ready")
    (ready.root / lake.READY_MARKER).write_text('{"batch_id": "ready"}')
    (ready.table("images")).rename(settings.lake_dir / "moved-early")  # simulate half a move
    settings.images_dir.mkdir(parents=True)
    (settings.lake_dir / "moved-early").rename(settings.images_dir / "batch_id=ready")
    assert lake.recover(settings) == ["ready"]
    assert not settings.staging_dir.joinpath("killed").exists()
    assert not (settings.images_dir / "batch_id=killed").exists()
    assert (settings.quarantine_dir / "batch_id=ready" / "part-0.parquet").exists()
    assert [r["batch_id"] for r in lake.committed_batches(settings)] == ["ready"]


def test_held_batch_stays_out_of_the_lake(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    _stage_with_files(settings, "bad")
    held = lake.hold(settings, "bad", {"batch_id": "bad"})
    assert (held / "images" / "part-0.parquet").exists()
    assert not lake.has_rows(settings)
    assert lake.recover(settings) == []


def test_label_map_appends_new_classes_and_never_reindexes(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    _stage_with_files(settings, "b1", labels=("dog", "cat", None))
    lake.commit(settings, "b1", {"batch_id": "b1"})
    assert label_map.read(settings.lake_dir) == ("cat", "dog")
    _stage_with_files(settings, "b2", labels=("ant", "dog", "bee"))
    lake.commit(settings, "b2", {"batch_id": "b2"})
    assert label_map.read(settings.lake_dir) == ("cat", "dog", "ant", "bee")  # appended
    configured = settings.model_copy(update={"classes": ["zebra", "cat", "yak"]})
    _stage_with_files(configured, "b3", labels=("cat", "eel"))
    lake.commit(configured, "b3", {"batch_id": "b3"})
    assert label_map.read(settings.lake_dir) == ("cat", "dog", "ant", "bee", "zebra", "yak", "eel")
    assert label_map.extended((), ["b", "a"], ["c", "a"]) == ("b", "a", "c")


def test_split_is_a_stable_function_of_the_id() -> None:
    fractions = SplitFractions(train=0.8, val=0.1, test=0.1)
    ids = [f"{index:064x}" for index in range(4000)]
    splits = [split_for(image_id, fractions) for image_id in ids]
    assert splits == [split_for(image_id, fractions) for image_id in ids]
    assert abs(splits.count("train") / len(ids) - 0.8) < 0.03
    assert abs(splits.count("test") / len(ids) - 0.1) < 0.02


def _event(event: str, image_id: str, label: str | None, source: str, day: int) -> dict:
    at = datetime(2024, 1, day, tzinfo=UTC)
    return {
        "event_id": event,
        "image_id": image_id,
        "label": label,
        "label_source": source,
        "labelled_at": at,
        "recorded_at": at,
    }


def test_latest_label_is_the_latest_recorded_event_of_each_image(tmp_path: Path) -> None:
    newer = [_event("e3", "a", "dog", "annotator", 3), _event("e5", "b", None, "annotator", 2)]
    older = [
        _event("e1", "a", "cat", "seed", 1),
        _event("e9", "b", "cow", "seed", 2),  # same time as e5: the greater event_id wins
        _event("e4", "c", "ant", "seed", 1),
    ]
    for name, rows in (("newer", newer), ("older", older)):
        pq.write_table(events_table(rows), tmp_path / f"{name}.parquet")
    paths = [tmp_path / "newer.parquet", tmp_path / "older.parquet"]
    latest = latest_labels(paths).sort_by("image_id")
    assert latest.column_names == ["image_id", "label", "label_source"]
    assert latest.to_pylist() == [
        {"image_id": "a", "label": "dog", "label_source": "annotator"},
        {"image_id": "b", "label": "cow", "label_source": "seed"},
        {"image_id": "c", "label": "ant", "label_source": "seed"},
    ]
    assert snapshot.latest_labels(paths) == {  # what a lake snapshot's labels resolve
        "a": ("dog", "annotator"),
        "b": ("cow", "seed"),
        "c": ("ant", "seed"),
    }
    only = latest_labels(paths, image_ids=pa.array(["c", "zzz"]))
    assert only["image_id"].to_pylist() == ["c"]
    assert latest_labels([]).num_rows == 0
    assert latest_labels(paths, image_ids=pa.array([], pa.string())).num_rows == 0


def _images(labels: tuple[str, ...]) -> pa.Table:
    ids = [f"{n:064d}" for n in range(len(labels))]
    return pa.table({"image_id": ids, "label": list(labels), "split": ["train"] * len(labels)})


def _commit_images(settings, batch_id: str, labels: tuple[str, ...]) -> Path:
    staging = lake.stage(settings, batch_id)
    staging.table("images").mkdir()
    pq.write_table(_images(labels), staging.table("images") / "part-0.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id})
    return settings.images_dir / f"batch_id={batch_id}" / "part-0.parquet"


def test_a_snapshot_reads_file_hashes_from_the_commit_manifest_not_the_files(
    tmp_path: Path, monkeypatch
) -> None:
    """A night's snapshot must not hash every image file of the lake (cost follows the night)."""
    settings = load_settings(data_home=tmp_path)
    part = _commit_images(settings, "b1", ("cat", "dog"))
    expected = snapshot.file_sha256(part)

    def no_hashing(path: Path) -> str:
        raise AssertionError(f"{path} was hashed again")

    with monkeypatch.context() as patched:
        patched.setattr(snapshot, "file_sha256", no_hashing)
        (described,) = snapshot.take(settings.lake_dir).files
    assert (described.sha256, described.rows, described.size) == (expected, 2, part.stat().st_size)

    # A file whose size no longer matches its manifest is measured afresh, never trusted.
    pq.write_table(_images(("cat", "dog", "cow")), part)
    (changed,) = snapshot.take(settings.lake_dir).files
    assert changed.rows == 3 and changed.sha256 == snapshot.file_sha256(part)


def test_maintenance_gives_partitions_committed_before_manifests_theirs(tmp_path: Path) -> None:
    from visionloop.lake.compaction import backfill_manifests

    settings = load_settings(data_home=tmp_path)
    partition = _commit_images(settings, "old", ("cat",)).parent
    (partition / snapshot.MANIFEST).unlink()  # as a lake written before manifests
    before = snapshot.take(settings.lake_dir).files  # still described, by reading the file
    assert backfill_manifests(settings) == 1
    assert snapshot.read_manifest(partition)["part-0.parquet"]["sha256"] == before[0].sha256
    assert backfill_manifests(settings) == 0
    assert snapshot.take(settings.lake_dir).files == before
