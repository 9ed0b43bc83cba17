"""Handing selected images to annotators: image files, tasks, the outbox, idempotent imports.

Each selected image is written (with its Grad-CAM overlay) under the local-files root, and
its task — the image, the overlay, its ``image_id`` with a readable title (source file name,
batch, the model's guess), and the champion's prediction as a pre-selected choice with
``model_version`` and ``score`` — joins the **outbox**, a file
under the data home. :func:`send` imports the outbox: it asks Label Studio which images
already have a task (Label Studio does not deduplicate imports), imports only the others,
and keeps whatever could not be sent for the next run. Open tasks an earlier champion handed
out get tonight's champion's guess and overlay (:func:`refresh`), so the whole queue is
scored, sorted and pre-selected by one model. Without a Label Studio the outbox is the
ready-to-import task file. The open queue is capped (``labelling.max_open_tasks``,
:class:`OpenQueue`): with nobody annotating, a night queues only what fits and says how many
it held back.
"""

from __future__ import annotations

import json
import os
import struct
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np

from visionloop import locks
from visionloop.labelling.client import LabelStudio, choice_result
from visionloop.labelling.overlay import overlays
from visionloop.labelling.pool import build_pool, candidates
from visionloop.labelling.selection import sample_test_split, select
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.scoring import read_predictions
from visionloop.settings import LabellingSettings
from visionloop.training.classifier import ImageClassifier

LOCAL_FILES = "/data/local-files/?d="
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Label Studio 1.23's image cache rejects files under 100 bytes; its fallback then races the
# pre-annotation and the annotator sees "There was an issue loading URL"
# (HumanSignal/label-studio#9315). Tiny PNGs (a blank image) get a text chunk to pass it.
LABEL_STUDIO_MIN_IMAGE_BYTES = 100


@dataclass(frozen=True)
class Selected:
    """An image chosen for annotation, and what the model said about it."""

    image_id: str
    image: bytes  # stored (preprocessed) bytes
    overlay: bytes | None
    predicted: str | None
    confidence: float | None
    source_uri: str | None = None  # where the original file came from
    batch_id: str | None = None  # the ingest batch that brought it


def write_files(root: Path, folder: str, chosen: Sequence[Selected], model_version: str) -> None:
    """The images (and overlays) under ``root/folder``, where Label Studio serves them."""
    for item in chosen:
        _write(root / folder / _image_path(item), servable(item.image))
        if item.overlay is not None:
            _write(root / folder / _overlay_path(item, model_version), servable(item.overlay))


def _suffix(data: bytes) -> str:
    return ".png" if data.startswith(PNG_SIGNATURE) else ".jpg"


def _image_path(item: Selected) -> str:
    return f"images/{item.image_id}{_suffix(item.image)}"


def _overlay_path(item: Selected, model_version: str | None) -> str:
    return f"overlays/{model_version}/{item.image_id}.png"


def servable(data: bytes) -> bytes:
    """``data`` as Label Studio can show it: a PNG under the size it accepts gets padded."""
    if not data.startswith(PNG_SIGNATURE) or len(data) >= LABEL_STUDIO_MIN_IMAGE_BYTES:
        return data
    body = b"Comment\x00" + b" " * LABEL_STUDIO_MIN_IMAGE_BYTES
    chunk = b"tEXt" + body
    padded = struct.pack(">I", len(body)) + chunk + struct.pack(">I", zlib.crc32(chunk))
    end = data.rindex(b"IEND") - 4  # before the IEND chunk's length field
    return data[:end] + padded + data[end:]


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def file_name(source_uri: str | None) -> str:
    """The last part of a source URI (``file:///in/shirt%201.png`` -> ``shirt 1.png``)."""
    if not source_uri:
        return "-"
    path = unquote(urlsplit(source_uri).path or source_uri)
    return path.rstrip("/").rsplit("/", 1)[-1] or source_uri


def title(item: Selected) -> dict[str, str]:
    """What an annotator can use beside the 64-character id: the source file's name, the
    batch and the model's guess with its probability. Every task has every key (the
    labelling config names them; Label Studio rejects tasks that lack one)."""
    guess = "no model yet"
    if item.predicted is not None:
        guess = f"{item.predicted} (p = {item.confidence or 0.0:.2f})"
    return {
        "file_name": file_name(item.source_uri),
        "batch_id": item.batch_id or "-",
        "model_guess": guess,
    }


