"""The alert events and automations as data: ids, payloads, triggers, the secret setting."""

from __future__ import annotations

import uuid

from visionloop.alerts import (
    ALERTS,
    BATCH_HELD,
    EVENT_BODY,
    MAX_REASON_CHARS,
    NIGHTLY_FLOW,
    RunRef,
    alert_event,
    automation_spec,
)
from visionloop.settings import load_settings

RUN = RunRef("0bcb31b0-c124-4bc5-9c99-c3f15d47c20e", "nightly/tireless-teal", "http://ui/run")


def test_an_event_names_its_run_and_links_to_it() -> None:
    event = alert_event(BATCH_HELD, "batch", "b1", "held", "2 nulls", RUN, held_at="/held/b1")
    assert event.resource == {
        "prefect.resource.id": "visionloop.batch.b1",
        "prefect.resource.name": "b1",
    }
    assert event.payload == {
        "summary": "held",
        "reason": "2 nulls",
        "run": "nightly/tireless-teal",
        "link": "http://ui/run",
        "held_at": "/held/b1",
    }
    assert event.related == [
        {
            "prefect.resource.id": f"prefect.flow-run.{RUN.id}",
            "prefect.resource.role": "flow-run",
            "prefect.resource.name": "nightly/tireless-teal",
        }
    ]


def test_the_id_is_the_same_for_a_retry_and_differs_per_run_and_subject() -> None:
    def make(run: RunRef, key: str) -> uuid.UUID:
        return alert_event(BATCH_HELD, "batch", key, "held", "why", run).id

    other_run = RunRef("5d2f4c8e-0000-4000-8000-000000000000", "nightly/other", None)
    assert make(RUN, "b1") == make(RUN, "b1")
    assert len({make(RUN, "b1"), make(RUN, "b2"), make(other_run, "b1")}) == 3


def test_a_long_reason_is_cut_outside_a_run_the_link_is_the_event_feed_or_none() -> None:
    outside = RunRef(None, "visionloop command on host", None)
    event = alert_event(BATCH_HELD, "batch", "b1", "held", "x" * 10_000, outside)
    assert len(event.payload["reason"]) == MAX_REASON_CHARS
    assert event.payload["reason"].endswith("…")
    assert event.related == []
    link = event.payload["link"]
    assert link is None or link.endswith("/events?resource=visionloop.batch.b1")


def test_the_night_alert_fires_on_a_failed_or_crashed_nightly_only() -> None:
    night = automation_spec(ALERTS[0], uuid.uuid4())
    assert night.trigger.expect == {"prefect.flow-run.Failed", "prefect.flow-run.Crashed"}
    related = night.trigger.match_related
    assert related.model_dump() == {
        "prefect.resource.role": "flow",
        "prefect.resource.name": NIGHTLY_FLOW,
    }
    assert len({alert.name for alert in ALERTS}) == len(ALERTS) == 6
    assert all(len(alert.events) >= 1 for alert in ALERTS)


def test_the_webhook_url_is_secret_and_alerts_are_off_without_it() -> None:
    assert load_settings().alerts.webhook_url is None
    url = "https://hooks.slack.com/services/T0/B0/s3cr3t-x9"
    settings = load_settings(alerts={"webhook_url": url})
    assert settings.alerts.webhook_url.get_secret_value() == url
    assert "s3cr3t-x9" not in repr(settings) + str(settings.model_dump(mode="json"))


def test_a_report_page_is_in_the_payload_and_the_message_only_where_there_is_one() -> None:
    page = "http://127.0.0.1:8090/drift/b1.html"
    event = alert_event(BATCH_HELD, "batch", "b1", "held", "why", RUN, page)
    assert event.payload["page"] == page
    assert "page" not in alert_event(BATCH_HELD, "batch", "b1", "held", "why", RUN).payload
    assert "{% if event.payload.page %}" in EVENT_BODY and "Page: {{ event.payload.page }}" in (
        EVENT_BODY
    )
