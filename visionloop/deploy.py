"""Apply ``deployments/prefect.yaml`` with values taken from the resolved settings."""

from __future__ import annotations

import os
import subprocess
import sys

from visionloop.alerts import apply_alerts
from visionloop.settings import Settings
from visionloop.shipped import code_root, folder

PREFECT_FILE = folder("visionloop.deployments") / "prefect.yaml"
#: Where ``prefect deploy`` finds the entrypoints (``flows/nightly.py``) to read the flows'
#: parameters: the checkout, or the installed package's folder. A worker runs the flows of
#: its own installation (the pull step ``visionloop.shipped.enter_code_root``), not these.
CODE_ROOT = code_root()


class DeployError(RuntimeError):
    """The deployments could not be applied."""


def deployment_env(settings: Settings) -> dict[str, str]:
    """The environment ``prefect deploy`` renders ``deployments/prefect.yaml`` with."""
    return os.environ | {
        "VISIONLOOP_NIGHTLY_CRON": settings.nightly_cron,
        "VISIONLOOP_TIMEZONE": settings.timezone,
    }


def _prefect(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "prefect", "--no-prompt", *args]
    return subprocess.run(command, cwd=CODE_ROOT, env=env, capture_output=True, text=True)


def deploy_all(settings: Settings, pool: str = "visionloop") -> None:
    """Create the process work pool (if missing), apply every deployment and the alerts."""
    env = deployment_env(settings)
    created = _prefect("work-pool", "create", pool, "--type", "process", env=env)
    if created.returncode != 0 and "already exists" not in created.stdout + created.stderr:
        raise DeployError(f"could not create work pool {pool!r}: {_tail(created)}")
    applied = _prefect("deploy", "--all", "--prefect-file", str(PREFECT_FILE), env=env)
    if applied.returncode != 0:
        raise DeployError(
            f"prefect deploy failed: {_tail(applied)}\n"
            "Is the Prefect API reachable? Check PREFECT_API_URL or start it with `make serve`."
        )
    try:
        apply_alerts(settings)
    except Exception as error:  # the API's error, whatever the client raised
        raise DeployError(f"could not create the alert automations: {error}") from error


def _tail(result: subprocess.CompletedProcess[str], lines: int = 15) -> str:
    return "\n".join((result.stdout + result.stderr).strip().splitlines()[-lines:])
