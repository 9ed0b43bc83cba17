"""``make serve``'s script on a temporary home and free 127.0.0.1 ports: the MLflow UI, the
Prefect server and worker and the reports server come up; a drift report and the Data Docs
page of a batch the gate held, linked as the Prefect artifacts, the gate's message and the
alerts link them, open over HTTP in headless Chromium; one SIGTERM stops every process the
script started and frees the ports."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import psutil
import pytest

from tests.browser import driven
from tests.browser import wait_for as wait_in_page
from tests.gate_rows import commit_gate_rows, gate_rows, stage_gate_rows
from tests.local import answers, free_port
from tests.waiting import wait_for
from visionloop.alerts import RunRef, batch_held_event, drift_event
from visionloop.monitoring.drift import PREDICTED, STATISTICS, drift_report, embedding_columns, save
from visionloop.quality.gate import run_gate
from visionloop.settings import REPO_ROOT, Settings, load_settings
from visionloop.web import report_url

pytestmark = pytest.mark.slow
#: Label Studio's first start takes minutes of migrations; its SIGTERM is tested on its own.
PARTS = "mlflow reports prefect worker"
UP_S, STOP_S = 300, 90


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` now (as servers do, past TIME_WAIT
    connections the browser left: only a listening socket stands in the way)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def _embeddings(rows: int, shift: float, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(shift, 1, (rows, 8)), columns=embedding_columns(8))
    for name in STATISTICS:
        frame[name] = rng.normal(0.5 + shift, 0.1, rows)
    frame[PREDICTED] = rng.choice(["shirt", "trouser"], rows)
    return frame


def _drift_page(settings: Settings) -> str:
    """A real Evidently report where the drift task writes it; the alert's page for it."""
    result, report = drift_report(_embeddings(200, 0, 0), _embeddings(60, 1.5, 1), settings.drift)
    html = save(report, result, settings.reports_dir / "drift", "b-drift")["html"]
    event = drift_event(result, report_url(settings, html), ["b-drift"], RunRef(None, "t", None))
    assert result.drifted and event.payload["page"] == report_url(settings, html)
    return event.payload["page"]


def _held_batch_page(settings: Settings) -> str:
    """A batch the real gate holds (an image id already in the lake): the Data Docs page its
    message, its ``data-docs`` artifact and its alert link."""
    commit_gate_rows(settings, "b1", gate_rows(range(6)))
    stage_gate_rows(settings, "b-held", gate_rows(range(4, 8)))
    gate = run_gate(settings, "b-held", files_in=4, quarantined=0)
    assert not gate.passed
    page = gate.data_docs_url
    assert page == report_url(settings, gate.data_docs)  # what publish_ingest_report links
    assert f"Data Docs: {page}" in gate.message and "file://" not in gate.message
    assert str(settings.data_home) not in gate.message  # no local path to open
    event = batch_held_event(
        gate, settings.lake_dir / "_held" / "b-held", page, RunRef(None, "t", None)
    )
    assert event.payload["page"] == page
    return page


def _alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def test_serve_shows_the_reports_and_stops_everything_on_sigterm(tmp_path: Path) -> None:
    ports = {name: free_port() for name in ("reports", "mlflow", "prefect")}
    reports, mlflow = (f"http://127.0.0.1:{ports[name]}" for name in ("reports", "mlflow"))
    api = f"http://127.0.0.1:{ports['prefect']}/api"
    settings = load_settings(
        data_home=tmp_path / "home", web={"reports_url": reports, "mlflow_ui_url": mlflow}
    )
    page = _drift_page(settings)
    assert page.startswith(f"{reports}/drift/")
    docs = _held_batch_page(settings)
    assert docs.startswith(f"{reports}/data-docs/validations/images_table/")
    env = os.environ | {
        "VISIONLOOP_DATA_HOME": str(settings.data_home),
        "VISIONLOOP_WEB__REPORTS_URL": reports,
        "VISIONLOOP_WEB__MLFLOW_UI_URL": mlflow,
        "PREFECT_HOME": str(tmp_path / "prefect"),
        "PREFECT_API_URL": api,
        "VISIONLOOP_SERVE": PARTS,
    }
    log = tmp_path / "serve.log"
    with log.open("wb") as out:
        serve = subprocess.Popen(
            [str(REPO_ROOT / "scripts" / "serve")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    started: list[psutil.Process] = []
    try:
        wait_for(lambda: "serving;" in log.read_text(errors="replace"), UP_S, "serve up", serve)
        started = psutil.Process(serve.pid).children(recursive=True)
        commands = " | ".join(" ".join(p.cmdline()) for p in started)
        for piece in ("mlflow ui", "http.server", "prefect server start", "prefect worker start"):
            assert piece in commands, commands
        wait_for(lambda: answers(f"{mlflow}/health"), 60, "MLflow UI answers", serve)
        assert answers(f"{api}/health")

        with driven() as browser:
            browser.get(page)  # the link the artifact and the alert carry
            text = wait_in_page(
                browser, "const t = document.body.innerText; return t.includes('mmd') && t;"
            )
            assert "Drift in embeddings 'embedding'" in text, text[:500]
            assert "Data drift detected. Drift detection method: mmd" in text, text[:500]
            browser.get(docs)  # the held batch's Data Docs page, from the gate's message
            text = wait_in_page(
                browser, "const t = document.body.innerText; return t.includes('b-held') && t;"
            )
            assert "images_table" in text and "ids_in_other_files" in text, text[:800]
            assert "404" not in browser.title, browser.title
            browser.get(mlflow)
            assert wait_in_page(browser, "return document.title.includes('MLflow');")

        serve.send_signal(signal.SIGTERM)
        assert serve.wait(timeout=STOP_S) == 128 + signal.SIGTERM
        wait_for(lambda: not any(map(_alive, started)), 10, "every started process gone")
        assert all(_port_free(port) for port in ports.values()), ports
    finally:
        for process in filter(_alive, started):
            process.kill()
        if serve.poll() is None:
            serve.kill()
            serve.wait()
