"""Handing selected images to annotators: image files, tasks, the outbox, idempotent imports.

Each selected image is written (with its Grad-CAM overlay) under the local-files root, and
its task — the image, the overlay, its ``image_id``, and the champion's prediction as a
pre-selected choice with ``model_version`` and ``score`` — joins the **outbox**, a file
under the data home. :func:`send` imports the outbox: it asks Label Studio which images
already have a task (Label Studio does not deduplicate imports), imports only the others,
and keeps whatever could not be sent for the next run. Without a Label Studio the outbox
is the ready-to-import task file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionloop.labelling.client import LabelStudio, choice_result

LOCAL_FILES = "/data/local-files/?d="


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
        _write(root / folder / "images" / f"{item.image_id}.png", item.image)
        if item.overlay is not None:
            _write(
                root / folder / "overlays" / model_version / f"{item.image_id}.png", item.overlay
            )


def _write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".tmp")
    temporary.write_bytes(data)
    os.replace(temporary, path)


def task(item: Selected, folder: str, model_version: str | None) -> dict[str, Any]:
    """The Label Studio task of one image (with the model's guess pre-selected, if any)."""
    data = {"image": f"{LOCAL_FILES}{folder}/images/{item.image_id}.png", "image_id": item.image_id}
    if item.overlay is not None:
        data["overlay"] = f"{LOCAL_FILES}{folder}/overlays/{model_version}/{item.image_id}.png"
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


class Outbox:
    """Tasks waiting to be imported, one JSON file, replaced atomically."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def pending(self) -> list[dict[str, Any]]:
        return json.loads(self.path.read_text()) if self.path.exists() else []

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
    already_there: int


def send(client: LabelStudio, project: int, outbox: Outbox) -> Sent:
    """Import the outbox's tasks that have no task yet, then empty the outbox.

    A failure leaves the outbox as it was; the next call asks again which tasks exist.
    """
    queued = outbox.pending()
    existing = client.existing_tasks(project, [entry["data"]["image_id"] for entry in queued])
    missing = [entry for entry in queued if entry["data"]["image_id"] not in existing]
    client.import_tasks(project, missing)
    outbox.keep_only(set())
    return Sent(len(missing), len(queued) - len(missing))
