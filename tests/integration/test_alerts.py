"""Alerts against a real Prefect server on 127.0.0.1 and a local webhook receiver: the
automations ``visionloop deploy`` creates deliver each alert once, with its reason and link."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_URL, temporary_settings

from tests.local import answers, free_port
from tests.waiting import wait_for
from visionloop.alerts import (
    ALERTS,
    BLOCK_NAME,
    Alert,
    apply_alerts,
    emit_batch_held,
    emit_drift,
    emit_leakage,
    emit_promotion,
    emit_rollback,
)
from visionloop.monitoring.drift import DriftResult, MethodResult
from visionloop.quality.expectations import CRITICAL, ExpectationOutcome
from visionloop.quality.gate import GateResult
from visionloop.registry.promotion import Decision, PromotionResult, RollbackResult
from visionloop.settings import load_settings

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
DELIVERY_S = 120  # generous: the server, the events worker and the notification service
QUIET_S = 5  # after the last expected message: time for a duplicate to show up
REPORTS = "http://127.0.0.1:8090"  # web.reports_url
#: The report each alert links (visionloop.web.report_url of what the flows wrote).
PAGES = {
    "batch held": f"{REPORTS}/data-docs/validations/images_batch/b-held.html",
    "drift flagged": f"{REPORTS}/drift/b-drift.html",
    "leakage gate failed": f"{REPORTS}/data-docs/validations/leakage/b-leak.html",
}


@pytest.fixture
def prefect_api(tmp_path: Path) -> Iterator[str]:
    """A Prefect server on a free 127.0.0.1 port with its own home, the API of this test."""
    api = f"http://127.0.0.1:{free_port()}/api"
    env = os.environ | {
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    port = api.rsplit(":", 1)[1].split("/")[0]
    server = subprocess.Popen(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", port],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for(lambda: answers(f"{api}/health", 2), 180, "Prefect server healthy", server)
        with temporary_settings(updates={PREFECT_API_URL: api}):
            yield api
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()


class Receiver:
    """A webhook on 127.0.0.1 that keeps the JSON bodies posted to it."""

    def __init__(self) -> None:
        self.bodies: list[dict] = []
        lock = threading.Lock()
        received = self.bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with lock:
                    received.append(body)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/T000/B000/secret-token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def texts(self) -> list[str]:
        return [body["text"] for body in list(self.bodies)]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    hook = Receiver()
    hook.thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def _outcome(success: bool, suite: str = "images") -> ExpectationOutcome:
    return ExpectationOutcome(
        suite, "expect_column_values_to_not_be_null", "label", CRITICAL, success, "12 nulls"
    )


def _gate(batch_id: str, success: bool, stats: dict | None = None) -> GateResult:
    return GateResult(
        [_outcome(success)], Path(f"/docs/{batch_id}.html"), False, batch_id, {}, stats or {}
    )


DRIFTED = DriftResult(
    True,
    2,
    2,
    [MethodResult("mmd", 0.05, 0.015, True), MethodResult("ratio", 0.4, 0.2, True)],
    current_rows=60,
)
STEADY = DriftResult(False, 0, 2, [MethodResult("mmd", 0.001, 0.015, False)])
LEAKY = {"leakage_rate": 0.25, "leaked_images": 5, "images": 20}


def _promotion(promoted: bool, replayed: bool = False) -> PromotionResult:
    reason = "macro_f1 +0.041 (95% interval +0.02..+0.06) above min_improvement 0.005"
    decision = Decision(promoted, reason if promoted else "no significant gain")
    return PromotionResult(decision, "visionloop-classifier", "7", "6", replayed=replayed)


@flow(name="nightly")
def broken_night() -> None:
    raise RuntimeError("the lake writer lock is held by host-b")


class WorkerKilled(BaseException):
    """What a killed process looks like to the engine: the run ends Crashed."""


@flow(name="nightly")
def crashed_night() -> None:
    raise WorkerKilled("the worker was killed")


@flow(name="ingest")
def broken_ingest() -> None:
    raise RuntimeError("not a night: no alert")


@flow(name="alerts-probe")
def raise_every_alert() -> None:
    """What the flows emit, each path once, with the calls that must stay silent."""
    emit_batch_held(_gate("b-held", False), Path("/lake/held/b-held"), PAGES["batch held"])
    emit_drift(DRIFTED, PAGES["drift flagged"], ["b-drift"])
    emit_drift(STEADY, f"{REPORTS}/drift/b-steady.html", ["b-steady"])  # no drift: silent
    emit_leakage(_gate("b-leak", False, LEAKY), PAGES["leakage gate failed"])
    emit_leakage(_gate("b-leak", False, LEAKY), PAGES["leakage gate failed"])  # a task retry
    emit_leakage(_gate("b-clean", True, LEAKY), PAGES["leakage gate failed"])  # passed: silent
    emit_promotion(_promotion(True))
    emit_promotion(_promotion(True, replayed=True))  # a replayed decision: silent
    emit_promotion(_promotion(False))  # rejected: silent


def test_each_alert_arrives_once_with_its_reason_and_link(
    prefect_api: str, receiver: Receiver, tmp_path: Path
) -> None:
    settings = load_settings(data_home=tmp_path / "home", alerts={"webhook_url": receiver.url})
    names = [alert.name for alert in ALERTS]
    assert apply_alerts(settings) == names
    assert apply_alerts(settings) == names  # `visionloop deploy` again: updated, not doubled
    with get_client(sync_client=True) as client:
        counts = {name: len(client.read_automations_by_name(name)) for name in names}
        assert counts == dict.fromkeys(names, 1)
        block = client.read_block_document_by_name(
            BLOCK_NAME, "custom-webhook", include_secrets=False
        )
        assert "secret-token" not in json.dumps(block.model_dump(mode="json"))

    night = broken_night(return_state=True)
    assert night.is_failed()
    with pytest.raises(WorkerKilled):
        crashed_night()
    assert broken_ingest(return_state=True).is_failed()
    probe = raise_every_alert(return_state=True)
    assert probe.is_completed()
    emit_rollback(RollbackResult("visionloop-classifier", "6", "7"))  # the CLI: no flow run

    sent = len(ALERTS) + 1  # the night alert twice: failed, crashed
    wait_for(lambda: len(receiver.bodies) >= sent, DELIVERY_S, "every alert delivered")
    time.sleep(QUIET_S)
    texts = receiver.texts()
    ui = prefect_api.removesuffix("/api")
    by_subject = {alert.name: [t for t in texts if _subject(alert) in t] for alert in ALERTS}
    once = dict.fromkeys(names, 1) | {"visionloop: night failed": 2}
    assert {name: len(found) for name, found in by_subject.items()} == once, texts
    assert len(texts) == sent, texts

    failed, crashed = sorted(by_subject["visionloop: night failed"], key=lambda t: "Crashed" in t)
    assert "ended Crashed" in crashed and "the worker was killed" in crashed, crashed
    assert "the lake writer lock is held by host-b" in failed
    assert f"{ui}/runs/flow-run/{night.state_details.flow_run_id}" in failed
    probe_link = f"{ui}/runs/flow-run/{probe.state_details.flow_run_id}"
    expected = {
        "visionloop: batch held": ["b-held", "12 nulls", "/lake/held/b-held"],
        "visionloop: drift flagged": ["drifted: 2 of 2", "mmd 0.05 > 0.015"],
        "visionloop: leakage gate failed": ["Leakage rate 0.25 in b-leak", "5 of 20 images"],
        "visionloop: model promoted": ["v7 is the champion (was v6)", "macro_f1 +0.041"],
    }
    for name, parts in expected.items():
        text = by_subject[name][0]
        assert all(part in text for part in parts), text
        assert f"Link: {probe_link}" in text and "Run: alerts-probe/" in text, text
        page = PAGES.get(name.removeprefix("visionloop: "))
        assert (f"Page: {page}" in text) if page else ("Page:" not in text), text
    rolled = by_subject["visionloop: model rolled back"][0]
    assert "v6 is the champion again; v7 rolled back" in rolled
    assert f"Link: {ui}/events?resource=visionloop.model.visionloop-classifier.v6" in rolled

    assert apply_alerts(load_settings(data_home=tmp_path / "home")) == []  # unset: alerts off
    with get_client(sync_client=True) as client:
        assert all(not client.read_automations_by_name(name) for name in names)


def _subject(alert: Alert) -> str:
    """The fixed part of an alert's subject line."""
    return alert.subject.split("{{")[0].strip()
