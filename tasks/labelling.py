"""Prefect tasks of the labelling round trip: Label Studio, label sync, selection and handoff."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyarrow.parquet as pq
from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.labelling.client import LabelStudio, configured_or_running
from visionloop.labelling.handoff import Outbox, Selected, send, write_files
from visionloop.labelling.handoff import task as task_entry
from visionloop.labelling.overlay import overlays
from visionloop.labelling.pool import build_pool
from visionloop.labelling.selection import select
from visionloop.labelling.server import files_root
from visionloop.labelling.sync import collect
from visionloop.lake import commit as lake
from visionloop.lake.snapshot import LakeSnapshot, list_table, row_groups
from visionloop.registry.served_model import model_files
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.training.classifier import ImageClassifier

FOLDER = "visionloop"  # the local-files storage folder, under the document root
OVERLAP = timedelta(seconds=5)  # re-read a little before the cursor; known records are skipped


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def connect_label_studio(settings: Settings) -> LabelStudio | None:
    """The configured or running Label Studio (None: tasks wait in the outbox file)."""
    return configured_or_running(settings)


def _cursor_file(settings: Settings, project: int):
    return settings.labelling_dir / f"sync-cursor-project-{project}.json"


def _known(settings: Settings) -> set[str]:
    known: set[str] = set()
    for table, column in (("label_events", "event_id"), ("label_reviews", "review_id")):
        for part in row_groups(list_table(settings.lake_dir, table), [column]):
            known.update(part.table[column].to_pylist())
    return known


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def sync_annotations(settings: Settings, studio: LabelStudio | None) -> dict[str, Any]:
    """Completed annotations since the cursor → label events and reviews, one lake batch."""
    if studio is None:
        return {"synced": 0, "reason": "no Label Studio configured or running"}
    project = studio.find_project(settings.registered_model_name)
    if project is None:
        return {"synced": 0, "reason": "no labelling project yet"}
    cursor_file = _cursor_file(settings, project)
    cursor = None
    if cursor_file.exists():
        cursor = datetime.fromisoformat(json.loads(cursor_file.read_text())["updated_at"])
    since = cursor - OVERLAP if cursor else None
    labelling = settings.labelling
    with lake.writer(settings, "label sync"):
        result = collect(
            studio.changed_tasks(project, since),
            _known(settings),
            labelling.min_agreement,
            labelling.confident,
            datetime.now(UTC),
            cursor,
        )
        batch_id = f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-labels"
        tables = result.tables()
        if tables:
            staging = lake.stage(settings, batch_id)
            for name, table in tables.items():
                staging.table(name).mkdir()
                pq.write_table(table, staging.table(name) / "part-00000.parquet")
            lake.commit(
                settings,
                batch_id,
                {"batch_id": batch_id, "table": "label_events", **result.counts()},
            )
    if result.cursor is not None:
        cursor_file.parent.mkdir(parents=True, exist_ok=True)
        cursor_file.write_text(json.dumps({"updated_at": result.cursor.isoformat()}))
    counts = result.counts()
    create_table_artifact(
        key="label-sync",
        table=[{"measure": key, "count": value} for key, value in counts.items()],
        description=f"Annotations from {studio.url}, project {project}",
    )
    return {"synced": len(result.events), "held": len(result.reviews), **counts}


def _champion(settings: Settings, tracking: Tracking) -> tuple[str | None, ImageClassifier | None]:
    version = tracking.alias_version(CHAMPION)
    if version is None:
        return None, None
    model_pt, temperature = model_files(tracking.download_model(version, settings.models_dir))
    return version, ImageClassifier.load(model_pt, temperature)


def _stored(snapshot: LakeSnapshot, image_ids: list[str]) -> dict[str, bytes]:
    wanted, found = set(image_ids), {}
    for part in snapshot.row_groups(["image_id", "image"]):
        for row in part.table.to_pylist():
            if row["image_id"] in wanted:
                found[row["image_id"]] = row["image"]
    return found


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def hand_off(
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    studio: LabelStudio | None,
    embedder_version: str,
    drifted: list[str],
) -> dict[str, Any]:
    """Select tonight's images, queue their tasks, and import what Label Studio lacks."""
    logger = get_run_logger()
    version, classifier = _champion(settings, tracking)
    labelling = settings.labelling
    overlay = labelling.overlay and classifier is not None
    classes = classifier.labels if classifier else list(snapshot.classes)
    outbox = Outbox(settings.labelling_dir / "outbox.json")
    project = None
    open_tasks = outbox.pending_ids()
    if studio is not None:
        storage = (
            str(files_root(settings) / FOLDER)
            if studio.url.endswith(f":{labelling.port}")
            else None
        )
        project = studio.project(settings.registered_model_name, classes, overlay, storage)
        open_tasks |= studio.open_tasks(project)
    pool = build_pool(snapshot, embedder_version, version, open_tasks, drifted)
    chosen = select(pool, labelling.budget, labelling.strategy, labelling.seed)
    images = _stored(snapshot, chosen)
    rows = {image_id: i for i, image_id in enumerate(pool.ids)}
    pictures = [images[image_id] for image_id in chosen]
    heat = overlays(classifier, pictures) if overlay else [None] * len(chosen)
    selected = []
    for image_id, picture, heat_map in zip(chosen, pictures, heat, strict=True):
        predicted = confidence = None
        if pool.probabilities is not None:
            probabilities = pool.probabilities[rows[image_id]]
            predicted, confidence = classes[int(probabilities.argmax())], float(probabilities.max())
        selected.append(Selected(image_id, picture, heat_map, predicted, confidence))
    write_files(files_root(settings), FOLDER, selected, version or "none")
    queued = outbox.add([task_entry(item, FOLDER, version) for item in selected])
    summary: dict[str, Any] = {
        "pool": len(pool),
        "selected": len(chosen),
        "drifted selected": sum(1 for image_id in chosen if image_id in set(drifted)),
        "queued": queued,
        "strategy": labelling.strategy if version else "cold start (k-means medoids)",
    }
    if studio is not None and project is not None:
        sent = send(studio, project, outbox)
        summary |= {"imported": sent.imported, "already in Label Studio": sent.already_there}
        summary["where"] = f"{studio.url}/projects/{project}"
    else:
        summary["where"] = f"{outbox.path} (no Label Studio running: import it there)"
    logger.info("handoff: %s", summary)
    create_table_artifact(
        key="handoff",
        table=[{"measure": key, "value": str(value)} for key, value in summary.items()],
        description="Images handed to annotators tonight",
    )
    return summary
