"""Two Prefect workers from the installed wheel share one lake (issue 14 §4).

A real Prefect server on 127.0.0.1; the deployments applied by ``visionloop deploy`` from an
operator's installation of the wheel, which is removed before anything runs, so each worker
must run the flows of its own installation; two process workers of the ``visionloop`` pool,
each from its own installation in its own folder, one flow run at a time each, with settings
naming the same data home and ``lake_lock: prefect``. The nightly (training off) and an
on-demand ingest of a second landing folder are started together while another writer holds
the lake's lock, so both wait for it and then for each other. Both complete, on different
workers, never inside the lock together, and the lake holds both batches whole: every file
placed once, no image twice.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from uuid import UUID

import pyarrow.dataset as ds
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
from prefect.client.schemas.sorting import LogSort

from tests.prefect_server import prefect_server
from tests.waiting import stop_group, wait_for
from tests.wheel import CLI, install_wheel
from visionloop.lake import commit as lake
from visionloop.settings import REPO_ROOT, Settings, load_settings

pytestmark = pytest.mark.slow
SAMPLE = REPO_ROOT / "data" / "sample" / "labelled"
HOLDER = Path(__file__).with_name("hold_lake_writer.py")
WORKERS = ("worker-a", "worker-b")
RUN_TIMEOUT_S = 1500
POLL_S = 2.0  # how often the test asks the server about the runs


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    with prefect_server(tmp_path / "prefect") as url:
        yield url


def _landing(folder: Path, files: slice) -> set[Path]:
    """Three classes of the sample, the ``files`` of each, as an image folder."""
    placed = set()
    for class_dir in sorted(SAMPLE.iterdir())[:3]:
        (folder / class_dir.name).mkdir(parents=True)
        for image in sorted(class_dir.glob("*.png"))[files]:
            placed.add(Path(shutil.copy(image, folder / class_dir.name)))
    return placed


def _environment(api: str, folder: Path, config: Path) -> dict[str, str]:
    return {name: value for name, value in os.environ.items() if name != "PYTHONPATH"} | {
        "PREFECT_API_URL": api,
        "PREFECT_HOME": str(folder / "prefect"),
        "PREFECT_WORKER_QUERY_SECONDS": "1",
        "VISIONLOOP_CONFIG": str(config),
    }


def _install(wheel: Path, folder: Path, settings: Settings) -> tuple[Path, Path]:
    """An installation of the wheel in ``folder`` with its own settings file."""
    folder.mkdir(parents=True)
    (folder / "cli.py").write_text(CLI)
    return install_wheel(wheel, folder / "venv"), settings.save(folder / "config")


def _start_worker(python: Path, folder: Path, environment: dict[str, str]) -> subprocess.Popen:
    command = [str(python), "-m", "prefect", "worker", "start", "--pool", "visionloop"]
    command += ["--type", "process", "--limit", "1", "--name", folder.name]
    with (folder / "worker.log").open("w") as log:
        return subprocess.Popen(
            command, cwd=folder, env=environment, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def _stop(process: subprocess.Popen) -> None:
    """The process group (a worker and its flow runs); SIGKILL after 10 s, as an idle
    Prefect 3.8.8 worker ignores SIGTERM."""
    stop_group(process, timeout_s=10)


def _logs(client, run_id: UUID) -> list[tuple[datetime, str]]:
    """Every log line of a flow run (its tasks' and its worker's too), oldest first."""
    lines, offset = [], 0
    runs = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id]))
    while page := client.read_logs(runs, offset=offset, sort=LogSort.TIMESTAMP_ASC):
        lines += [(log.timestamp, log.message) for log in page]
        offset += len(page)
    return lines


def _lock_lines(
    logs: list[tuple[datetime, str]], limit: str
) -> tuple[list[datetime], list[datetime]]:
    """When the run logged taking and releasing the lake's writer lock."""
    taken = [at for at, message in logs if message.startswith(f"holding {limit} ")]
    released = [at for at, message in logs if message.startswith(f"releasing {limit} ")]
    return taken, released


def _lock_intervals(logs: list[tuple[datetime, str]], limit: str) -> list[tuple[datetime, ...]]:
    """When the run held the lake's writer lock, from its ``holding`` / ``releasing`` lines."""
    taken, released = _lock_lines(logs, limit)
    assert len(taken) == len(released) and taken, logs
    return list(zip(taken, released, strict=True))


def _worker_of(logs: list[tuple[datetime, str]]) -> str:
    (name,) = {
        match[1]
        for _, message in logs
        if (match := re.match(r"Worker '(.+?)' submitting", message))
    }
    return name


def _table(home: Path, name: str) -> ds.Dataset:
    return ds.dataset(home / "lake" / name, format="parquet", partitioning="hive")


