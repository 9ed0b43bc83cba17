"""Handing selected images to annotators: image files, tasks, the outbox, idempotent imports.

Each selected image is written (with its Grad-CAM overlay) under the local-files root, and
its task — the image, the overlay, its ``image_id``, and the champion's prediction as a
pre-selected choice with ``model_version`` and ``score`` — joins the **outbox**, a file
under the data home. :func:`send` imports the outbox: it asks Label Studio which images
already have a task (Label Studio does not deduplicate imports), imports only the others,
and keeps whatever could not be sent for the next run. Open tasks an earlier champion handed
out get tonight's champion's guess and overlay (:func:`refresh`), so the whole queue is
scored, sorted and pre-selected by one model. Without a Label Studio the outbox is the
ready-to-import task file.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from visionloop.labelling.client import LabelStudio, choice_result
from visionloop.labelling.overlay import overlays
from visionloop.labelling.pool import build_pool
from visionloop.labelling.selection import select
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


def task(item: Selected, folder: str, model_version: str | None) -> dict[str, Any]:
    """The Label Studio task of one image (with the model's guess pre-selected, if any)."""
    data = {"image": f"{LOCAL_FILES}{folder}/{_image_path(item)}", "image_id": item.image_id}
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
    they are for (title, classes, overlay view)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.project_file = path.with_name(f"{path.stem}-project.json")
        self.sent_file = path.with_name(f"{path.stem}-sent.json")

    def sent_ids(self) -> set[str]:
        """Images whose task is in Label Studio (so they are not selected again, even while
        Label Studio is down)."""
        return set(json.loads(self.sent_file.read_text())) if self.sent_file.exists() else set()

    def mark_sent(self, image_ids: set[str]) -> None:
        temporary = self.sent_file.with_suffix(".tmp")
        temporary.write_text(json.dumps(sorted(self.sent_ids() | image_ids)))
        os.replace(temporary, self.sent_file)

    def pending(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

    def set_project(
        self, title: str, classes: Sequence[str], overlay: bool, model_version: str | None
    ) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        spec = {
            "title": title,
            "classes": list(classes),
            "overlay": overlay,
            "model_version": model_version,
        }
        self.project_file.write_text(json.dumps(spec))

    def project(self) -> dict[str, Any] | None:
        return json.loads(self.project_file.read_text()) if self.project_file.exists() else None

    def pending_ids(self) -> set[str]:
        return {entry["data"]["image_id"] for entry in self.pending()}

    def add(self, tasks: Sequence[Mapping[str, Any]]) -> int:
        """Queue tasks for images not queued yet; how many were added."""
        queued = self.pending()
        known = {entry["data"]["image_id"] for entry in queued}
        new = [dict(entry) for entry in tasks if entry["data"]["image_id"] not in known]
        self._write(queued + new)
        return len(new)

    def keep_only(self, image_ids: set[str]) -> None:
        self._write([entry for entry in self.pending() if entry["data"]["image_id"] in image_ids])

    def _write(self, tasks: list[dict[str, Any]]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(tasks, indent=1))
        os.replace(temporary, self.path)


@dataclass(frozen=True)
class Sent:
    imported: int
    refreshed: int  # open tasks given a newer champion's guess
    already_there: int


def send(client: LabelStudio, project: int, outbox: Outbox) -> Sent:
    """Import the outbox's tasks that have no task yet, give open tasks from an earlier
    champion the newer guess, pin the project to the champion's version, empty the outbox.

    A failure leaves the outbox as it was; the next call asks again which tasks exist.
    """
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
    outbox.mark_sent({_image_id(entry) for entry in queued})
    outbox.keep_only(set())
    return Sent(len(missing), len(stale), len(queued) - len(missing) - len(stale))


def _image_id(entry: Mapping[str, Any]) -> str:
    return entry["data"]["image_id"]


def _entry_version(entry: Mapping[str, Any]) -> str | None:
    predictions = entry.get("predictions") or [{}]
    return predictions[0].get("model_version")


def prepare(
    snapshot: LakeSnapshot,
    embedder_version: str,
    champion: tuple[str, ImageClassifier] | None,
    taken: set[str],
    drifted: Sequence[str],
    settings: LabellingSettings,
) -> list[Selected]:
    """Tonight's images: selected from the pool, with the champion's guess and overlay."""
    version, classifier = champion if champion else (None, None)
    pool = build_pool(snapshot, embedder_version, version, taken, drifted)
    chosen = select(pool, settings.budget, settings.strategy, settings.seed)
    probabilities = (
        {}
        if pool.probabilities is None
        else {image_id: pool.probabilities[i] for i, image_id in enumerate(pool.ids)}
    )
    return _described(snapshot, classifier, chosen, probabilities, settings.overlay)


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
    wanted, stored = set(image_ids), {}
    for part in snapshot.row_groups(["image_id", "image"]):
        for row in part.table.to_pylist():
            if row["image_id"] in wanted:
                stored[row["image_id"]] = row["image"]
    pictures = [stored[image_id] for image_id in image_ids]
    heat = overlays(classifier, pictures) if classifier and overlay else []
    described = []
    for number, (image_id, picture) in enumerate(zip(image_ids, pictures, strict=True)):
        predicted = confidence = None
        if classifier is not None and image_id in probabilities:
            guess = np.asarray(probabilities[image_id])
            predicted = classifier.labels[int(guess.argmax())]
            confidence = float(guess.max())
        described.append(
            Selected(image_id, picture, heat[number] if heat else None, predicted, confidence)
        )
    return described
