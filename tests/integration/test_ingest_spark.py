"""The Spark preprocessing job on Spark local, read back with pyarrow and the tfrecord package."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import shutil
import signal
import struct
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq
import pytest
from PIL import Image
from tfrecord.reader import tfrecord_loader
from tfrecord.writer import TFRecordWriter

from tests.corpus import MAX_FILE_BYTES, build_bad_corpus, leases_held, write_escaping_manifest
from tests.waiting import wait_for
from visionloop.ingest.landing import LandingSource
from visionloop.lake import commit as lake
from visionloop.lake import label_map
from visionloop.lake.contract import IMAGES_SCHEMA, QUARANTINE_SCHEMA
from visionloop.lake.label_events import events_table
from visionloop.parameters import SAMPLE_DIR
from visionloop.settings import REPO_ROOT, load_settings
from visionloop.spark_jobs.preprocess_images import run_batch, stage_batch

pytestmark = pytest.mark.slow


SAMPLE_CLASSES = [path.name for path in (SAMPLE_DIR / "labelled").iterdir()]


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(
        data_home=tmp_path / "home",
        spark_master="local[2]",
        image_size=32,
        parquet_row_group_rows=64,
        tfrecord_shard_rows=100,
        spark_partitions=4,
        max_image_file_bytes=MAX_FILE_BYTES,
    )


@pytest.fixture
def sample_landing(tmp_path: Path) -> Path:
    """240 labelled sample images (24 per class) and 40 unlabelled ones."""
    landing = tmp_path / "landing"
    for class_dir in sorted((SAMPLE_DIR / "labelled").iterdir()):
        target = landing / "labelled" / class_dir.name
        target.mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[:24]:
            shutil.copy(image, target)
    (landing / "unlabelled").mkdir()
    for image in sorted((SAMPLE_DIR / "unlabelled").glob("*.png"))[:40]:
        shutil.copy(image, landing / "unlabelled")
    return landing


def _sources(landing: Path) -> list[LandingSource]:
    return [
        LandingSource(path=str(landing / "labelled"), layout="imagefolder"),
        LandingSource(path=str(landing / "unlabelled"), layout="unlabelled"),
    ]


def _images(settings) -> pa.Table:
    return ds.dataset(settings.images_dir, format="parquet", partitioning="hive").to_table()


def _read_verified_frames(path: Path) -> int:
    """Walk a TFRecord file frame by frame, checking both masked CRCs; returns the count."""
    data, offset, count = path.read_bytes(), 0, 0
    while offset < len(data):
        length_bytes = data[offset : offset + 8]
        (length,) = struct.unpack("<Q", length_bytes)
        assert data[offset + 8 : offset + 12] == TFRecordWriter.masked_crc(length_bytes)
        record = data[offset + 12 : offset + 12 + length]
        assert data[offset + 12 + length : offset + 16 + length] == TFRecordWriter.masked_crc(
            record
        )
        offset += 16 + length
        count += 1
    return count


def test_sample_batch_lands_in_parquet_and_tfrecord(spark, settings, sample_landing) -> None:
    report = run_batch(spark, settings, _sources(sample_landing))
    assert report.listed == report.read == 280 and report.skipped == 0
    assert report.written + report.duplicates + report.quarantined == 280
    assert report.quarantined == 0

    table = _images(settings)
    assert table.num_rows == report.written
    assert set(IMAGES_SCHEMA.names) | {"batch_id"} == set(table.column_names)
    assert len(set(table.column("image_id").to_pylist())) == table.num_rows
    assert table.column("label").null_count == 40
    image = Image.open(io.BytesIO(table.column("image")[0].as_py()))
    assert (image.size, image.mode, image.format) == ((32, 32), "RGB", "PNG")

    for part in settings.images_dir.glob("batch_id=*/*.parquet"):
        metadata = pq.ParquetFile(part).metadata
        assert all(metadata.row_group(i).num_rows <= 64 for i in range(metadata.num_row_groups))
        assert not any(pa.types.is_nested(field.type) for field in pq.read_schema(part))

    shards = sorted(settings.tfrecord_dir.glob("batch_id=*/*.tfrecord"))
    assert {shard.name.split("-")[0] for shard in shards} <= {"train", "val", "test"}
    assert sum(_read_verified_frames(shard) for shard in shards) == table.num_rows
    example = next(iter(tfrecord_loader(str(shards[0]), None)))
    assert example["image/height"][0] == example["image/width"][0] == 32
    assert len(bytes(example["image/id"]).decode()) == 64
    assert Image.open(io.BytesIO(bytes(example["image/encoded"]))).size == (32, 32)


def test_a_second_ingest_reads_only_new_and_replaced_files(
    spark, settings, sample_landing, tmp_path: Path
) -> None:
    """The arrival ledger: placed files are skipped unopened; a file replaced in place (new
    size or mtime) and a new file are read; the same content at a new path is a duplicate."""
    first = run_batch(spark, settings, _sources(sample_landing))
    again = run_batch(spark, settings, _sources(sample_landing))
    assert (again.listed, again.skipped, again.read) == (280, 280, 0)
    assert len(lake.committed_batches(settings)) == 1  # a night with nothing new commits nothing

    unlabelled = sorted((sample_landing / "unlabelled").glob("*.png"))
    replaced, touched = unlabelled[0], unlabelled[1]
    replaced.write_bytes(sorted((sample_landing / "labelled" / "bag").iterdir())[0].read_bytes())
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    shutil.copy(unlabelled[2], sample_landing / "unlabelled" / "copy-at-a-new-path.png")
    (sample_landing / "unlabelled" / "broken.png").write_bytes(b"not an image")
    later = run_batch(spark, settings, _sources(sample_landing))
    assert (later.listed, later.skipped, later.read) == (282, 278, 4)
    # the replacement holds a labelled image's bytes: content the lake has, so a duplicate
    assert (later.written, later.duplicates, later.quarantined) == (0, 3, 1)
    assert later.quarantined_by_reason == {"not_an_image": 1}
    assert _images(settings).num_rows == first.written

    ledger = ds.dataset(settings.lake_dir / "arrivals", format="parquet").to_table().to_pylist()
    assert len(ledger) == 284  # every file read, once per read, with its outcome
    assert {row["outcome"] for row in ledger} == {"new", "duplicate", "quarantine"}
    broken = [row for row in ledger if row["source_uri"].endswith("broken.png")]
    assert broken[0]["reason"] == "not_an_image" and broken[0]["size"] == len(b"not an image")
    assert run_batch(spark, settings, _sources(sample_landing)).read == 0


def test_bad_corpus_is_quarantined_with_reasons(spark, settings, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus"
    entries = build_bad_corpus(corpus)
    with leases_held(corpus) as leased:  # cannot be opened while the batch runs, even by root
        report = run_batch(spark, settings, [LandingSource(path=str(corpus), layout="imagefolder")])
    assert report.read == report.written + report.duplicates + report.quarantined

    quarantine = ds.dataset(settings.quarantine_dir, format="parquet", partitioning="hive")
    assert set(QUARANTINE_SCHEMA.names) | {"batch_id"} == set(quarantine.schema.names)
    rows = {
        Path(row["uri"]).relative_to(corpus).as_posix(): row
        for row in quarantine.to_table().to_pylist()
    }
    reasons = {relpath: row["reason"] for relpath, row in rows.items()}
    lake_uris = {
        Path(uri).relative_to(corpus).as_posix()
        for uri in _images(settings).column("source_uri").to_pylist()
    }
    for entry in entries:
        if entry.expected == "ok":
            assert entry.relpath in lake_uris, entry
        elif entry.expected == "duplicate":
            assert entry.relpath not in lake_uris and entry.relpath not in reasons, entry
        else:
            assert reasons.get(entry.relpath) == entry.expected, entry
    for path in leased:  # the worker's open failed, and the quarantine row says how
        detail = rows[path.relative_to(corpus).as_posix()]["detail"]
        assert detail == f"cannot read {path}: {os.strerror(errno.EAGAIN)}"


def test_manifest_entries_outside_the_root_are_quarantined(spark, settings, tmp_path) -> None:
    corpus = tmp_path / "corpus"
    build_bad_corpus(corpus)
    manifest = write_escaping_manifest(corpus)
    report = run_batch(spark, settings, [LandingSource(path=str(manifest), layout="manifest")])
    reasons = report.quarantined_by_reason
    assert reasons.get("outside_landing_root", 0) >= 2
    assert reasons.get("missing_file", 0) >= 1
    assert report.read == report.written + report.duplicates + report.quarantined


def test_a_batch_interrupted_after_its_ready_marker_is_rolled_forward(
    spark, settings, sample_landing
) -> None:
    """Real Spark output staged, the marker written, one table moved, then a crash."""
    report = stage_batch(spark, settings, _sources(sample_landing))
    batch_id = report.batch_id
    staging = lake.BatchStaging(settings.staging_dir / batch_id)
    (staging.root / lake.READY_MARKER).write_text(report.model_dump_json())
    moved = lake.partition_dir(settings, "images", batch_id)
    moved.parent.mkdir(parents=True)
    staging.table("images").rename(moved)
    assert not label_map.read(settings.lake_dir)  # the crash came before the map was written

    assert lake.recover(settings) == [batch_id]
    assert _images(settings).num_rows == report.written == 280
    tables = {"duplicates", "images", "quarantine", "tfrecord", "arrivals"}
    assert all(lake.partition_dir(settings, name, batch_id).is_dir() for name in tables)
    assert label_map.read(settings.lake_dir) == tuple(sorted(SAMPLE_CLASSES))
    assert [r["batch_id"] for r in lake.committed_batches(settings)] == [batch_id]
    assert not (settings.staging_dir / batch_id).exists()


def test_tfrecord_class_indices_are_the_lake_label_map_across_batches(
    spark, settings, sample_landing, tmp_path: Path
) -> None:
    """A later batch with new classes appends them; earlier indices never change."""
    first = tmp_path / "first"
    for name in ("trouser", "bag"):
        shutil.copytree(sample_landing / "labelled" / name, first / name)
    run_batch(spark, settings, [LandingSource(path=str(first), layout="imagefolder")])
    assert label_map.read(settings.lake_dir) == ("bag", "trouser")
    run_batch(spark, settings, _sources(sample_landing))
    classes = label_map.read(settings.lake_dir)
    assert classes[:2] == ("bag", "trouser") and set(classes) == set(SAMPLE_CLASSES)
    for shard in settings.tfrecord_dir.glob("batch_id=*/*.tfrecord"):
        for example in tfrecord_loader(str(shard), None):
            text = bytes(example["image/class/text"]).decode()
            if text:
                assert example["image/class/label"][0] == classes.index(text), shard


def test_killed_batch_leaves_no_partial_files(settings, sample_landing, tmp_path) -> None:
    """Kill spark-submit style runs mid-batch; the next run recovers and counts each file once."""
    config = settings.save(tmp_path / "config")
    command = [
        sys.executable,
        str(REPO_ROOT / "spark_jobs" / "preprocess_images.py"),
        "--config",
        str(config),
        "--source",
        str(sample_landing / "labelled"),
    ]
    job = subprocess.Popen(command, start_new_session=True, cwd=REPO_ROOT)
    staged = lambda: any(settings.staging_dir.glob("*/processed"))  # noqa: E731
    wait_for(staged, 120, "the job staged nothing", job)
    os.killpg(job.pid, signal.SIGKILL)
    job.wait()
    assert any(settings.staging_dir.iterdir()), "the job was killed before staging anything"
    assert not lake.has_rows(settings)

    finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
    assert finished.returncode == 0, finished.stderr[-2000:]
    assert not settings.staging_dir.exists() or not any(settings.staging_dir.iterdir())
    assert _images(settings).num_rows == 240
    assert len(lake.committed_batches(settings)) == 1


def test_a_file_annotators_already_labelled_comes_back_as_a_duplicate(
    spark, settings, sample_landing, tmp_path: Path
) -> None:
    """The lake's label is the latest agreed label event, so an annotator's label counts."""
    pool = sorted((sample_landing / "unlabelled").glob("*.png"))[:2]
    run_batch(spark, settings, [LandingSource(path=str(sample_landing / "unlabelled"))])
    annotated = hashlib.sha256(pool[0].read_bytes()).hexdigest()
    now = datetime.now(UTC)
    events = events_table(
        [
            {
                "event_id": "annotated-in-a-test",
                "image_id": annotated,
                "label": "bag",
                "label_source": "annotator",
                "annotator": "ann@example.org",
                "labelled_at": now,
                "recorded_at": now,
            }
        ]
    )
    staging = lake.stage(settings, "20261202T000000Z-labels")
    staging.table("label_events").mkdir()
    pq.write_table(events, staging.table("label_events") / "part-0.parquet")
    lake.commit(settings, "20261202T000000Z-labels", {"batch_id": "20261202T000000Z-labels"})

    labelled = tmp_path / "labelled"
    for label, path in zip(("bag", "coat"), pool, strict=True):
        (labelled / label).mkdir(parents=True)
        shutil.copy(path, labelled / label)
    report = run_batch(spark, settings, [LandingSource(path=str(labelled), layout="imagefolder")])
    assert report.duplicates == 1  # labelled bag by annotators already: the same label
    assert report.quarantined_by_reason == {"label_for_existing_image": 1}  # never labelled
