"""Alerts that reach people: custom Prefect events the flows emit, and the automations that
turn them (and a failed or crashed night) into one webhook message each.

The flows call the ``emit_*`` helpers (one line each); ``visionloop deploy`` calls
:func:`apply_alerts`, which saves one notification block and creates or updates one
automation per :data:`ALERTS` entry by name (re-running it never duplicates them; with no
``alerts.webhook_url`` it removes them). An event's id is derived from the run and what it
is about, so a task retry that emits it again sends nothing.

Payload of every custom event: ``summary``, ``reason``, ``run`` (the flow run, or the
command outside one), ``link`` (the run's Prefect UI page, or the resource's event feed),
``page`` (the report to open over HTTP, see :mod:`visionloop.web`, where there is one) and
the details of the alert.
"""

from __future__ import annotations

import getpass
import socket
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from visionloop.monitoring.drift import DriftResult
    from visionloop.quality.gate import GateResult
    from visionloop.registry.promotion import PromotionResult, RollbackResult
    from visionloop.settings import Settings

BATCH_HELD = "visionloop.batch.held"
DRIFT_FLAGGED = "visionloop.drift.flagged"
LEAKAGE_FAILED = "visionloop.leakage.failed"
MODEL_PROMOTED = "visionloop.model.promoted"
MODEL_ROLLED_BACK = "visionloop.model.rolled-back"
NIGHT_ENDED_BADLY = ("prefect.flow-run.Failed", "prefect.flow-run.Crashed")
NIGHTLY_FLOW = "nightly"
BLOCK_NAME = "visionloop-alerts"
MAX_REASON_CHARS = 3000  # a Slack message stays readable; the link has the rest
_ID_NAMESPACE = uuid.UUID("5b0f7f0e-3c55-4d0a-9a57-6c1f0a1e7a11")
_EMITTED: set[uuid.UUID] = set()  # ids this process sent: the server rejects a repeated id

#: The body every custom-event alert sends (Jinja, rendered by the Prefect server).
EVENT_BODY = (
    "{{ event.payload.summary }}\n"
    "Reason: {{ event.payload.reason }}\n"
    "Run: {{ event.payload.run }}\n"
    "Link: {{ event.payload.link }}"
    "{% if event.payload.page %}\nPage: {{ event.payload.page }}{% endif %}"
)
NIGHT_BODY = (
    "The nightly run {{ flow_run.name }} ended {{ flow_run.state.name }}.\n"
    "Reason: {{ flow_run.state.message }}\n"
    "Run: nightly/{{ flow_run.name }}\n"
    "Link: {{ flow_run|ui_url }}"
)


@dataclass(frozen=True)
class Alert:
    """One automation: the events that fire it and the message it sends."""

    name: str
    events: tuple[str, ...]
    subject: str
    body: str = EVENT_BODY
    match: dict[str, str] = field(default_factory=dict)
    match_related: dict[str, str] = field(default_factory=dict)


ALERTS: tuple[Alert, ...] = (
    Alert(
        "visionloop: night failed",
        NIGHT_ENDED_BADLY,
        "visionloop: night {{ flow_run.name }} {{ flow_run.state.name }}",
        NIGHT_BODY,
        match={"prefect.resource.id": "prefect.flow-run.*"},
        match_related={"prefect.resource.role": "flow", "prefect.resource.name": NIGHTLY_FLOW},
    ),
    Alert("visionloop: batch held", (BATCH_HELD,), "visionloop: batch held by the quality gate"),
    Alert("visionloop: drift flagged", (DRIFT_FLAGGED,), "visionloop: drift flagged"),
    Alert("visionloop: leakage gate failed", (LEAKAGE_FAILED,), "visionloop: leakage gate failed"),
    Alert("visionloop: model promoted", (MODEL_PROMOTED,), "visionloop: new champion"),
    Alert(
        "visionloop: model rolled back", (MODEL_ROLLED_BACK,), "visionloop: champion rolled back"
    ),
)


@dataclass(frozen=True)
class RunRef:
    """The flow run an event comes from (``id`` None outside one) and its Prefect UI page."""

    id: str | None
    name: str
    link: str | None


