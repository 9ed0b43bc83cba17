"""The local Label Studio: its own environment, bound to 127.0.0.1, data under the data home.

``make label-studio`` creates ``.venv-label-studio`` (its pins conflict with Prefect's).
:func:`start` launches ``label-studio start`` with the first user and a known API token,
local-files serving rooted at ``<data_home>/labelling/files``, no analytics, version checks
or error reports leaving the machine, and waits on ``/health`` (the first start runs its
migrations: two to three minutes here). The token comes from ``labelling.token``
(``VISIONLOOP_LABELLING__TOKEN``) or a secrets file under the data home, made on first use
with mode 0600; the admin's password likewise from ``labelling.admin_password`` or a secrets
file of its own. Neither is logged, saved with settings or part of the repository.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from visionloop.settings import REPO_ROOT, Secret, Settings

VENV = REPO_ROOT / ".venv-label-studio"
START_TIMEOUT_S = 420
#: Variables Label Studio also reads without its prefix: never inherited.
BARE_NAMES = ("USERNAME", "PASSWORD", "PORT", "HOST", "USER_TOKEN")


class LabelStudioUnavailableError(RuntimeError):
    """Label Studio cannot be reached or started; the message names the URL and the fix."""


def token(settings: Settings) -> str:
    """The API token: from settings, else the secrets file (created on first use)."""
    return _secret(settings.labelling.token, settings.secrets_dir / "label-studio-token")


def admin_password(settings: Settings) -> str:
    """The local admin's password, a secret of its own (never the API token)."""
    path = settings.secrets_dir / "label-studio-password"
    return _secret(settings.labelling.admin_password, path)


def _secret(configured: Secret | None, path: Path) -> str:
    if configured is not None:
        return configured.get_secret_value()
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        descriptor = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(descriptor, "w") as stream:
            stream.write(secrets.token_hex(20))
    return path.read_text().strip()


def local_url(settings: Settings) -> str:
    return f"http://127.0.0.1:{settings.labelling.port}"


def files_root(settings: Settings) -> Path:
    """``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT``: annotators' images live below it."""
    return settings.labelling_dir / "files"


def healthy(url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout_s) as response:
            return response.status == 200
    except (urllib.error.URLError, TimeoutError, OSError):
        return False


def _port_free(port: int) -> bool:
    """Whether a server could listen on ``port`` (as Label Studio does, with SO_REUSEADDR:
    connections of a stopped server in TIME_WAIT do not hold it)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def server_environment(settings: Settings) -> dict[str, str]:
    data = settings.labelling_dir / "label-studio"
    environment = {key: value for key, value in os.environ.items() if key not in BARE_NAMES}
    return environment | {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": settings.labelling.admin_email,
        "LABEL_STUDIO_PASSWORD": admin_password(settings),
        "LABEL_STUDIO_USER_TOKEN": token(settings),
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
        "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(files_root(settings)),
        "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
    }


@dataclass
class LocalServer:
    """A running local Label Studio (started by :func:`start`)."""

    process: subprocess.Popen
    url: str
    log: Path

    def stop(self, timeout_s: float = 30) -> None:
        """Stop the server and every process of its session (it has one of its own)."""
        group = self.process.pid
        if not _signal_group(group, signal.SIGTERM):
            return
        deadline = time.monotonic() + timeout_s
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=timeout_s)
        while _signal_group(group, 0) and time.monotonic() < deadline:
            time.sleep(0.1)  # children still shutting down
        if _signal_group(group, signal.SIGKILL):
            self.process.wait()


def _signal_group(group: int, number: int) -> bool:
    """Send ``number`` to the process group; False when no process of it is left."""
    try:
        os.killpg(group, number)
    except ProcessLookupError:
        return False
    return True


def start(settings: Settings, timeout_s: float = START_TIMEOUT_S) -> LocalServer:
    """Start the local Label Studio and wait until it answers ``/health``."""
    executable = VENV / "bin" / "label-studio"
    if not executable.exists():
        raise LabelStudioUnavailableError(
            f"{executable} is missing: run `make label-studio` to create its environment"
        )
    url = local_url(settings)
    if not _port_free(settings.labelling.port):  # Label Studio would quietly take the next one
        raise LabelStudioUnavailableError(
            f"port {settings.labelling.port} is in use (is Label Studio already running at "
            f"{url}?); stop what holds it or set VISIONLOOP_LABELLING__PORT"
        )
    environment = server_environment(settings)
    data = Path(environment["LABEL_STUDIO_BASE_DATA_DIR"])
    (files_root(settings) / "visionloop").mkdir(parents=True, exist_ok=True)
    data.mkdir(parents=True, exist_ok=True)
    log = settings.labelling_dir / "label-studio.log"
    command = [str(executable), "start", "--no-browser", "--internal-host", "127.0.0.1"]
    command += ["--port", str(settings.labelling.port), "--data-dir", str(data)]
    with log.open("ab") as stream:
        process = subprocess.Popen(
            command,
            env=environment,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = LocalServer(process, url, log)
    try:
        _wait_healthy(server, timeout_s)
    except BaseException:  # a failed start, Ctrl-C or SIGTERM while waiting: stop it
        server.stop()
        raise
    return server


def _wait_healthy(server: LocalServer, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not healthy(server.url):
        if server.process.poll() is not None or time.monotonic() > deadline:
            tail = server.log.read_text(errors="replace").splitlines()[-15:]
            raise LabelStudioUnavailableError(
                f"Label Studio did not come up at {server.url} within {timeout_s:g} s; last "
                f"log lines ({server.log}):\n" + "\n".join(tail)
            )
        time.sleep(1)
