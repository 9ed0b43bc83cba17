"""A lock that holds across machines: a Prefect global concurrency limit of one slot.

A ``flock`` binds only the processes of one machine (and not at all on object-store mounts);
a lake written from several machines takes its writer lock from the Prefect server all of
them use. The slot is a lease the holder renews while it works, so a holder that is killed
frees it when the lease runs out (``LEASE_S``), as the kernel frees a dead holder's flock.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import MissingContextError, ObjectAlreadyExists, ObjectNotFound
from prefect.logging import get_run_logger
from prefect.settings import PREFECT_API_URL

from visionloop.locks import LockBusyError

LOGGER = logging.getLogger(__name__)

LEASE_S = 60.0  # a killed holder's slot is free again this long after its last renewal (the least
# Prefect accepts)


class SharedLockUnavailableError(RuntimeError):
    """The Prefect server that holds the lock cannot be reached."""


@contextmanager
def exclusive(name: str, holder: str, *, timeout_s: float) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit ``name`` for the ``with`` block,
    waiting up to ``timeout_s``; the limit is created on first use.

    Taking, waiting for and releasing the slot are logged (to the run's log in a flow run),
    so a run's log shows when it wrote the lake and how long another writer held it up.
    """
    log = _logger()
    if _ensure_limit(name):
        log.warning(
            "waiting up to %g s for %s (%s): another writer holds it", timeout_s, name, holder
        )
    started = time.monotonic()
    with ExitStack() as held:
        try:
            held.enter_context(
                concurrency(
                    name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True
                )
            )
        except TimeoutError as error:
            raise LockBusyError(
                f"the Prefect concurrency limit {name!r} ({holder}) is held by another writer; "
                f"waited {timeout_s:g} s. Wait for that run to finish (or cancel it) and run "
                "again."
            ) from error
        log.info("holding %s (%s), after waiting %.1f s", name, holder, time.monotonic() - started)
        try:
            yield
        finally:
            log.info("releasing %s (%s)", name, holder)


def _logger() -> logging.Logger | logging.LoggerAdapter:
    try:
        return get_run_logger()
    except MissingContextError:  # outside a flow run: a spark-submit job, a test
        return LOGGER


def _ensure_limit(name: str) -> int:
    """The slots of ``name`` taken now (0 once it was created)."""
    try:
        with get_client(sync_client=True) as client:
            try:
                return client.read_global_concurrency_limit_by_name(name).active_slots
            except ObjectNotFound:
                limit = GlobalConcurrencyLimitCreate(name=name, limit=1)
                with suppress(ObjectAlreadyExists):  # another writer created it first
                    client.create_global_concurrency_limit(limit)
                return 0
    except httpx.TransportError as error:
        raise SharedLockUnavailableError(
            f"the lake writer lock lives on the Prefect server at {PREFECT_API_URL.value()!r}, "
            f"which did not answer ({error}); start it or set PREFECT_API_URL, or use "
            "lake_lock: file on one machine"
        ) from error
