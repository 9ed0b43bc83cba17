"""The labelling round trip against a real Label Studio (its own environment, 127.0.0.1).

One Label Studio for the module (its first start runs migrations: minutes). A nightly run
on a small landing trains a champion, scores the unlabelled pool and hands tasks to Label
Studio; simulated annotators answer them; label sync brings the labels into the lake; the
next nightly retrains on them. Around it: idempotent imports (reruns, a retry after a
partial import), an outage (tasks wait in the outbox and are sent on the next run), and
disagreement (ties go to review, not training), a capped queue, a locked outbox, label
batches that never collide, and class names that need XML escaping.

Every test stands alone: ``loop`` gives it the module's lake and champion with no labelling
project and an empty outbox, so it hands out the tasks it needs; tests that only need Label
Studio make their own project and lake.
"""

from __future__ import annotations

import json
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree

import httpx
import psutil
import pyarrow.dataset as ds
import pytest
from selenium.webdriver.common.by import By

from scripts.simulate_annotators import annotator_token
from tests import waiting
from tests.browser import driven, wait_for
from tests.integration.test_train_flow import TINY_TRAINING
from tests.local import free_port
from visionloop.flows.labelling import handoff, sync_labels
from visionloop.flows.nightly import nightly
from visionloop.flows.score import score
from visionloop.ingest.landing import LandingSource
from visionloop.labelling.client import VIEW_TITLE, LabelStudio, choice_result
from visionloop.labelling.handoff import HandoffResult, Outbox, send
from visionloop.labelling.server import (
    LabelStudioUnavailableError,
    admin_password,
    healthy,
    start,
    token,
)
from visionloop.labelling.sync import read_cursor, run_sync
from visionloop.lake import label_map
from visionloop.parameters import (
    SAMPLE_DIR,
    HandoffParameters,
    NightlyParameters,
    ScoreParameters,
    SyncParameters,
)
from visionloop.registry.tracking import Tracking
from visionloop.settings import REPO_ROOT, load_settings
from visionloop.tasks.labelling import outbox

pytestmark = pytest.mark.slow
BUDGET = 12


def _landing(root: Path) -> Path:
    """Two classes, 50 labelled images each, and 60 unlabelled ones of those classes."""
    for label in ("trouser", "bag"):
        (root / "labelled" / label).mkdir(parents=True)
        for image in sorted((SAMPLE_DIR / "labelled" / label).glob("*.png"))[:50]:
            shutil.copy(image, root / "labelled" / label)
    (root / "unlabelled").mkdir()
    for label in ("trouser", "bag"):
        for image in sorted((SAMPLE_DIR / "labelled" / label).glob("*.png"))[50:80]:
            shutil.copy(image, root / "unlabelled")
    return root


@pytest.fixture(scope="module")
def studio(tmp_path_factory: pytest.TempPathFactory):
    """Settings and a running Label Studio (its first start runs migrations: minutes)."""
    root = tmp_path_factory.mktemp("labelling")
    settings = load_settings(
        data_home=root / "home",
        spark_master="local[2]",
        image_size=32,
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
        embeddings={"input_size": 32},
        labelling={"port": free_port(), "budget": BUDGET},
    )
    config = settings.save(root / "config")
    server = start(settings)
    try:
        yield settings, config, server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def world(studio, tmp_path_factory: pytest.TempPathFactory):
    """Settings, the running Label Studio, and a lake that went through one nightly."""
    settings, config, server = studio
    landing = _landing(tmp_path_factory.mktemp("landing"))
    sources = [
        LandingSource(path=str(landing / "labelled"), layout="imagefolder"),
        LandingSource(path=str(landing / "unlabelled"), layout="unlabelled"),
    ]
    params = NightlyParameters(sources=sources, config=str(config))
    first = nightly(params)
    return settings, config, params, first, server


@pytest.fixture
def loop(world):
    """The module's lake and champion with no labelling project and an empty outbox."""
    settings = world[0]
    client = _client(settings)
    if (project := client.find_project(settings.registered_model_name)) is not None:
        client.sdk.projects.delete(id=project)
    box = outbox(settings)
    for path in (box.path, box.sent_file, box.project_file):
        path.unlink(missing_ok=True)
    return world


