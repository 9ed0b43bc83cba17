"""Prefect tasks of the labelling round trip: thin wrappers over ``visionloop.labelling``.

Queueing and sending are separate tasks: tonight's selection joins the outbox once, and
only sending retries, so a retry never selects a second batch; a Label Studio that stays
down fails the flow with a clear message and the tasks wait for the next run.
"""

from __future__ import annotations

from collections.abc import Mapping

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NONE

from visionloop.labelling.client import LabelStudio, configured_or_running
from visionloop.labelling.handoff import (
    OpenQueue,
    Outbox,
    Queued,
    Sent,
    choices,
    prepare,
    refresh,
    send,
    write_files,
)
from visionloop.labelling.handoff import task as task_entry
from visionloop.labelling.server import files_root
from visionloop.labelling.sync import SyncResult, run_sync
from visionloop.lake.snapshot import LakeSnapshot
from visionloop.registry.served_model import model_files
from visionloop.registry.tracking import CHAMPION, Tracking
from visionloop.settings import Settings
from visionloop.training.classifier import ImageClassifier

FOLDER = "visionloop"  # the local-files storage folder, under the document root


def outbox(settings: Settings) -> Outbox:
    return Outbox(settings.labelling_dir / "outbox.json", settings.lake_lock_timeout_s)


def _table(key: str, counts: Mapping[str, object], description: str) -> None:
    rows = [{"measure": name, "value": str(value)} for name, value in counts.items()]
    create_table_artifact(key=key, table=rows, description=description)


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def connect_label_studio(settings: Settings) -> LabelStudio | None:
    """The configured or running Label Studio (None: tasks wait in the outbox file)."""
    return configured_or_running(settings)


@task(retries=2, retry_delay_seconds=10, cache_policy=NONE)
def sync_annotations(settings: Settings, studio: LabelStudio | None) -> SyncResult:
    """Completed annotations since the cursor become label events (or reviews)."""
    if studio is None:
        return SyncResult(skipped="no Label Studio configured or running")
    project = studio.find_project(settings.registered_model_name)
    if project is None:
        return SyncResult(skipped="no labelling project yet")
    synced = run_sync(settings, studio, project)
    _table("label-sync", synced.counts(), f"Annotations from {studio.url}, project {project}")
    return synced


def _champion(settings: Settings, tracking: Tracking) -> tuple[str, ImageClassifier] | None:
    version = tracking.alias_version(CHAMPION)
    if version is None:
        return None
    model_pt, temperature = model_files(tracking.download_model(version, settings.models_dir))
    return version, ImageClassifier.load(model_pt, temperature)


@task(cache_policy=NONE)
def queue_for_annotation(
    settings: Settings,
    snapshot: LakeSnapshot,
    tracking: Tracking,
    studio: LabelStudio | None,
    embedder_version: str,
    drifted: list[str],
) -> Queued:
    """Select tonight's images (drifted first) and queue their tasks in the outbox, up to
    ``labelling.max_open_tasks`` open tasks; the summary says how many were held back."""
    champion = _champion(settings, tracking)
    known = champion[1].labels if champion else list(snapshot.classes)
    classes = choices(known, settings.classes)
    overlay = settings.labelling.overlay and champion is not None
    version = champion[0] if champion else None
    box = outbox(settings)
    with box.locked("queue tonight's tasks"):  # counting, selecting, queueing: one step
        box.set_project(settings.registered_model_name, classes, overlay, version)
        in_studio = _open_in_studio(settings, studio)
        queue = _open_queue(settings, snapshot, box, in_studio)
        taken = box.pending_ids() | box.sent_ids() | set(in_studio or {})
        prepared = prepare(
            snapshot, embedder_version, champion, taken, drifted, settings.labelling, queue.room
        )
        chosen = prepared.selected
        stale = sorted(i for i, made_by in (in_studio or {}).items() if made_by != version)
        refreshed = refresh(snapshot, champion, stale, settings.labelling) if champion else []
        write_files(files_root(settings), FOLDER, [*chosen, *refreshed], version or "none")
        queued = box.add([task_entry(item, FOLDER, version) for item in chosen])
        box.add([task_entry(item, FOLDER, version) for item in refreshed])  # open already
    summary = Queued(
        selected=len(chosen),
        drifted=len(set(drifted) & {item.image_id for item in chosen}),
        test_split=prepared.test_split,
        queued=queued,
        held_back=prepared.held_back,
        open_tasks=queue.open + queued,
        to_refresh=len(refreshed),
        strategy=settings.labelling.strategy if champion else "cold start: k-means medoids",
        model_version=version,
        why_held_back=queue.why_held_back(prepared.held_back),
    )
    if summary.why_held_back:
        get_run_logger().warning("handoff: %s", summary.why_held_back)
    _table("handoff-selection", summary.counts(), "Images selected for annotation tonight")
    return summary


def _open_in_studio(settings: Settings, studio: LabelStudio | None) -> dict[str, str | None] | None:
    """Open tasks in the project (``image_id -> model version``); None without a studio."""
    if studio is None:
        return None
    project = studio.find_project(settings.registered_model_name)
    return studio.open_tasks(project) if project else {}


def _open_queue(
    settings: Settings,
    snapshot: LakeSnapshot,
    box: Outbox,
    in_studio: dict[str, str | None] | None,
) -> OpenQueue:
    """Tasks open now; with Label Studio down (``in_studio`` None), every sent task whose
    image has no label yet counts as open."""
    queued, cap = box.pending_ids(), settings.labelling.max_open_tasks
    if in_studio is not None:
        return OpenQueue.count(cap, queued, set(in_studio), known=True)
    unlabelled = box.sent_ids() - set(snapshot.label_sources())
    return OpenQueue.count(cap, queued, unlabelled, known=False)


@task(retries=2, retry_delay_seconds=5, cache_policy=NONE)
def send_to_label_studio(settings: Settings) -> Sent:
    """Import the outbox (tasks Label Studio lacks only); without one, keep it as a file."""
    box = outbox(settings)
    studio = configured_or_running(settings)  # raises, naming the fix, if configured but down
    if studio is None:
        sent = Sent(0, 0, 0, f"{box.path}: no Label Studio running, import it there")
    else:
        spec = box.project() or {
            "title": settings.registered_model_name,
            "classes": [],
            "overlay": False,
        }
        storage = None if settings.labelling.url else str(files_root(settings) / FOLDER)
        project = studio.project(spec["title"], spec["classes"], spec["overlay"], storage)
        sent = send(studio, project, box)
    get_run_logger().info("handoff: %s", sent)
    _table("handoff", sent.counts(), "Tasks handed to Label Studio")
    return sent
