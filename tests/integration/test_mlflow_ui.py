"""The real MLflow UI (``mlflow ui``, as ``make serve`` starts it, on a free 127.0.0.1 port
over the test's SQLite store) in headless Chromium shows what the flows log: the champion's
ONNX export listed on its run's page and in its experiment's Models tab, with its files
(``MLmodel`` with the ``onnx`` flavour, ``model.onnx``); the tune flow's trial runs nested
under the tuning run, their rows shown only once the parent's row is expanded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from mlflow.tracking import MlflowClient
from selenium import webdriver

from tests.browser import driven
from tests.browser import wait_for as wait_in_page
from tests.integration.test_onnx_export import SIZE, _registered
from tests.integration.test_tune_flow import TINY_TRAINING
from tests.local import answers, free_port
from tests.waiting import stop_group, wait_for
from visionloop.flows.tune import tune
from visionloop.parameters import TuneParameters
from visionloop.registry.export import ONNX_MODEL_NAME_IN_RUN, export_version, parity_images
from visionloop.settings import load_settings

pytestmark = pytest.mark.slow
UP_S, STOP_S = 120, 30


@dataclass(frozen=True)
class Store:
    uri: str
    experiment_id: str  # the champion's run's
    run_id: str
    model_id: str  # its ONNX model
    tune_experiment_id: str
    parent_id: str
    children: dict[str, str]  # trial run id: run name


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    """A registered model exported to ONNX, and a two-trial tuning run (one epoch a trial),
    in one tracking store."""
    home = tmp_path_factory.mktemp("mlflow-ui") / "home"
    tracking, snapshot, version = _registered(home)
    exported = export_version(tracking, version, parity_images(snapshot))
    client = tracking.client
    run = client.get_run(client.get_model_version(tracking.model_name, version).run_id)

    settings = load_settings(
        data_home=home, image_size=SIZE, training=TINY_TRAINING | {"epochs": 1}
    )
    config = settings.save(home.parent / "config")
    result = tune(TuneParameters(n_trials=2, timeout_s=600, config=str(config)))
    tuned = MlflowClient(settings.resolved_mlflow_uri)
    parent = tuned.get_run(result.run_id)
    children = tuned.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    assert len(children) == 2
    return Store(
        uri=settings.resolved_mlflow_uri,
        experiment_id=run.info.experiment_id,
        run_id=run.info.run_id,
        model_id=exported.model_id,
        tune_experiment_id=parent.info.experiment_id,
        parent_id=result.run_id,
        children={child.info.run_id: child.info.run_name for child in children},
    )


@pytest.fixture(scope="module")
def ui(store: Store, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``mlflow ui`` on the store, as scripts/serve starts it; its whole process group (the
    server and the huey workers it starts) stopped afterwards."""
    port = free_port()
    folder = tmp_path_factory.mktemp("mlflow-ui-cwd")
    log = folder / "mlflow-ui.log"
    mlflow = Path(sys.executable).with_name("mlflow")
    command = [str(mlflow), "ui", "--backend-store-uri", store.uri]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    with log.open("wb") as out:
        server = subprocess.Popen(
            command, cwd=folder, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: answers(f"{url}/health"), UP_S, "MLflow UI answers", server)
        yield url
    finally:
        stop_group(server, STOP_S)
        try:
            wait_for(lambda: not _group(server.pid), STOP_S, "every MLflow UI process gone")
        finally:
            for process in _group(server.pid):
                process.kill()