@pytest.fixture
def second_version(loop):
    """Another registered version of the champion's model (as a re-registration or a
    rollback leaves one): ``(champion, other)``; the champion alias is restored after."""
    settings = loop[0]
    client, name = Tracking.connect(settings).client, settings.registered_model_name
    champion = Tracking.connect(settings).alias_version("champion")
    found = client.get_model_version(name, champion)
    other = client.create_model_version(name, found.source, found.run_id, tags=found.tags)
    yield champion, str(other.version)
    client.set_registered_model_alias(name, "champion", champion)


def _handoff(config, budget: int) -> HandoffResult:
    return handoff(HandoffParameters(config=str(config), budget=budget))


def _config_with(settings, config, name: str, **labelling) -> str:
    """A settings file like ``config`` with other labelling settings."""
    changed = settings.model_copy(
        update={"labelling": settings.labelling.model_copy(update=labelling)}
    )
    return str(changed.save(Path(config).parent.parent / name))


def _client(settings) -> LabelStudio:
    return LabelStudio.connect(settings)


def _tasks(settings) -> list:
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    return list(client.sdk.tasks.list(project=project, fields="all", page_size=200))


def _predictions(task) -> list[dict]:
    return [p if isinstance(p, dict) else p.dict() for p in task.predictions]


def _prediction(task) -> dict:
    (prediction,) = _predictions(task)
    return prediction


def _lake_table(settings, name: str):
    return ds.dataset(settings.lake_dir / name, format="parquet", partitioning="hive").to_table()


