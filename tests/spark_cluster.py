"""Long-lived Spark on 127.0.0.1, from the pip pyspark, started for a test and stopped after
it: a standalone cluster (a master and its workers) or a Spark Connect server."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.local import free_port
from tests.waiting import wait_for

BIN = Path(sys.executable).parent
SPARK_CLASS = BIN / "spark-class"
CONNECT_SERVER = "org.apache.spark.sql.connect.service.SparkConnectServer"
START_S = 120


@dataclass(frozen=True)
class Cluster:
    master_url: str  # spark://127.0.0.1:<port>, what settings.spark_master names
    master_ui: str
    work_dirs: list[Path]  # one a worker: each application's executor logs

    def settings(self) -> dict:
        """Settings overrides that run a job on this cluster, one 1-core executor a worker."""
        return {
            "spark_master": self.master_url,
            "spark_driver_host": "127.0.0.1",
            "spark_conf": {"spark.executor.cores": "1", "spark.executor.memory": "1g"},
        }

    def latest_app(self, name: str) -> str | None:
        """The id of the last finished application called ``name``."""
        apps = [app for app in _json(self.master_ui)["completedapps"] if app["name"] == name]
        return max(apps, key=lambda app: app["starttime"])["id"] if apps else None

    def ran_on_every_worker(self, app_id: str) -> bool:
        """Whether an executor on each worker finished tasks of the application."""
        return all(
            any("Finished task" in log.read_text() for log in work.glob(f"{app_id}/*/stderr"))
            for work in self.work_dirs
        )


def _json(ui: str) -> dict:
    with urllib.request.urlopen(f"{ui}/json/", timeout=5) as response:
        return json.load(response)


def _alive_workers(ui: str) -> int:
    try:
        return sum(worker["state"] == "ALIVE" for worker in _json(ui)["workers"])
    except (OSError, ValueError):  # not listening yet, or an empty page while it starts
        return 0


def _environment(home: Path) -> dict[str, str]:
    return {
        **{key: value for key, value in os.environ.items() if not key.startswith("SPARK_")},
        "SPARK_LOCAL_IP": "127.0.0.1",
        "PYSPARK_PYTHON": sys.executable,
        "SPARK_LOG_DIR": str(home / "logs"),
    }


def _start(home: Path, name: str, command: list[str]) -> subprocess.Popen:
    log = (home / f"{name}.log").open("w")
    return subprocess.Popen(
        command,
        env=_environment(home),
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@contextmanager
def connect_server(home: Path, master: str = "local[2]") -> Iterator[tuple[str, subprocess.Popen]]:
    """A Spark Connect server on ``master``: its ``sc://`` URL and its process."""
    home.mkdir(parents=True, exist_ok=True)
    port = free_port()
    server = _start(
        home,
        "connect-server",
        [
            str(BIN / "spark-submit"),
            *("--master", master, "--class", CONNECT_SERVER),
            *("--conf", "spark.connect.grpc.binding.address=127.0.0.1"),
            *("--conf", f"spark.connect.grpc.binding.port={port}"),
            *("--conf", "spark.ui.enabled=false"),
        ],
    )
    try:
        wait_for(
            lambda: _listening(port), START_S, f"Spark Connect listening (log in {home})", server
        )
        yield f"sc://127.0.0.1:{port}", server
    finally:
        _stop([server])


@contextmanager
def standalone_cluster(home: Path, workers: int = 2, cores: int = 1) -> Iterator[Cluster]:
    """A master and ``workers`` workers of ``cores`` cores each, all bound to 127.0.0.1."""

    def start(name: str, *args: str) -> subprocess.Popen:
        return _start(home, name, [str(SPARK_CLASS), *args])

    home.mkdir(parents=True, exist_ok=True)
    port, ui_port = free_port(), free_port()
    master_url, master_ui = f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui_port}"
    with ExitStack() as stack:
        processes: list[subprocess.Popen] = []
        stack.callback(_stop, processes)
        master = start(
            "master",
            "org.apache.spark.deploy.master.Master",
            *("--host", "127.0.0.1", "--port", str(port), "--webui-port", str(ui_port)),
        )
        processes.append(master)
        work_dirs = [home / f"worker-{number}" for number in range(workers)]
        for number, work_dir in enumerate(work_dirs):
            processes.append(
                start(
                    f"worker-{number}",
                    "org.apache.spark.deploy.worker.Worker",
                    *("--host", "127.0.0.1", "--webui-port", str(free_port())),
                    *("--cores", str(cores), "--memory", "1g", "--work-dir", str(work_dir)),
                    master_url,
                )
            )
        wait_for(
            lambda: _alive_workers(master_ui) == workers,
            START_S,
            f"{workers} Spark workers registered with the master (logs in {home})",
            master,
        )
        yield Cluster(master_url, master_ui, work_dirs)


def _stop(processes: list[subprocess.Popen]) -> None:
    for process in reversed(processes):
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