def test_the_nightly_and_an_ingest_on_two_workers_from_the_wheel_share_the_lake(
    tmp_path: Path, api: str, wheel: Path
) -> None:
    nightly_files = _landing(tmp_path / "landing-nightly", slice(0, 15))
    ingest_files = _landing(tmp_path / "landing-ingest", slice(15, 30))
    home = tmp_path / "home"
    settings = load_settings(
        data_home=home,
        image_size=32,
        embeddings={"input_size": 32},
        spark_master="local[1]",
        lake_lock="prefect",
        lake_lock_timeout_s=RUN_TIMEOUT_S,
        landing={"sources": [{"path": str(tmp_path / "landing-nightly"), "layout": "imagefolder"}]},
    )
    limit = lake.writer_limit(settings)

    operator = tmp_path / "operator"
    python, config = _install(wheel, operator, settings)
    deployed = subprocess.run(
        [str(python), "cli.py", "deploy"],
        cwd=operator,
        env=_environment(api, operator, config),
        capture_output=True,
        text=True,
    )
    assert deployed.returncode == 0, deployed.stdout + deployed.stderr
    shutil.rmtree(operator)  # the deployments must not need the installation they came from

    with ExitStack() as stack, get_client(sync_client=True) as client:
        for name in WORKERS:
            folder = tmp_path / name
            python, config = _install(wheel, folder, settings)
            worker = _start_worker(python, folder, _environment(api, folder, config))
            stack.callback(_stop, worker)

        # Another writer holds the lock until both runs wait for it.
        holding = tmp_path / "holder"
        holding.mkdir()
        held, release = holding / "held", holding / "release"
        holder = subprocess.Popen(
            [sys.executable, str(HOLDER), str(settings.save(holding)), str(held), str(release)],
            env=os.environ | {"PREFECT_API_URL": api},
            start_new_session=True,
        )
        stack.callback(_stop, holder)
        wait_for(held.exists, 120, "the other writer holds the lake's lock", holder)

        started = time.monotonic()
        nightly = client.read_deployment_by_name("nightly/nightly")
        ingest = client.read_deployment_by_name("ingest/ingest")
        landing = {"path": str(tmp_path / "landing-ingest"), "layout": "imagefolder"}
        runs = {
            "nightly": client.create_flow_run_from_deployment(
                nightly.id, parameters={"params": {"train": False}}
            ).id,
            "ingest": client.create_flow_run_from_deployment(
                ingest.id, parameters={"params": {"sources": [landing]}}
            ).id,
        }

        def finished(run_id: UUID) -> bool:
            time.sleep(POLL_S / len(runs))
            state = client.read_flow_run(run_id).state
            return state is not None and state.is_final()

        def waiting(run_id: UUID) -> bool:
            assert not finished(run_id), _logs(client, run_id)[-30:]
            return any(message.startswith("waiting up to") for _, message in _logs(client, run_id))

        wait_for(lambda: all(map(waiting, runs.values())), 900, "both runs wait for the lock")
        release.touch()
        assert holder.wait(timeout=60) == 0
        wait_for(lambda: all(map(finished, runs.values())), RUN_TIMEOUT_S, "both runs finish")
        elapsed = time.monotonic() - started

        def logged_release(run_id: UUID) -> bool:  # last lines reach the API after the state
            taken, released = _lock_lines(_logs(client, run_id), limit)
            return bool(taken) and len(taken) == len(released)

        wait_for(
            lambda: all(map(logged_release, runs.values())), 60, "each run logs its lock release"
        )

        logs = {name: _logs(client, run_id) for name, run_id in runs.items()}
        states = {name: client.read_flow_run(run_id).state for name, run_id in runs.items()}
        for name, state in states.items():
            assert state.is_completed(), (name, state, logs[name][-40:])
        assert {_worker_of(lines) for lines in logs.values()} == set(WORKERS)
        held_by = {name: _lock_intervals(lines, limit) for name, lines in logs.items()}
        for start_n, end_n in held_by["nightly"]:
            for start_i, end_i in held_by["ingest"]:
                assert end_n <= start_i or end_i <= start_n, held_by  # never in the lock together
        print(f"both runs finished {elapsed:.0f} s after they were started; lock: {held_by}")

    assert not list((home / "lake" / "_staging").glob("*")), "a batch left staged"
    assert not (home / "lake" / "_held").exists()
    arrivals = _table(home, "arrivals").to_table().to_pylist()
    placed = [Path(row["source_uri"].removeprefix("file://")) for row in arrivals]
    assert sorted(placed) == sorted(nightly_files | ingest_files)  # each file once
    batches: dict[str, set[Path]] = {}
    for row, path in zip(arrivals, placed, strict=True):
        batches.setdefault(row["batch_id"], set()).add(path)
    assert sorted(batches.values(), key=len) in (
        [nightly_files, ingest_files],
        [ingest_files, nightly_files],
    )  # one batch per run, each whole
    images = _table(home, "images").to_table(columns=["image_id", "batch_id"]).to_pylist()
    ids = [row["image_id"] for row in images]
    assert len(ids) == len(set(ids))
    new = {row["image_id"] for row in arrivals if row["outcome"] == "new"}
    assert set(ids) == new
    for batch_id in batches:
        written = {row["image_id"] for row in images if row["batch_id"] == batch_id}
        ledger = {
            r["image_id"] for r in arrivals if r["batch_id"] == batch_id and r["outcome"] == "new"
        }
        assert written == ledger
        assert (home / "lake" / "_batches" / f"{batch_id}.json").exists()
