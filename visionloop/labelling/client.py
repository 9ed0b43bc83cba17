"""The Label Studio client of visionloop: projects, tasks and annotations over the SDK.

Built once per flow (:meth:`LabelStudio.connect`) and passed down. A server that does not
answer raises :class:`~visionloop.labelling.server.LabelStudioUnavailableError` naming the
URL and the fix; the SDK's own retries are kept short so an outage fails in seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from xml.sax.saxutils import quoteattr

from visionloop.labelling.server import LabelStudioUnavailableError, local_url, token
from visionloop.settings import Settings

CHOICES, IMAGE, OVERLAY = "label", "image", "overlay"
LOOKUP_CHUNK = 50  # image ids per task-lookup query
STORAGE_FOLDER = "visionloop"  # under the local-files document root
VIEW_TITLE = "Most uncertain first"


def labelling_config(classes: Sequence[str], overlay: bool) -> str:
    """A title (the source file's name; the batch, the model's guess and the image id), the
    image, its Grad-CAM overlay, and one choice per class (single choice).

    Class names come from landing folder names: each is XML-escaped (``a&b``, ``<b>``,
    quotes), so Label Studio shows and returns it exactly.
    """
    choices = "\n".join(f"    <Choice value={quoteattr(name)}/>" for name in classes)
    second = f'\n    <Image name="{OVERLAY}" value="${OVERLAY}"/>' if overlay else ""
    return f"""<View>
  <Header value="$file_name" size="4"/>
  <Header value="batch $batch_id · model's guess: $model_guess · id $image_id" size="6"/>
  <View style="display: flex; gap: 8px">
    <Image name="{IMAGE}" value="${IMAGE}" zoom="true"/>{second}
  </View>
  <Choices name="{CHOICES}" toName="{IMAGE}" choice="single" showInline="true" required="true">
{choices}
  </Choices>
</View>"""


def choice_result(label: str) -> list[dict[str, Any]]:
    return [
        {"from_name": CHOICES, "to_name": IMAGE, "type": "choices", "value": {"choices": [label]}}
    ]


def timestamp(value: Any) -> datetime:
    """Label Studio returns times as datetimes or ISO strings, depending on the serializer."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    return datetime.fromisoformat(str(value).replace("Z", "+00:00")).astimezone(UTC)


def _query_time(moment: datetime) -> str:
    """The one datetime form Label Studio's task filters accept."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@dataclass(frozen=True)
class Annotation:
    id: int
    task_id: int
    annotator: str
    label: str | None  # None: skipped/cancelled, or no choice made
    cancelled: bool
    updated_at: datetime


@dataclass(frozen=True)
class ExistingTask:
    """What the handoff needs to know of an image's task in Label Studio."""

    id: int
    open: bool  # nobody has completed it yet
    model_version: str | None  # of its latest prediction


@dataclass(frozen=True)
class Task:
    id: int
    image_id: str
    updated_at: datetime
    annotations: list[Annotation]
    predicted: str | None
    confidence: float | None