@dataclass(frozen=True)
class AlertEvent:
    """A custom event as emitted: name, primary resource, payload and its deterministic id."""

    event: str
    resource: dict[str, str]
    payload: dict[str, Any]
    id: uuid.UUID
    related: list[dict[str, str]] = field(default_factory=list)


# Pure: the events, from results and the run they belong to.


def alert_event(
    event: str,
    kind: str,
    key: str,
    summary: str,
    reason: str,
    run: RunRef,
    page: str | None = None,
    **details: Any,
) -> AlertEvent:
    """The event ``event`` about resource ``visionloop.<kind>.<key>``, raised in ``run``;
    ``page`` is the HTTP address of its report."""
    resource_id = f"visionloop.{kind}.{key}"
    link = run.link or _events_link(resource_id)
    if len(reason) > MAX_REASON_CHARS:
        reason = reason[: MAX_REASON_CHARS - 1] + "…"
    payload = {"summary": summary, "reason": reason, "run": run.name, "link": link}
    payload |= ({"page": page} if page else {}) | details
    related = []
    if run.id is not None:
        related.append(
            {
                "prefect.resource.id": f"prefect.flow-run.{run.id}",
                "prefect.resource.role": "flow-run",
                "prefect.resource.name": run.name,
            }
        )
    return AlertEvent(
        event,
        {"prefect.resource.id": resource_id, "prefect.resource.name": key},
        payload,
        uuid.uuid5(_ID_NAMESPACE, f"{event}|{run.id or run.name}|{key}"),
        related,
    )


def batch_held_event(gate: GateResult, held_at: Path, data_docs: str, run: RunRef) -> AlertEvent:
    """``data_docs``: the HTTP address of the gate's Data Docs page."""
    failed = len(gate.critical_failures)
    return alert_event(
        BATCH_HELD,
        "batch",
        gate.batch_id,
        f"Batch {gate.batch_id} failed {failed} critical expectation(s) and is held at {held_at}.",
        gate.message,
        run,
        data_docs,
        batch_id=gate.batch_id,
        held_at=str(held_at),
    )


def drift_event(result: DriftResult, report: str, batch_ids: list[str], run: RunRef) -> AlertEvent:
    """``report``: the HTTP address of the Evidently report."""
    key = "-".join(sorted(batch_ids))[:120] or "lake"
    return alert_event(
        DRIFT_FLAGGED,
        "batches",
        key,
        f"Drift in {len(batch_ids)} batch(es) ({result.current_rows} images) against the "
        f"champion's training images: {result.votes} of {len(result.methods)} tests agree.",
        result.reason,
        run,
        report,
        batch_ids=sorted(batch_ids),
    )


def leakage_event(gate: GateResult, data_docs: str, run: RunRef) -> AlertEvent:
    """``data_docs``: the HTTP address of the leakage expectation's Data Docs page."""
    stats = gate.stats
    return alert_event(
        LEAKAGE_FAILED,
        "batches",
        gate.batch_id,
        f"Leakage rate {stats.get('leakage_rate', float('nan')):.4g} in {gate.batch_id} "
        f"({stats.get('leaked_images', '?')} of {stats.get('images', '?')} images).",
        gate.message,
        run,
        data_docs,
    )


def promoted_event(result: PromotionResult, run: RunRef) -> AlertEvent:
    was = f"v{result.champion_version}" if result.champion_version else "no champion"
    return alert_event(
        MODEL_PROMOTED,
        "model",
        f"{result.name}.v{result.challenger_version}",
        f"{result.name} v{result.challenger_version} is the champion (was {was}).",
        result.decision.reason,
        run,
        model=result.name,
        version=result.challenger_version,
        previous=result.champion_version,
    )


def rolled_back_event(result: RollbackResult, run: RunRef) -> AlertEvent:
    demoted = f"v{result.demoted_version}" if result.demoted_version else "none"
    return alert_event(
        MODEL_ROLLED_BACK,
        "model",
        f"{result.name}.v{result.champion_version}",
        f"{result.name} v{result.champion_version} is the champion again; {demoted} rolled back.",
        f"rollback by {getpass.getuser()}: {demoted} will never be promoted again",
        run,
        model=result.name,
        version=result.champion_version,
        demoted=result.demoted_version,
    )


def _events_link(resource_id: str) -> str | None:
    from prefect.settings import PREFECT_UI_URL

    ui = PREFECT_UI_URL.value()
    return f"{ui.rstrip('/')}/events?resource={resource_id}" if ui else None


