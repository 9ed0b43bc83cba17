"""A lock that holds across machines: a Prefect global concurrency limit of one slot.

A ``flock`` binds only the processes of one machine (and not at all on object-store mounts);
a lake written from several machines takes its writer lock from the Prefect server all of
them use. The slot is a lease the holder renews while it works, so a holder that is killed
frees it when the lease runs out (``LEASE_S``), as the kernel frees a dead holder's flock.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound
from prefect.settings import PREFECT_API_URL

from visionloop.locks import LockBusyError

LEASE_S = 60.0  # a killed holder's slot is free again this long after its last renewal (the least
# Prefect accepts)


class SharedLockUnavailableError(RuntimeError):
    """The Prefect server that holds the lock cannot be reached."""


@contextmanager
def exclusive(name: str, holder: str, *, timeout_s: float) -> Iterator[None]:
    """Hold the one slot of the global concurrency limit ``name`` for the ``with`` block,
    waiting up to ``timeout_s``; the limit is created on first use."""
    _ensure_limit(name)
    try:
        with concurrency(
            name, occupy=1, timeout_seconds=timeout_s, lease_duration=LEASE_S, strict=True
        ):
            yield
    except TimeoutError as error:
        raise LockBusyError(
            f"the Prefect concurrency limit {name!r} ({holder}) is held by another writer; "
            f"waited {timeout_s:g} s. Wait for that run to finish (or cancel it) and run again."
        ) from error


def _ensure_limit(name: str) -> None:
    try:
        with get_client(sync_client=True) as client:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:
                limit = GlobalConcurrencyLimitCreate(name=name, limit=1)
                with suppress(ObjectAlreadyExists):  # another writer created it first
                    client.create_global_concurrency_limit(limit)
    except httpx.TransportError as error:
        raise SharedLockUnavailableError(
            f"the lake writer lock lives on the Prefect server at {PREFECT_API_URL.value()!r}, "
            f"which did not answer ({error}); start it or set PREFECT_API_URL, or use "
            "lake_lock: file on one machine"
        ) from error
