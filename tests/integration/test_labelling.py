"""The labelling round trip against a real Label Studio (its own environment, 127.0.0.1).

One Label Studio for the module (its first start runs migrations: minutes). A nightly run
on a small landing trains a champion, scores the unlabelled pool and hands tasks to Label
Studio; simulated annotators answer them; label sync brings the labels into the lake; the
next nightly retrains on them. Around it: idempotent imports (reruns, a retry after a
partial import), an outage (tasks wait in the outbox and are sent on the next run), and
disagreement (ties go to review, not training).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import httpx
import pyarrow.dataset as ds
import pytest
from selenium.webdriver.common.by import By

from scripts.simulate_annotators import annotator_token
from tests.browser import driven, wait_for
from tests.integration.test_train_flow import TINY_TRAINING
from visionloop.flows.labelling import handoff, sync_labels
from visionloop.flows.nightly import nightly
from visionloop.flows.score import score
from visionloop.ingest.landing import LandingSource
from visionloop.labelling.client import VIEW_TITLE, LabelStudio, choice_result
from visionloop.labelling.server import LabelStudioUnavailableError, start, token
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


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
def world(tmp_path_factory: pytest.TempPathFactory):
    """Settings, a running Label Studio, and a lake that went through one nightly."""
    root = tmp_path_factory.mktemp("labelling")
    settings = load_settings(
        data_home=root / "home",
        spark_master="local[2]",
        image_size=32,
        training=TINY_TRAINING,
        promotion={"first_model_floor": 0.0},
        embeddings={"input_size": 32},
        labelling={"port": _free_port(), "budget": BUDGET},
    )
    config = settings.save(root / "config")
    server = start(settings)
    try:
        landing = _landing(root / "landing")
        sources = [
            LandingSource(path=str(landing / "labelled"), layout="imagefolder"),
            LandingSource(path=str(landing / "unlabelled"), layout="unlabelled"),
        ]
        params = NightlyParameters(sources=sources, config=str(config))
        first = nightly(params)
        yield settings, config, params, first, server
    finally:
        server.stop()


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


def test_round_trip_select_annotate_sync_retrain(world) -> None:
    settings, config, params, first, server = world
    champion = Tracking.connect(settings).alias_version("champion")
    assert first["handoff"]["sent"]["imported"] == BUDGET == first["handoff"]["queued"]["selected"]
    tasks = _tasks(settings)
    assert len(tasks) == BUDGET
    predictions = _lake_table(settings, "predictions").to_pandas().set_index("image_id")
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
    assert synced["labels synced"] == BUDGET
    events = _lake_table(settings, "label_events").to_pandas()
    annotated = events[events["label_source"] == "annotator"]
    assert len(annotated) == BUDGET and set(annotated["image_id"]) == {
        t.data["image_id"] for t in tasks
    }
    assert (annotated["annotator"] == "annotator1@visionloop.local").all()
    assert sync_labels(SyncParameters(config=str(config)))["labels synced"] == 0  # read once

    second = nightly(params)
    assert second["labels"]["labels synced"] == 0
    plan = second["train"]["plan"]
    assert plan["action"] == "train" and plan["reason"].startswith("training split changed")
    run_id = (
        Tracking.connect(settings)
        .client.get_model_version(
            settings.registered_model_name, second["train"]["challenger"]["version"]
        )
        .run_id
    )
    tags = Tracking.connect(settings).client.get_run(run_id).data.tags
    assert int(tags["lineage.annotator_labels_since_champion"]) > 0
    assert tags["lineage.annotator_labels"] == tags["lineage.annotator_labels_since_champion"]


def test_reruns_and_a_retry_after_a_partial_import_create_no_second_task(world) -> None:
    settings, config, *_ = world
    before = _tasks(settings)
    rerun = handoff(HandoffParameters(config=str(config), budget=0))
    assert rerun["sent"]["imported"] == 0
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    more = handoff(HandoffParameters(config=str(config), budget=6))
    assert more["queued"]["selected"] == 6 and more["sent"]["imported"] == 6
    # A retry after a partial import: Label Studio made these tasks, the answer was lost,
    # so they are still queued.
    outbox(settings).add([{"data": task.data} for task in _tasks(settings)[-3:]])
    again = handoff(HandoffParameters(config=str(config), budget=0))
    assert again["sent"]["imported"] == 0 and again["sent"]["already in Label Studio"] == 3
    per_image = Counter(task.data["image_id"] for task in _tasks(settings))
    assert max(per_image.values()) == 1 and len(per_image) == len(before) + 6
    assert client.find_project(settings.registered_model_name) == project


def test_an_outage_keeps_tasks_in_the_outbox_until_the_next_run(world) -> None:
    settings, config, *_ = world
    down = settings.model_copy(
        update={
            "labelling": settings.labelling.model_copy(
                update={"url": f"http://127.0.0.1:{_free_port()}"}
            )
        }
    )
    down_config = down.save(Path(config).parent.parent / "down-config")
    with pytest.raises(LabelStudioUnavailableError, match="unreachable"):
        handoff(HandoffParameters(config=str(down_config), budget=4))
    waiting = outbox(settings).pending_ids()
    assert len(waiting) == 4
    back = handoff(HandoffParameters(config=str(config), budget=0))
    assert back["sent"]["imported"] == 4, back
    assert not outbox(settings).pending()
    assert waiting <= {task.data["image_id"] for task in _tasks(settings)}


def test_a_new_champion_refreshes_every_open_task_and_pins_the_project(world) -> None:
    settings, config, *_ = world
    tracking = Tracking.connect(settings)
    before = tracking.alias_version("champion")
    registered = tracking.client.search_model_versions(f"name='{settings.registered_model_name}'")
    other = next(str(v.version) for v in registered if str(v.version) != before)
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
    assert renewed["queued"]["open tasks to refresh"] == len(stale)
    assert renewed["sent"]["open tasks refreshed"] == len(stale)
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
    assert again["sent"]["open tasks refreshed"] == 0 and again["sent"]["imported"] == 0


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
    world,
) -> None:
    settings, *_ = world
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
        browser.find_element(By.NAME, "password").send_keys(token(settings))
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


def test_disagreeing_annotators_send_the_task_to_review_not_training(world) -> None:
    settings, config, *_ = world
    client = _client(settings)
    project = client.find_project(settings.registered_model_name)
    open_ids = client.open_tasks(project)
    task = next(t for t in _tasks(settings) if t.data["image_id"] in open_ids)
    other = LabelStudio(client.url, annotator_token(client.url, token(settings), "a2@x.org"))
    client.sdk.annotations.create(id=task.id, result=choice_result("bag"))
    other.sdk.annotations.create(id=task.id, result=choice_result("trouser"))
    synced = sync_labels(SyncParameters(config=str(config)))
    assert synced.get("held: tie") == 1
    reviews = _lake_table(settings, "label_reviews").to_pandas()
    assert task.data["image_id"] in set(reviews[reviews["reason"] == "tie"]["image_id"])
    events = _lake_table(settings, "label_events").to_pandas()
    assert task.data["image_id"] not in set(
        events[events["label_source"] == "annotator"]["image_id"]
    )