class LabelStudio:
    """One Label Studio server, reached with one token."""

    def __init__(self, url: str, api_key: str, timeout_s: float = 60) -> None:
        from label_studio_sdk import LabelStudio as Client

        self.url = url.rstrip("/")
        self.sdk = Client(base_url=self.url, api_key=api_key, timeout=timeout_s)
        self._emails: dict[int, str] = {}

    @classmethod
    def connect(cls, settings: Settings) -> LabelStudio:
        """The configured server (``labelling.url``) or the local one; probed once."""
        url = settings.labelling.url or local_url(settings)
        client = cls(url, token(settings))
        client.probe()
        return client

    def probe(self) -> None:
        import httpx
        from label_studio_sdk.core.api_error import ApiError

        try:
            self.sdk.users.whoami(request_options={"max_retries": 0, "timeout_in_seconds": 10})
        except (httpx.TransportError, ApiError) as error:
            fix = (
                "check the token (VISIONLOOP_LABELLING__TOKEN)"
                if isinstance(error, ApiError) and error.status_code in (401, 403)
                else "start it with `visionloop label-studio` (or `make serve`), or set "
                "VISIONLOOP_LABELLING__URL to a reachable Label Studio"
            )
            raise LabelStudioUnavailableError(
                f"Label Studio at {self.url} is unreachable ({type(error).__name__}: "
                f"{str(error)[:200]}); {fix}"
            ) from error

    # ------------------------------------------------------------------ projects

    def find_project(self, title: str) -> int | None:
        found = next((p for p in self.sdk.projects.list(title=title) if p.title == title), None)
        return None if found is None else int(found.id)

    def project(
        self, title: str, classes: Sequence[str], overlay: bool, storage: str | None
    ) -> int:
        """The project called ``title`` with a config for ``classes`` (created or updated),
        local-files storage on ``storage``, and a view sorted by the prediction score."""
        config = labelling_config(classes, overlay)
        project = self.find_project(title)
        if project is None:
            project = self.sdk.projects.create(
                title=title,
                label_config=config,
                show_skip_button=True,
                description="Images the model is least sure about. visionloop reads the "
                "labels back every night.",
            ).id
        elif self.sdk.projects.get(id=project).label_config != config:
            self.sdk.projects.update(id=project, label_config=config)  # new classes join
        if storage is not None:
            self._storage(int(project), storage)
        self._score_view(int(project))
        return int(project)

    def _storage(self, project: int, path: str) -> None:
        existing = self.sdk.import_storage.local.list(project=project)
        if not any(item.path == path for item in existing):
            self.sdk.import_storage.local.create(
                project=project, path=path, title="visionloop images", use_blob_urls=True
            )

    def _score_view(self, project: int) -> None:
        views = self.sdk.views.list(project=project)
        if not any(view.data.get("title") == VIEW_TITLE for view in views):
            self.sdk.views.create(
                project=project,
                data={
                    "title": VIEW_TITLE,
                    "ordering": ["tasks:predictions_score"],  # lowest confidence first
                    "filters": {"conjunction": "and", "items": []},
                },
            )

    # ------------------------------------------------------------------ tasks

    def existing_tasks(self, project: int, image_ids: Iterable[str]) -> dict[str, ExistingTask]:
        """The tasks of those images that already have one in the project, by ``image_id``.

        Label Studio does not deduplicate imports: this is what keeps reruns idempotent.
        """
        found: dict[str, ExistingTask] = {}
        ids = list(image_ids)
        for start in range(0, len(ids), LOOKUP_CHUNK):
            items = [
                {
                    "filter": "filter:tasks:data.image_id",
                    "operator": "equal",
                    "type": "String",
                    "value": image_id,
                }
                for image_id in ids[start : start + LOOKUP_CHUNK]
            ]
            query = {"filters": {"conjunction": "or", "items": items}}
            for task in self.sdk.tasks.list(
                project=project, query=json.dumps(query), fields="all", page_size=200
            ):
                found[task.data["image_id"]] = ExistingTask(
                    int(task.id), task.completed_at is None, _model_version(task)
                )
        return found

    def import_tasks(self, project: int, tasks: list[dict[str, Any]]) -> list[int]:
        if not tasks:
            return []
        response = self.sdk.projects.import_tasks(id=project, request=tasks, return_task_ids=True)
        return [int(task_id) for task_id in response.task_ids]

    def refresh_task(self, task_id: int, entry: Mapping[str, Any]) -> None:
        """Give an open task ``entry``'s data and prediction (a newer champion's guess)."""
        self.sdk.tasks.update(id=str(task_id), data=entry["data"])
        for prediction in entry.get("predictions", []):
            self.sdk.predictions.create(task=task_id, **prediction)

    def use_model_version(self, project: int, model_version: str) -> None:
        """Show, score and sort tasks by ``model_version``'s predictions.

        Label Studio pins a project to the version of the first predictions it imported;
        tasks whose predictions come from another version show no pre-selection and sort
        as if unscored.
        """
        if self.sdk.projects.get(id=project).model_version != model_version:
            self.sdk.projects.update(id=project, model_version=model_version)

    def open_tasks(self, project: int) -> dict[str, str | None]:
        """Tasks nobody has completed yet: ``image_id -> model version`` of their latest
        prediction."""
        query = {
            "filters": {
                "conjunction": "and",
                "items": [
                    {
                        "filter": "filter:tasks:completed_at",
                        "operator": "empty",
                        "type": "Datetime",
                        "value": True,
                    }
                ],
            }
        }
        tasks = self.sdk.tasks.list(
            project=project, query=json.dumps(query), fields="all", page_size=200
        )
        return {task.data["image_id"]: _model_version(task) for task in tasks}

    def changed_tasks(self, project: int, since: datetime | None) -> Iterator[Task]:
        """Tasks updated after ``since`` (any annotation change bumps it), oldest first."""
        items = []
        if since is not None:
            items.append(
                {
                    "filter": "filter:tasks:updated_at",
                    "operator": "greater",
                    "type": "Datetime",
                    "value": _query_time(since),
                }
            )
        query = {
            "filters": {"conjunction": "and", "items": items},
            "ordering": ["tasks:updated_at"],
        }
        for task in self.sdk.tasks.list(
            project=project, query=json.dumps(query), fields="all", page_size=200
        ):
            yield self._task(task)

    def _task(self, task: Any) -> Task:
        predicted, confidence = None, None
        if latest := _latest_prediction(task):
            chosen = latest.get("result") or []
            predicted = chosen[0]["value"]["choices"][0] if chosen else None
            confidence = latest.get("score")
        annotations = [self._annotation(int(task.id), item) for item in task.annotations or []]
        return Task(
            int(task.id),
            task.data["image_id"],
            timestamp(task.updated_at),
            annotations,
            predicted,
            confidence,
        )

    def _annotation(self, task_id: int, item: Any) -> Annotation:
        item = item if isinstance(item, dict) else item.dict()
        choices = [
            choice
            for result in item.get("result") or []
            if result.get("from_name") == CHOICES
            for choice in result.get("value", {}).get("choices", [])
        ]
        return Annotation(
            id=int(item["id"]),
            task_id=task_id,
            annotator=self.email(item.get("completed_by")),
            label=choices[0] if choices else None,
            cancelled=bool(item.get("was_cancelled")),
            updated_at=timestamp(item.get("updated_at") or item.get("created_at")),
        )

    def email(self, user: Any) -> str:
        if isinstance(user, dict):
            return str(user.get("email") or user.get("id"))
        if user is None:
            return "unknown"
        if not self._emails:
            self._emails = {int(u.id): u.email for u in self.sdk.users.list()}
        return self._emails.get(int(user), str(user))


def _latest_prediction(task: Any) -> dict[str, Any] | None:
    """The newest of a task's predictions (Label Studio lists them in no set order)."""
    predictions = [p if isinstance(p, dict) else p.dict() for p in task.predictions or []]
    return max(predictions, key=lambda p: p.get("id") or 0, default=None)


def _model_version(task: Any) -> str | None:
    latest = _latest_prediction(task)
    return None if latest is None else latest.get("model_version")


def configured_or_running(settings: Settings) -> LabelStudio | None:
    """The configured Label Studio (which must answer), else the local one if it is up, else
    None: the night's tasks then wait in the outbox, a ready-to-import task file."""
    from visionloop.labelling.server import healthy

    if settings.labelling.url or healthy(local_url(settings)):
        return LabelStudio.connect(settings)
    return None
