"""The hand-off: files Label Studio can show, escaped class names, a capped, locked outbox."""

from __future__ import annotations

import io
import multiprocessing
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pytest
from PIL import Image

from visionloop.labelling.client import labelling_config
from visionloop.labelling.handoff import (
    LABEL_STUDIO_MIN_IMAGE_BYTES,
    OpenQueue,
    Outbox,
    Selected,
    choices,
    servable,
    task,
)
from visionloop.locks import LockBusyError


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_tiny_png_is_padded_and_still_decodes_to_the_same_pixels() -> None:
    blank = _png(np.zeros((32, 32, 3), np.uint8))
    assert len(blank) < LABEL_STUDIO_MIN_IMAGE_BYTES
    padded = servable(blank)
    assert len(padded) >= LABEL_STUDIO_MIN_IMAGE_BYTES
    decoded = Image.open(io.BytesIO(padded))
    decoded.load()  # verifies every chunk's CRC
    assert np.array_equal(np.asarray(decoded), np.zeros((32, 32, 3), np.uint8))


def test_an_ordinary_image_is_served_unchanged() -> None:
    noisy = _png(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8))
    assert servable(noisy) == noisy


def test_a_task_names_jpeg_bytes_as_jpeg_and_carries_the_prediction() -> None:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="JPEG")
    item = Selected("abc", buffer.getvalue(), b"\x89PNG...", "bag", 0.7)
    entry = task(item, "visionloop", "3")
    assert entry["data"]["image"].endswith("/images/abc.jpg")
    assert entry["data"]["overlay"].endswith("/overlays/3/abc.png")
    (prediction,) = entry["predictions"]
    assert prediction["model_version"] == "3" and prediction["score"] == 0.7
    assert prediction["result"][0]["value"]["choices"] == ["bag"]


def test_a_task_is_titled_with_its_file_batch_and_the_models_guess() -> None:
    guessed = Selected("abc", b"png", None, "bag", 0.834, "file:///in/bag/shirt%201.png", "b7")
    cold = Selected("def", b"png", None, None, None, "s3://bucket/night/x.jpg", "b8")
    assert task(guessed, "visionloop", "3")["data"] | {"image": ""} == {
        "image": "",
        "image_id": "abc",
        "file_name": "shirt 1.png",
        "batch_id": "b7",
        "model_guess": "bag (p = 0.83)",
    }
    data = task(cold, "visionloop", None)["data"]
    assert (data["file_name"], data["batch_id"], data["model_guess"]) == (
        "x.jpg",
        "b8",
        "no model yet",
    )
    # Every key the config shows is in every task's data.
    shown = {
        name[1:].rstrip(",")
        for header in ElementTree.fromstring(labelling_config(["bag"], True)).iter("Header")
        for name in header.get("value").split()
        if name.startswith("$")
    }
    assert shown == {"file_name", "batch_id", "model_guess", "image_id"} <= set(data)


def test_classes_the_data_team_adds_join_the_models_choices_in_order() -> None:
    model = ["t-shirt", "trouser"]
    assert choices(model, None) == model
    assert choices(model, ["trouser", "scarf", "t-shirt", "hat"]) == [*model, "scarf", "hat"]


def _entry(image_id: str) -> dict:
    return {"data": {"image": f"/data/local-files/?d=x/{image_id}.png", "image_id": image_id}}


def _queue_many(path: str, writer: int, count: int, start: float) -> list[str]:
    """One writer process: queue ``count`` tasks one by one (as a handoff run would)."""
    while time.time() < start:  # both writers begin together
        time.sleep(0.001)
    box = Outbox(Path(path))
    ids = [f"w{writer}-{n}" for n in range(count)]
    for image_id in ids:
        box.add([_entry(image_id)])
    return ids


def test_two_processes_queueing_at_once_drop_nothing(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    start = time.time() + 1.0
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        runs = [pool.submit(_queue_many, str(path), writer, 150, start) for writer in (1, 2)]
        written = {image_id for run in runs for image_id in run.result()}
    assert Outbox(path).pending_ids() == written and len(written) == 300


def _remove_sent_repeatedly(path: str, start: float, stop: float) -> int:
    """A send: take what is queued as sent, then remove it, until ``stop``."""
    while time.time() < start:
        time.sleep(0.001)
    box, removed = Outbox(Path(path)), 0
    while time.time() < stop:
        with box.locked("send"):
            sent = box.pending_ids()
            box.mark_sent(sent)
            box.remove(sent)
        removed += len(sent)
    return removed


def test_tasks_queued_while_a_send_empties_the_outbox_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    start = time.time() + 1.0
    context = multiprocessing.get_context("fork")
    with ProcessPoolExecutor(2, mp_context=context) as pool:
        sender = pool.submit(_remove_sent_repeatedly, str(path), start, start + 2.0)
        queued = set(pool.submit(_queue_many, str(path), 1, 300, start).result())
        sender.result()
    box = Outbox(path)
    assert box.pending_ids() | box.sent_ids() == queued  # each one sent or still waiting
    assert not box.pending_ids() & box.sent_ids()


def test_the_outbox_lock_names_its_holder_when_a_wait_runs_out(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    with Outbox(path).locked("a long send"):
        with pytest.raises(LockBusyError, match="a long send"):
            _in_other_thread(lambda: Outbox(path, lock_timeout_s=0.2).add([_entry("x")]))
        Outbox(path).add([_entry("y")])  # the holder's own thread re-enters
    assert Outbox(path).pending_ids() == {"y"}


def _in_other_thread(work) -> None:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            work()
        except BaseException as error:  # re-raised in the test's thread
            errors.append(error)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise errors[0]


def test_the_open_queue_is_capped_and_says_why() -> None:
    queue = OpenQueue.count(10, {"a", "b", "c"}, {"c", "d", "e", "f"}, known=True)
    assert (queue.open, queue.room) == (6, 4)
    assert queue.why_held_back(0) == ""
    why = queue.why_held_back(8)
    assert "8 held back" in why and "6 tasks are open" in why and "max_open_tasks is 10" in why
    assert OpenQueue.count(2, {"a", "b", "c"}, set(), known=False).room == 0


def test_class_names_are_escaped_in_the_labelling_config() -> None:
    names = ["a&b", "<b>", 'say "hi"', "it's", "plain"]
    config = ElementTree.fromstring(labelling_config(names, overlay=True))
    assert [choice.get("value") for choice in config.iter("Choice")] == names
