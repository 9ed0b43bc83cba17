"""The nightly flow in-process: Spark ingest → GX gate → torchrun training → promotion.

Also: a night with nothing new reads no file twice; drift without new labels flags the
night and sends the drifted images to annotators first; a failing gate holds the batch and
nothing trains; an operator override is recorded on the model; a batch committed while a
model trains changes nothing that model is evaluated or described on.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image, ImageOps
from prefect.client.orchestration import get_client

from tests.integration.test_train_flow import TINY_TRAINING
from tests.waiting import wait_for
from visionloop.cli import print_summary
from visionloop.flows.nightly import nightly
from visionloop.ingest.landing import LandingSource
from visionloop.lake.commit import recent_ingests
from visionloop.lake.snapshot import LakeSnapshot, take
from visionloop.parameters import SAMPLE_DIR, NightlyParameters
from visionloop.quality.gate import QualityGateError
from visionloop.registry.tracking import Tracking
from visionloop.settings import load_settings
from visionloop.spark_jobs.preprocess_images import run_batch

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _landing(tmp_path: Path, per_class: int = 60, start: int = 0, name: str = "landing") -> Path:
    landing = tmp_path / name
    for label in ("trouser", "bag"):
        (landing / label).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / "labelled" / label).glob("*.png"))[start:][:per_class]:
            shutil.copy(image, landing / label)
    return landing


def _settings(tmp_path: Path, **overrides):
    defaults = {"training": TINY_TRAINING, "promotion": {"first_model_floor": 0.0}}
    return load_settings(
        data_home=tmp_path / "home", spark_master="local[2]", image_size=32, **defaults | overrides
    )


def test_nightly_ingests_trains_promotes_then_skips(tmp_path: Path, capsys) -> None:
    settings = _settings(tmp_path)
    config = settings.save(tmp_path / "config")
    source = LandingSource(path=str(_landing(tmp_path)), layout="imagefolder")
    params = NightlyParameters(sources=[source], config=str(config))

    first = nightly(params)
    assert first.ingest.report.written == 120
    assert first.ingest.gate.passed
    assert first.train.promotion.decision.promoted
    tracking = Tracking.connect(settings)
    version = tracking.alias_version("champion")
    assert version == first.train.challenger.version.version == first.train.champion.version
    tags = tracking.version_tags(version)
    assert tags["lineage.expectations.passed"] == "true"
    assert first.ingest.report.batch_id in tags["lineage.batch_ids"]
    assert first.embed.embeddings.written == first.embed.index.vectors == 120
    assert first.embed.leakage.summary.images == 120 and first.score.version == version

    print_summary(settings, first)  # the CLI's summary reads the typed results
    summary = capsys.readouterr().out
    assert f"promotion:          v{version} promoted" in summary
    assert f"champion:           {settings.registered_model_name} v{version}" in summary

    # nothing new arrived: no file is read twice. The result persists as Prefect stores it.
    state = nightly.with_options(persist_result=True)(params, return_state=True)
    second = state.result()
    with get_client(sync_client=True) as client:
        stored = client.read_flow_run(state.state_details.flow_run_id).state.result()
    assert (stored.ingest.report, stored.train.plan, stored.decision, stored.handoff) == (
        second.ingest.report,
        second.train.plan,
        second.decision,
        second.handoff,
    )
    report = second.ingest.report
    assert (report.listed, report.skipped, report.read) == (120, 120, 0)
    assert second.ingest.batch_ids == [] and second.embed.leakage is None
    assert second.drift.note == "no new images tonight" and second.drift.drifted is None
    assert not second.train.trained and second.train.plan.action == "skip", second.train.plan
    assert "since champion v1" in second.train.plan.reason
    assert second.decision.action == "skip"
    assert recent_ingests(settings, days=1) == [first.ingest.report.batch_id]


def test_a_failing_gate_holds_the_batch_and_nothing_trains_until_overridden(
    tmp_path: Path,
) -> None:
    settings = _settings(tmp_path, quality={"max_quarantine_rate": 0.01})
    config = settings.save(tmp_path / "config")
    landing = _landing(tmp_path, per_class=40)
    for number in range(3):  # 3 of 83 files quarantined: over the 1 % the settings allow
        (landing / "bag" / f"notes-{number}.png").write_text("not a picture")
    source = LandingSource(path=str(landing), layout="imagefolder")

    with pytest.raises(QualityGateError, match="quarantine_rate") as failure:
        nightly(NightlyParameters(sources=[source], config=str(config)))
    assert "--accept-failing-batch" in str(failure.value)
    held = list((settings.lake_dir / "_held").iterdir())
    assert len(held) == 1 and (held[0] / "images").is_dir() and (held[0] / "report.json").exists()
    assert not take(settings.lake_dir).files  # nothing reached the lake
    tracking = Tracking.connect(settings)
    assert tracking.client.search_registered_models() == []  # and nothing trained

    accepted = nightly(
        NightlyParameters(sources=[source], config=str(config), accept_failing_batch=True)
    )
    assert accepted.ingest.gate.overridden and accepted.train.trained
    version = accepted.train.challenger.version.version
    tags = tracking.version_tags(version)
    assert tags["lineage.expectations.overridden"] == "true"
    assert tags["lineage.expectations.passed"] == "true"
    run = tracking.client.get_run(
        tracking.client.get_model_version(tracking.model_name, version).run_id
    )
    assert run.data.tags["lineage.expectations.overridden"] == "true"


def test_a_batch_committed_during_training_changes_nothing_the_model_saw(
    spark, tmp_path: Path
) -> None:
    """``visionloop train`` runs in its own process; a real ingest commits while it trains.

    The trainer is paused (SIGSTOP) once it has pinned its snapshot and resumed after the
    ingest committed, so the commit lands mid-training however fast either side is.
    """
    settings = _settings(
        tmp_path, training={**TINY_TRAINING, "epochs": 6}, parquet_row_group_rows=32
    )
    run_batch(spark, settings, [LandingSource(path=str(_landing(tmp_path)), layout="imagefolder")])
    before = take(settings.lake_dir)
    config = settings.save(tmp_path / "config")
    env = os.environ | {"PREFECT_HOME": str(tmp_path / "prefect")}
    command = [str(BIN / "visionloop"), "train", "--config", str(config)]
    with (tmp_path / "train.log").open("w") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
        pinned = lambda: list(settings.runs_dir.glob("train-*/snapshot.json"))  # noqa: E731
        wait_for(pinned, 300, "training never started", process)
        os.killpg(process.pid, signal.SIGSTOP)  # the trainer and its torchrun ranks
        try:
            later = _landing(tmp_path, per_class=30, start=60, name="later")
            sources = [LandingSource(path=str(later), layout="imagefolder")]
            report = run_batch(spark, settings, sources)
        finally:
            os.killpg(process.pid, signal.SIGCONT)
        assert process.wait(timeout=900) == 0, (tmp_path / "train.log").read_text()[-3000:]

    run_dir = pinned()[0].parent
    used = LakeSnapshot.load(run_dir / "snapshot.json")
    after = take(settings.lake_dir)
    assert used.id == before.id != after.id
    assert after.labelled_count("test") > used.labelled_count("test")

    tracking = Tracking.connect(settings)
    version = tracking.alias_version("champion")
    model_version = tracking.client.get_model_version(tracking.model_name, version)
    tags = tracking.client.get_run(model_version.run_id).data.tags
    assert tags["lineage.snapshot_id"] == used.id
    assert tags["lineage.train_hash"] == used.train_hash != after.train_hash
    assert report.batch_id not in tags["lineage.batch_ids"]
    test_report = tracking.client.download_artifacts(
        model_version.run_id, "eval/test_report.json", str(tmp_path)
    )
    assert json.loads(Path(test_report).read_text())["n"] == used.labelled_count("test")
    numbers = json.loads(tracking.version_tags(version)["promotion.numbers"])
    assert numbers["n"] == used.labelled_count("test")  # the first model's promotion, same split


def _inverted(tmp_path: Path, count: int) -> Path:
    """A night of a new domain: sample images with their tones inverted."""
    folder = tmp_path / "inverted"
    folder.mkdir()
    for image in sorted((SAMPLE_DIR / "unlabelled").glob("*.png"))[-count:]:
        with Image.open(image) as picture:
            ImageOps.invert(picture.convert("L")).save(folder / image.name)
    return folder


def test_drift_without_new_labels_flags_and_sends_the_drifted_images_first(
    tmp_path: Path,
) -> None:
    """Night 1 trains on 300 labelled images (a 100-image unlabelled pool beside them);
    night 2 brings 80 inverted images and no labels: drift is judged against the champion's
    training images, the night flags it instead of retraining, and every image handed to
    annotators is a drifted one, although the pool still holds undrifted images."""
    settings = _settings(tmp_path, labelling={"budget": 20})
    config = settings.save(tmp_path / "config")
    pool = tmp_path / "pool"
    pool.mkdir()
    for image in sorted((SAMPLE_DIR / "unlabelled").glob("*.png"))[:100]:
        shutil.copy(image, pool)
    first_night = [
        LandingSource(path=str(_landing(tmp_path, per_class=150)), layout="imagefolder"),
        LandingSource(path=str(pool), layout="unlabelled"),
    ]
    first = nightly(NightlyParameters(sources=first_night, config=str(config)))
    assert first.train.promotion.decision.promoted
    assert first.drift.drifted is None  # no champion to judge against yet

    second_night = [LandingSource(path=str(_inverted(tmp_path, 80)), layout="unlabelled")]
    second = nightly(NightlyParameters(sources=second_night, config=str(config)))
    assert second.drift.drifted is True, second.drift.note
    assert second.drift.report.is_file()
    assert second.decision.action == "flag", second.decision
    assert not second.train.trained
    queued = second.handoff.queued
    training_picks = queued.selected - queued.test_split
    assert queued.selected == 20 and queued.drifted >= training_picks, queued
