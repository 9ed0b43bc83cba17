"""Batch ids: sortable by time, and unique even for batches started in the same second.

A committed batch's tables live under ``<table>/batch_id=<id>``; two batches with one id
would share (and one would lose) a partition, so every writer of the lake names its batches
here.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_batch_id(kind: str | None = None, now: datetime | None = None) -> str:
    """``20261124T020000Z-1a2b3c4d`` (or ``20261124T020000Z-labels-1a2b3c4d`` with a kind)."""
    moment = (now or datetime.now(UTC)).astimezone(UTC)
    infix = f"-{kind}" if kind else ""
    return f"{moment:%Y%m%dT%H%M%SZ}{infix}-{uuid.uuid4().hex[:8]}"