def test_round_trip_select_annotate_sync_retrain(loop) -> None:
    settings, config, params, first, server = loop
    champion = Tracking.connect(settings).alias_version("champion")
    assert first.handoff.sent.imported == BUDGET == first.handoff.queued.selected
    assert _handoff(config, BUDGET).sent.imported == BUDGET
    tasks = _tasks(settings)
    assert len(tasks) == BUDGET
    predictions = _lake_table(settings, "predictions").to_pandas()
    predictions = predictions[predictions["model_version"] == champion].set_index("image_id")
    headers = {"Authorization": f"Token {token(settings)}"}
    for task in tasks:
        prediction = _prediction(task)
        assert prediction["model_version"] == champion
        row = predictions.loc[task.data["image_id"]]
        assert prediction["score"] == pytest.approx(float(row["confidence"]))
        assert prediction["result"][0]["value"]["choices"] == [row["label"]]
    image = httpx.get(server.url + tasks[0].data["image"], headers=headers)
    overlay = httpx.get(server.url + tasks[0].data["overlay"], headers=headers)
    assert image.status_code == overlay.status_code == 200
    assert image.headers["content-type"] == "image/png" and image.content != overlay.content
    stored = _lake_table(settings, "images").to_pandas().set_index("image_id")
    assert image.content == stored.loc[tasks[0].data["image_id"], "image"]

    simulated = subprocess.run(
        [sys.executable, "scripts/simulate_annotators.py", "--project",
         settings.registered_model_name, "--fashion-mnist", "--config", str(config)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert simulated.returncode == 0, simulated.stderr[-2000:]
    assert json.loads(simulated.stdout.splitlines()[-1])["tasks"] == BUDGET

    synced = sync_labels(SyncParameters(config=str(config)))
    assert len(synced.events) == BUDGET and synced.batch_id is not None
    events = _lake_table(settings, "label_events").to_pandas()
    annotated = events[events["label_source"] == "annotator"]
    assert len(annotated) == BUDGET and set(annotated["image_id"]) == {
        t.data["image_id"] for t in tasks
    }
    assert (annotated["annotator"] == "annotator1@visionloop.local").all()
    assert sync_labels(SyncParameters(config=str(config))).events == []  # read once

    second = nightly(params)
    assert second.labels.events == [] and not second.labels.skipped
    plan = second.train.plan
    assert plan.action == "train" and plan.reason.startswith("training split changed")
    run_id = (
        Tracking.connect(settings)
        .client.get_model_version(
            settings.registered_model_name, second.train.challenger.version.version
        )
        .run_id
    )
    tags = Tracking.connect(settings).client.get_run(run_id).data.tags
    assert int(tags["lineage.annotator_labels_since_champion"]) > 0
    assert tags["lineage.annotator_labels"] == tags["lineage.annotator_labels_since_champion"]


def test_reruns_and_a_retry_after_a_partial_import_create_no_second_task(loop) -> None:
    settings, config, *_ = loop
    assert _handoff(config, BUDGET).sent.imported == BUDGET
    before = _tasks(settings)
    rerun = handoff(HandoffParameters(config=str(config), budget=0))
    assert rerun.sent.imported == 0
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    more = handoff(HandoffParameters(config=str(config), budget=6))
    assert more.queued.selected == 6 and more.sent.imported == 6
    # A retry after a partial import: Label Studio made these tasks, the answer was lost,
    # so they are still queued.
    outbox(settings).add([{"data": task.data} for task in _tasks(settings)[-3:]])
    again = handoff(HandoffParameters(config=str(config), budget=0))
    assert again.sent.imported == 0 and again.sent.already_there == 3
    per_image = Counter(task.data["image_id"] for task in _tasks(settings))
    assert max(per_image.values()) == 1 and len(per_image) == len(before) + 6
    assert client.find_project(settings.registered_model_name) == project


def test_an_outage_keeps_tasks_in_the_outbox_until_the_next_run(loop) -> None:
    settings, config, *_ = loop
    down_config = _config_with(settings, config, "down", url=f"http://127.0.0.1:{free_port()}")
    with pytest.raises(LabelStudioUnavailableError, match="unreachable"):
        _handoff(down_config, 4)
    waiting = outbox(settings).pending_ids()
    assert len(waiting) == 4
    back = handoff(HandoffParameters(config=str(config), budget=0))
    assert back.sent.imported == 4, back
    assert not outbox(settings).pending()
    assert waiting <= {task.data["image_id"] for task in _tasks(settings)}


def test_a_new_champion_refreshes_every_open_task_and_pins_the_project(
    loop, second_version
) -> None:
    settings, config, *_ = loop
    tracking = Tracking.connect(settings)
    before, other = second_version
    assert _handoff(config, BUDGET).sent.imported == BUDGET  # made by ``before``
    # Another version becomes champion (as a promotion or a rollback leaves it) and scores
    # the lake, as the nightly does after a promotion.
    tracking.client.set_registered_model_alias(settings.registered_model_name, "champion", other)
    score(ScoreParameters(config=str(config)))
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    open_tasks = client.open_tasks(project)
    assert open_tasks and set(open_tasks.values()) == {before}
    stale = set(open_tasks)

    renewed = handoff(HandoffParameters(config=str(config), budget=0))
    assert renewed.queued.to_refresh == len(stale)
    assert renewed.sent.refreshed == len(stale)
    assert client.sdk.projects.get(id=project).model_version == other
    predictions = _lake_table(settings, "predictions").to_pandas()
    predictions = predictions[predictions["model_version"] == other].set_index("image_id")
    headers = {"Authorization": f"Token {token(settings)}"}
    for task in _tasks(settings):
        if task.data["image_id"] not in stale:
            continue
        latest = max(_predictions(task), key=lambda prediction: prediction["id"])
        row = predictions.loc[task.data["image_id"]]
        assert latest["model_version"] == other
        assert latest["score"] == pytest.approx(float(row["confidence"]))
        assert latest["result"][0]["value"]["choices"] == [row["label"]]
        assert f"/{other}/" in task.data["overlay"]
        assert httpx.get(client.url + task.data["overlay"], headers=headers).status_code == 200
    again = handoff(HandoffParameters(config=str(config), budget=0))
    assert again.sent.refreshed == 0 and again.sent.imported == 0


# The labelling panel's images (Label Studio draws them from blob: URLs) once all have loaded.
PANEL_IMAGES = """
const images = Array.from(document.querySelectorAll('.lsf-image > img'));
return images.length >= 2 && images.every(i => i.complete && i.naturalWidth > 0) && images.length;
"""


def _score(task, model_version: str) -> float | None:
    """The score the Data Manager sorts by: the project's pinned model version's."""
    scores = [p["score"] for p in _predictions(task) if p["model_version"] == model_version]
    return sum(scores) / len(scores) if scores else None


def _unscored_last(score: float | None) -> tuple[bool, float]:
    return score is None, score or 0.0


TASK_LIST_IDS = """
const rows = Array.from(document.querySelectorAll('.lsf-table-row'));
return rows.length && rows.map(row => parseInt(row.innerText.trim().split(/\\s+/)[0]));
"""


def test_an_annotator_sees_image_overlay_and_model_choice_in_a_list_sorted_by_score(
    loop,
) -> None:
    settings, config, *_ = loop
    assert _handoff(config, BUDGET).sent.imported == BUDGET
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    (view,) = [v for v in client.sdk.views.list(project=project) if v.data["title"] == VIEW_TITLE]
    pinned = client.sdk.projects.get(id=project).model_version
    tasks = _tasks(settings)
    scores = {task.id: _score(task, pinned) for task in tasks}
    task = next(t for t in tasks if t.data["image_id"] in client.open_tasks(project))
    with driven() as browser:
        browser.get(f"{client.url}/user/login/")
        browser.find_element(By.NAME, "email").send_keys(settings.labelling.admin_email)
        browser.find_element(By.NAME, "password").send_keys(admin_password(settings))
        browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
        wait_for(browser, "return !location.pathname.startsWith('/user/login')")

        browser.get(f"{client.url}/projects/{project}/data?tab={view.id}")
        listed = wait_for(browser, TASK_LIST_IDS)
        shown = [scores[task_id] for task_id in listed]
        assert shown == sorted(scores.values(), key=_unscored_last)[: len(shown)]

        browser.get(f"{client.url}/projects/{project}/data?tab={view.id}&task={task.id}")
        assert wait_for(browser, PANEL_IMAGES) == 2  # the image and its Grad-CAM overlay
        assert "issue loading URL" not in browser.find_element(By.TAG_NAME, "body").text
        chosen = browser.find_elements(By.CSS_SELECTOR, "input[type=checkbox]:checked")
        (predicted,) = [p for p in _predictions(task) if p["model_version"] == pinned]
        predicted = predicted["result"][0]["value"]["choices"]
        assert [box.get_attribute("name") for box in chosen] == predicted


def test_disagreeing_annotators_send_the_task_to_review_not_training(loop) -> None:
    settings, config, *_ = loop
    assert _handoff(config, 2).sent.imported == 2
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    open_ids = client.open_tasks(project)
    task = next(t for t in _tasks(settings) if t.data["image_id"] in open_ids)
    other = LabelStudio(client.url, annotator_token(client.url, token(settings), "a2@x.org"))
    client.sdk.annotations.create(id=task.id, result=choice_result("bag"))
    other.sdk.annotations.create(id=task.id, result=choice_result("trouser"))
    synced = sync_labels(SyncParameters(config=str(config)))
    assert Counter(review["reason"] for review in synced.reviews)["tie"] == 1
    reviews = _lake_table(settings, "label_reviews").to_pandas()
    assert task.data["image_id"] in set(reviews[reviews["reason"] == "tie"]["image_id"])
    events = _lake_table(settings, "label_events").to_pandas()
    assert task.data["image_id"] not in set(
        events[events["label_source"] == "annotator"]["image_id"]
    )


# ---------------------------------------------------------------- a project of our own


def _project_with_tasks(
    client: LabelStudio, title: str, classes: list[str], image_ids: list[str]
) -> tuple[int, dict[str, int]]:
    """A project made the way the hand-off makes one, with a task per image id."""
    project = client.project(title, classes, overlay=False, storage=None)
    client.import_tasks(project, [_synthetic(image_id) for image_id in image_ids])
    tasks = client.sdk.tasks.list(project=project, fields="all", page_size=200)
    return project, {task.data["image_id"]: int(task.id) for task in tasks}


def _synthetic(image_id: str) -> dict:
    return {"data": {"image": f"/data/local-files/?d=none/{image_id}.png", "image_id": image_id}}


def _annotate(client: LabelStudio, task_id: int, label: str) -> None:
    client.sdk.annotations.create(id=task_id, result=choice_result(label))


def _lake_labels(settings) -> dict[str, str]:
    events = _lake_table(settings, "label_events").to_pandas()
    return dict(zip(events["image_id"], events["label"], strict=True))


def test_two_syncs_committing_in_the_same_second_keep_every_annotation(
    studio, tmp_path: Path
) -> None:
    settings, *_ = studio
    client = _client(settings)
    project, tasks = _project_with_tasks(client, "same second", ["bag", "trouser"], ["i1", "i2"])
    lake = load_settings(data_home=tmp_path / "home")
    now = datetime.now(UTC)  # both syncs stamp, and name, their batch with this second
    _annotate(client, tasks["i1"], "bag")
    first = run_sync(lake, client, project, now=now)
    _annotate(client, tasks["i2"], "trouser")
    second = run_sync(lake, client, project, now=now)
    assert len(first.events) == len(second.events) == 1
    assert first.batch_id != second.batch_id
    assert _lake_labels(lake) == {"i1": "bag", "i2": "trouser"}
    cursor = read_cursor(lake.labelling_dir / f"sync-cursor-project-{project}.json")
    assert cursor == second.cursor and cursor > first.cursor
    again = run_sync(lake, client, project)
    assert again.events == [] and again.batch_id is None
    assert _lake_labels(lake) == {"i1": "bag", "i2": "trouser"}


def test_a_sync_whose_commit_fails_leaves_the_cursor_for_the_next_one(
    studio, tmp_path: Path
) -> None:
    settings, *_ = studio
    client = _client(settings)
    project, tasks = _project_with_tasks(client, "failed commit", ["bag"], ["i1"])
    lake = load_settings(data_home=tmp_path / "home")
    cursor_file = lake.labelling_dir / f"sync-cursor-project-{project}.json"
    _annotate(client, tasks["i1"], "bag")
    lake.staging_dir.parent.mkdir(parents=True)
    lake.staging_dir.write_text("not a folder")  # staging the batch fails
    with pytest.raises(OSError):
        run_sync(lake, client, project)
    assert read_cursor(cursor_file) is None
    lake.staging_dir.unlink()
    assert len(run_sync(lake, client, project).events) == 1
    assert _lake_labels(lake) == {"i1": "bag"} and read_cursor(cursor_file) is not None


def test_class_names_needing_xml_escapes_work_in_label_studio_and_sync_back_exactly(
    studio, tmp_path: Path
) -> None:
    settings, *_ = studio
    client = _client(settings)
    classes = ["a&b", "<b>", 'say "hi"', "plain"]
    project, tasks = _project_with_tasks(client, "escaped classes", classes, ["i1", "i2", "i3"])
    stored = ElementTree.fromstring(client.sdk.projects.get(id=project).label_config)
    assert [choice.get("value") for choice in stored.iter("Choice")] == classes
    assert client.project("escaped classes", classes, overlay=False, storage=None) == project
    for image_id, label in zip(tasks, classes, strict=False):
        _annotate(client, tasks[image_id], label)
    lake = load_settings(data_home=tmp_path / "home")
    assert len(run_sync(lake, client, project).events) == 3
    assert _lake_labels(lake) == {"i1": "a&b", "i2": "<b>", "i3": 'say "hi"'}
    assert set(classes[:3]) <= set(label_map.read(lake.lake_dir))


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.mark.parametrize("when", ["starting", "serving"])
def test_sigterm_stops_visionloop_label_studio_and_every_process_it_started(
    studio, tmp_path: Path, when: str
) -> None:
    """As a service manager or a Prefect worker stops it, at once or later: it exits 0 and the
    port is free afterwards."""
    settings, *_ = studio  # its data (migrated already), another port
    port = free_port()
    labelling = settings.labelling.model_copy(update={"port": port})
    config = settings.model_copy(update={"labelling": labelling}).save(tmp_path / "config")
    command = [str(Path(sys.executable).parent / "visionloop"), "label-studio", "-c", str(config)]
    cli = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    started: list[psutil.Process] = []
    try:
        url = f"http://127.0.0.1:{port}"
        if when == "serving":
            waiting.wait_for(lambda: healthy(url), 300, f"visionloop label-studio at {url}", cli)
        children = psutil.Process(cli.pid).children
        waiting.wait_for(lambda: children(recursive=True), 60, "label-studio launched", cli)
        started = children(recursive=True)
        assert started  # label-studio and whatever it runs
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(timeout=60) == 0, cli.stdout.read()
        psutil.wait_procs(started, timeout=10)
        assert [p.pid for p in started if _alive(p)] == []
        with pytest.raises(ConnectionRefusedError):  # nothing listens
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        with socket.socket() as probe:  # and a server can listen there again
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(("127.0.0.1", port))
            probe.listen()
    finally:
        if cli.poll() is None:  # the test failed: leave nothing behind
            started += [*psutil.Process(cli.pid).children(recursive=True), psutil.Process(cli.pid)]
        for process in started:
            if _alive(process):
                process.kill()


def _keep_queueing(box: Outbox, started: threading.Event, stop: threading.Event) -> list[str]:
    """Another run queueing tasks one by one until told to stop."""
    queued: list[str] = []
    while not stop.is_set():
        queued.append(f"later-{len(queued)}")
        box.add([_synthetic(queued[-1])])
        if len(queued) == 5:
            started.set()
        time.sleep(0.005)
    return queued


def test_tasks_queued_during_a_send_are_neither_dropped_nor_sent_twice(
    studio, tmp_path: Path
) -> None:
    settings, *_ = studio
    client = _client(settings)
    project = client.project("outbox race", ["bag"], overlay=False, storage=None)
    box = Outbox(tmp_path / "outbox.json")
    box.add([_synthetic(f"first-{n}") for n in range(40)])
    started, stop = threading.Event(), threading.Event()
    with ThreadPoolExecutor(1) as pool:
        queueing = pool.submit(_keep_queueing, box, started, stop)
        assert started.wait(30)
        try:
            send(client, project, box)  # while the other run queues
        finally:
            stop.set()
        later = queueing.result()
    wanted = {f"first-{n}" for n in range(40)} | set(later)
    in_studio = Counter(t.data["image_id"] for t in client.sdk.tasks.list(project=project))
    assert max(in_studio.values()) == 1
    assert set(in_studio) | box.pending_ids() == wanted  # sent, or still waiting
    send(client, project, box)
    in_studio = Counter(t.data["image_id"] for t in client.sdk.tasks.list(project=project))
    assert set(in_studio) == wanted and max(in_studio.values()) == 1 and not box.pending()


# ---------------------------------------------------------------- the capped queue


def test_the_open_queue_stops_at_its_cap_and_says_what_it_held_back(loop) -> None:
    settings, config, *_ = loop
    capped = _config_with(settings, config, "capped", max_open_tasks=8)
    first = _handoff(capped, 6).queued
    assert (first.queued, first.held_back, first.why_held_back) == (6, 0, "")
    second = _handoff(capped, 6)
    assert (second.queued.queued, second.queued.held_back) == (2, 4)
    assert second.sent.imported == 2
    why = second.queued.why_held_back
    assert "4 held back" in why and "6 open in Label Studio" in why and "is 8" in why
    full = _handoff(capped, 6)
    assert (full.queued.queued, full.queued.held_back) == (0, 6)
    assert full.sent.imported == 0

    # Label Studio down: the tasks it holds still count, so the outbox does not grow.
    down = _config_with(
        settings, config, "capped-down", max_open_tasks=8, url=f"http://127.0.0.1:{free_port()}"
    )
    with pytest.raises(LabelStudioUnavailableError, match="unreachable"):
        _handoff(down, 6)
    assert not outbox(settings).pending()

    # An annotated task is no longer open: room for one more.
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    task = next(t for t in _tasks(settings) if t.data["image_id"] in client.open_tasks(project))
    _annotate(client, int(task.id), "bag")
    after = _handoff(capped, 6).queued
    assert (after.queued, after.held_back, after.open_tasks) == (1, 5, 8)