def task(item: Selected, folder: str, model_version: str | None) -> dict[str, Any]:
    """The Label Studio task of one image (with the model's guess pre-selected, if any)."""
    data = {"image": f"{LOCAL_FILES}{folder}/{_image_path(item)}", "image_id": item.image_id}
    data |= title(item)
    if item.overlay is not None:
        data["overlay"] = f"{LOCAL_FILES}{folder}/{_overlay_path(item, model_version)}"
    entry: dict[str, Any] = {"data": data}
    if item.predicted is not None and model_version is not None:
        entry["predictions"] = [
            {
                "model_version": model_version,
                "score": float(item.confidence or 0.0),
                "result": choice_result(item.predicted),
            }
        ]
    return entry


def choices(model_classes: Sequence[str], configured: Sequence[str] | None) -> list[str]:
    """The project's choices: the model's classes, then classes the data team added to the
    ``classes`` setting that the model does not know yet (annotators cannot add classes)."""
    extra = [name for name in configured or () if name not in model_classes]
    return [*model_classes, *extra]


class Outbox:
    """Tasks waiting to be imported (one JSON file, replaced atomically), and the project
    they are for (title, classes, overlay view).

    Every change is a read-modify-write under an ``flock`` on ``outbox.lock`` (see
    :meth:`locked`), so a ``handoff`` run overlapping the nightly drops nothing; reads see
    a whole file.
    """

    def __init__(self, path: Path, lock_timeout_s: float = 3600) -> None:
        self.path = path
        self.project_file = path.with_name(f"{path.stem}-project.json")
        self.sent_file = path.with_name(f"{path.stem}-sent.json")
        self.lock_file = path.with_name(f"{path.stem}.lock")
        self.lock_timeout_s = lock_timeout_s

    @contextmanager
    def locked(self, what: str) -> Iterator[None]:
        """Be the outbox's only writer for the block (re-entrant within one thread).

        Waits up to ``lock_timeout_s`` for another holder, then fails naming it.
        """
        held = _held_locks()
        key = str(self.lock_file.absolute())
        if key in held:
            yield
            return
        holder = f"labelling outbox: {what}"
        with locks.exclusive(self.lock_file, holder, timeout_s=self.lock_timeout_s):
            held.add(key)
            try:
                yield
            finally:
                held.discard(key)

    def sent_ids(self) -> set[str]:
        """Images whose task is in Label Studio (so they are not selected again, even while
        Label Studio is down)."""
        return set(json.loads(self.sent_file.read_text())) if self.sent_file.exists() else set()

    def mark_sent(self, image_ids: set[str]) -> None:
        with self.locked("mark tasks sent"):
            _replace(self.sent_file, json.dumps(sorted(self.sent_ids() | image_ids)))

    def pending(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def set_project(
        self, title: str, classes: Sequence[str], overlay: bool, model_version: str | None
    ) -> None:
        spec = {
            "title": title,
            "classes": list(classes),
            "overlay": overlay,
            "model_version": model_version,
        }
        with self.locked("set the project"):
            _replace(self.project_file, json.dumps(spec))

    def project(self) -> dict[str, Any] | None:
        return json.loads(self.project_file.read_text()) if self.project_file.exists() else None

    def pending_ids(self) -> set[str]:
        return {entry["data"]["image_id"] for entry in self.pending()}

    def add(self, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Queue tasks for images not queued yet; how many were added."""
        with self.locked("queue tasks"):
            queued = self.pending()
            known = {_image_id(entry) for entry in queued}
            new = [dict(entry) for entry in tasks if _image_id(entry) not in known]
            self._write(queued + new)
        return len(new)

    def remove(self, image_ids: set[str]) -> None:
        """Drop the tasks of ``image_ids`` (sent ones); tasks queued meanwhile stay."""
        with self.locked("remove sent tasks"):
            self._write([entry for entry in self.pending() if _image_id(entry) not in image_ids])

    def _write(self, tasks: list[dict[str, Any]]) -> None:
        _replace(self.path, json.dumps(tasks, indent=1))


_LOCAL = threading.local()


def _held_locks() -> set[str]:
    """The outbox locks this thread holds (flock is not re-entrant across descriptors)."""
    if not hasattr(_LOCAL, "held"):
        _LOCAL.held = set()
    return _LOCAL.held


def _replace(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


@dataclass(frozen=True)
class OpenQueue:
    """Tasks open now (queued in the outbox, or in Label Studio and not yet annotated)
    against ``labelling.max_open_tasks``."""

    cap: int
    queued: int  # in the outbox
    in_studio: int  # open in Label Studio and not queued again
    known: bool = True  # False: Label Studio down, its open tasks estimated from the sent ones

    @classmethod
    def count(cls, cap: int, queued: set[str], in_studio: set[str], known: bool) -> OpenQueue:
        return cls(cap, len(queued), len(in_studio - queued), known)

    @property
    def open(self) -> int:
        return self.queued + self.in_studio

    @property
    def room(self) -> int:
        return max(self.cap - self.open, 0)

    def why_held_back(self, held_back: int) -> str:
        """Why ``held_back`` selected images were not queued ("" when none were)."""
        if not held_back:
            return ""
        where = "open in Label Studio" if self.known else "sent and not labelled yet"
        return (
            f"{held_back} held back: {self.open} tasks are open ({self.queued} queued in the "
            f"outbox, {self.in_studio} {where}), labelling.max_open_tasks is {self.cap}; "
            "they are queued once annotators work the queue down (or raise the cap)"
        )


@dataclass(frozen=True)
class Queued:
    """Tonight's selection: what joined the outbox, what the open-task cap held back, why."""

    selected: int
    drifted: int  # of the selected, images the drift check flagged
    test_split: int  # of the selected, test-split images (labelling.test_share)
    queued: int
    held_back: int
    open_tasks: int  # after tonight's tasks joined
    to_refresh: int  # open tasks given tonight's champion's guess
    strategy: str
    model_version: str | None  # the champion whose guesses the tasks show (None: no champion)
    why_held_back: str = ""

    def counts(self) -> dict[str, int | str]:
        """The selection by name, for the Prefect artifact."""
        counts: dict[str, int | str] = {
            "selected": self.selected,
            "of which drifted": self.drifted,
            "of which test split": self.test_split,
            "queued": self.queued,
            "held back": self.held_back,
            "open tasks": self.open_tasks,
            "open tasks to refresh": self.to_refresh,
            "strategy": self.strategy,
            "model version": self.model_version or "none yet",
        }
        if self.why_held_back:
            counts["why held back"] = self.why_held_back
        return counts


@dataclass(frozen=True)
class Sent:
    """What a send imported into Label Studio, and where the tasks are (or wait)."""

    imported: int
    refreshed: int  # open tasks given a newer champion's guess
    already_there: int
    where: str  # the project's URL, or the outbox file when no Label Studio runs

    def counts(self) -> dict[str, int | str]:
        """The send by name, for the Prefect artifact."""
        return {
            "imported": self.imported,
            "open tasks refreshed": self.refreshed,
            "already in Label Studio": self.already_there,
            "where": self.where,
        }


@dataclass(frozen=True)
class HandoffResult:
    """A hand-off: tonight's selection queued in the outbox, then the send to Label Studio."""

    queued: Queued
    sent: Sent


def send(client: LabelStudio, project: int, outbox: Outbox) -> Sent:
    """Import the outbox's tasks that have no task yet, give open tasks from an earlier
    champion the newer guess, pin the project to the champion's version, and take the sent
    tasks out of the outbox.

    Holds the outbox throughout, so two sends never import one task twice and nothing
    queued meanwhile is dropped. A failure leaves the outbox as it was; the next call asks
    again which tasks exist.
    """
    with outbox.locked("send to Label Studio"):
        queued = outbox.pending()
        existing = client.existing_tasks(project, [_image_id(entry) for entry in queued])
        missing = [entry for entry in queued if _image_id(entry) not in existing]
        stale = [
            (found.id, entry)
            for entry in queued
            if (found := existing.get(_image_id(entry))) is not None
            and found.open
            and _entry_version(entry) not in (None, found.model_version)
        ]
        client.import_tasks(project, missing)
        for task_id, entry in stale:
            client.refresh_task(task_id, entry)
        version = (outbox.project() or {}).get("model_version")
        written = [*missing, *(entry for _, entry in stale)]
        if version is not None and any(_entry_version(entry) == version for entry in written):
            client.use_model_version(project, version)  # Label Studio accepts only a version it has
        sent = {_image_id(entry) for entry in queued}
        outbox.mark_sent(sent)
        outbox.remove(sent)
    already_there = len(queued) - len(missing) - len(stale)
    return Sent(len(missing), len(stale), already_there, f"{client.url}/projects/{project}")


def _image_id(entry: Mapping[str, Any]) -> str:
    return entry["data"]["image_id"]


def _entry_version(entry: Mapping[str, Any]) -> str | None:
    predictions = entry.get("predictions") or [{}]
    return predictions[0].get("model_version")


@dataclass(frozen=True)
class Prepared:
    """Tonight's images, and how many more were selected than the open-task cap let in."""

    selected: list[Selected]
    held_back: int = 0
    test_split: int = 0  # of the selected, images of the test split (labelling.test_share)


def prepare(
    snapshot: LakeSnapshot,
    embedder_version: str,
    champion: tuple[str, ImageClassifier] | None,
    taken: set[str],
    drifted: Sequence[str],
    settings: LabellingSettings,
    room: int | None = None,
) -> Prepared:
    """Tonight's images, with the champion's guess and overlay: selected from the pool, then
    the test split's model-free share; only the first ``room`` when the open queue is near
    its cap."""
    version, classifier = champion if champion else (None, None)
    tests = sample_test_split(candidates(snapshot, taken, test=True), _test_slots(settings))
    pool = build_pool(snapshot, embedder_version, version, taken, drifted)
    chosen = select(pool, settings.budget - len(tests), settings.strategy, settings.seed)
    kept = (chosen + tests)[:room]  # room None: all
    probabilities: dict[str, Any] = {}
    if pool.probabilities is not None:
        probabilities = {image_id: pool.probabilities[i] for i, image_id in enumerate(pool.ids)}
    if version is not None and tests:
        probabilities |= read_predictions(snapshot.lake_path, version, tests, "probabilities")
    described = _described(snapshot, classifier, kept, probabilities, settings.overlay)
    test_split = len(set(tests) & set(kept))
    return Prepared(described, len(chosen) + len(tests) - len(kept), test_split)


def _test_slots(settings: LabellingSettings) -> int:
    return round(settings.budget * settings.test_share)


def refresh(
    snapshot: LakeSnapshot,
    champion: tuple[str, ImageClassifier],
    image_ids: Sequence[str],
    settings: LabellingSettings,
) -> list[Selected]:
    """Open tasks an earlier champion handed out, with tonight's champion's guess and
    overlay (so every open task is scored, sorted and pre-selected by the same model)."""
    if not image_ids:
        return []
    version, classifier = champion
    scored = read_predictions(snapshot.lake_path, version, image_ids, "probabilities")
    ids = [image_id for image_id in image_ids if image_id in scored]
    return _described(snapshot, classifier, ids, scored, settings.overlay)


def _described(
    snapshot: LakeSnapshot,
    classifier: ImageClassifier | None,
    image_ids: Sequence[str],
    probabilities: Mapping[str, Any],
    overlay: bool,
) -> list[Selected]:
    """``image_ids`` with their stored bytes, the model's guess and its Grad-CAM overlay."""
    if not image_ids:
        return []  # without reading the images table
    stored = snapshot.lookup(image_ids, ["image", "source_uri", "batch_id"])
    pictures = [stored[image_id]["image"] for image_id in image_ids]
    heat = overlays(classifier, pictures) if classifier and overlay else []
    described = []
    for number, (image_id, picture) in enumerate(zip(image_ids, pictures, strict=True)):
        predicted = confidence = None
        if classifier is not None and image_id in probabilities:
            guess = np.asarray(probabilities[image_id])
            predicted = classifier.labels[int(guess.argmax())]
            confidence = float(guess.max())
        row = stored[image_id]
        overlay = heat[number] if heat else None
        described.append(
            Selected(
                image_id,
                picture,
                overlay,
                predicted,
                confidence,
                row["source_uri"],
                row["batch_id"],
            )
        )
    return described