# Emitting: one line in the flows and tasks.


def current_run() -> RunRef:
    """The flow run this code runs in, or the command line outside one."""
    from prefect.runtime import flow_run

    run_id = flow_run.get_id()
    if run_id is None:
        return RunRef(None, f"visionloop command on {socket.gethostname()}", None)
    from prefect.utilities.urls import url_for

    name = f"{flow_run.get_flow_name()}/{flow_run.get_name()}"
    return RunRef(run_id, name, url_for("flow-run", obj_id=run_id))


def emit(alert: AlertEvent) -> None:
    """Send the event to the Prefect API in use; outside a flow run only to a running server."""
    from prefect.events import emit_event
    from prefect.settings import PREFECT_API_URL

    outside_run = not any(r["prefect.resource.role"] == "flow-run" for r in alert.related)
    if alert.id in _EMITTED or (outside_run and not PREFECT_API_URL.value()):
        return  # sent already (a task retry), or no server of the team's to alert on
    _EMITTED.add(alert.id)
    emit_event(
        alert.event,
        resource=alert.resource,
        related=alert.related or None,
        payload=alert.payload,
        id=alert.id,
    )


def emit_batch_held(gate: GateResult, held_at: Path, data_docs: str) -> None:
    emit(batch_held_event(gate, held_at, data_docs, current_run()))


def emit_drift(result: DriftResult, report: str, batch_ids: list[str]) -> None:
    """Emit only when the check flagged drift."""
    if result.drifted:
        emit(drift_event(result, report, batch_ids, current_run()))


def emit_leakage(gate: GateResult, data_docs: str) -> None:
    """Emit only when the leakage gate stops the flow."""
    if not gate.passed:
        emit(leakage_event(gate, data_docs, current_run()))


def emit_promotion(result: PromotionResult) -> None:
    """Emit only for a promotion decided now (a replayed decision was announced already)."""
    if result.decision.promoted and not result.replayed:
        emit(promoted_event(result, current_run()))


def emit_rollback(result: RollbackResult) -> None:
    emit(rolled_back_event(result, current_run()))


# The automations, created by ``visionloop deploy``.


def automation_spec(alert: Alert, block_id: uuid.UUID) -> Any:
    """The Prefect automation of ``alert``: every matching event sends one notification."""
    from prefect.automations import AutomationCore, EventTrigger, Posture, SendNotification

    return AutomationCore(
        name=alert.name,
        description=f"visionloop alert on {', '.join(alert.events)} (made by visionloop deploy)",
        trigger=EventTrigger(
            expect=set(alert.events),
            match=alert.match,
            match_related=alert.match_related,
            posture=Posture.Reactive,
            threshold=1,
            within=timedelta(0),
        ),
        actions=[
            SendNotification(block_document_id=block_id, subject=alert.subject, body=alert.body)
        ],
    )


def _save_block(webhook_url: str) -> uuid.UUID:
    """A custom-webhook block posting Slack-compatible ``{"text": …}``; the URL is a secret."""
    from prefect.blocks.notifications import CustomWebhookNotificationBlock

    block = CustomWebhookNotificationBlock(
        name=BLOCK_NAME,
        url="{{webhook_url}}",
        json_data={"text": "{{subject}}\n{{body}}"},
        secrets={"webhook_url": webhook_url},
    )
    return block.save(BLOCK_NAME, overwrite=True)


def apply_alerts(settings: Settings) -> list[str]:
    """Create or update the automations by name (extra copies removed); with no webhook
    set, remove them. Returns the names of the automations now in place."""
    from prefect.client.orchestration import get_client

    secret = settings.alerts.webhook_url
    block_id = _save_block(secret.get_secret_value()) if secret is not None else None
    with get_client(sync_client=True) as client:
        for alert in ALERTS:
            existing = client.read_automations_by_name(alert.name)
            if block_id is None:
                for automation in existing:
                    client.delete_automation(automation.id)
                continue
            spec = automation_spec(alert, block_id)
            if existing:
                client.update_automation(existing[0].id, spec)
            else:
                client.create_automation(spec)
            for extra in existing[1:]:
                client.delete_automation(extra.id)
    return [alert.name for alert in ALERTS] if block_id is not None else []