def _group(pgid: int) -> list[psutil.Process]:
    """The live processes of process group ``pgid``."""
    found = []
    for process in psutil.process_iter():
        try:
            if os.getpgid(process.pid) == pgid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (ProcessLookupError, psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def _text(browser: webdriver.Chrome, contains: str) -> str:
    """The page's text once it contains ``contains``."""
    script = f"const t = document.body.innerText; return t.includes({json.dumps(contains)}) && t;"
    return wait_in_page(browser, script)


def _query(selector: str, every: bool = False) -> str:
    """JavaScript for the first (or every) element ``selector`` finds."""
    return f"document.querySelector{'All' if every else ''}({json.dumps(selector)})"


def _link(fragment: str) -> str:
    """The selector of links whose address ends with ``fragment``."""
    return f"a[href$={json.dumps(fragment)}]"


def _links(browser: webdriver.Chrome, fragment: str, wait: bool = True) -> list[str]:
    """The texts of the page's links whose address ends with ``fragment``, once there is one
    (``wait``) or now."""
    texts = f"[...{_query(_link(fragment), every=True)}].map(a => a.innerText.trim())"
    if wait:
        return wait_in_page(browser, f"const t = {texts}; return t.length > 0 && t;")
    return browser.execute_script(f"return {texts};")


def _open(browser: webdriver.Chrome, url: str) -> None:
    """Load the UI afresh at ``url`` (a new hash alone would leave the last page's DOM to be
    read until the app re-renders)."""
    browser.get("about:blank")
    browser.get(url)


def _click(browser: webdriver.Chrome, selector: str, within: str = "document") -> bool:
    """Click the first element ``selector`` finds (in the element ``within``), once there is
    one."""
    found = f"{within}.querySelector({json.dumps(selector)})"
    return wait_in_page(browser, f"const e = {found}; if (e) e.click(); return e !== null;")


def check_onnx_model(browser: webdriver.Chrome, url: str, store: Store) -> None:
    """The champion's run page lists its ONNX model; the model's page lists its files."""
    model_page = f"#/experiments/{store.experiment_id}/models/{store.model_id}"
    _open(browser, f"{url}/#/experiments/{store.experiment_id}/runs/{store.run_id}")
    _text(browser, "Logged models (1)")  # the run's output, linked by the export
    assert _links(browser, model_page) == [ONNX_MODEL_NAME_IN_RUN]

    _open(browser, f"{url}/#/experiments/{store.experiment_id}/models")  # the Models tab
    assert _links(browser, model_page) == [ONNX_MODEL_NAME_IN_RUN]

    _open(browser, f"{url}/{model_page}/artifacts")
    node = "[data-testid='artifact-tree-node'][artifact-name='{}']"
    assert _click(browser, node.format("MLmodel"))
    preview = _text(browser, "onnx_version")  # the MLmodel file's text: both flavours
    assert "python_function:" in preview and "data: artifacts/model.onnx" in preview, preview
    assert _click(browser, node.format("artifacts"))  # the folder opens
    assert _click(browser, node.format("model.onnx"))


def check_nested_trials(browser: webdriver.Chrome, url: str, store: Store) -> None:
    """The tuning experiment's runs table: one row, the parent's; the trials' rows appear
    when it is expanded, each linking its run by name."""
    runs = f"#/experiments/{store.tune_experiment_id}/runs"
    _open(browser, f"{url}/{runs}")
    parent = f"{runs}/{store.parent_id}"
    assert _links(browser, parent)
    assert _text(browser, f"{len(store.children) + 1} matching runs")
    assert all(not _links(browser, f"{runs}/{run}", wait=False) for run in store.children)
    row = f"{_query(_link(parent))}.closest('[role=row]')"
    assert _click(browser, "button[data-component-id*='runnamecellrenderer']", within=row)
    names = {run: _links(browser, f"{runs}/{run}") for run in store.children}
    assert names == {run: [name] for run, name in store.children.items()}, names


def test_the_ui_shows_the_champions_onnx_model_and_its_files(ui: str, store: Store) -> None:
    with driven() as browser:
        check_onnx_model(browser, ui, store)


def test_the_ui_nests_the_trial_runs_under_the_tuning_run(ui: str, store: Store) -> None:
    with driven() as browser:
        check_nested_trials(browser, ui, store)
