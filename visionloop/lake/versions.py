"""Model outputs kept apart by version: an embedding or scoring batch names its version.

The ``embeddings`` and ``predictions`` tables grow by a whole lake whenever the embedder or
the champion changes. Each batch's id carries a key of the version that wrote it
(``20261202T020000Z-predictions-v1a2b3c4d5e6f-…``), so a reader of one version lists only
its partitions and never opens another version's files.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from pathlib import Path

from visionloop.lake.batch_ids import new_batch_id
from visionloop.lake.contract import PARTITION_COLUMN
from visionloop.lake.snapshot import list_table


def version_key(version: str) -> str:
    """A short, path-safe key of a model or embedder version."""
    return "v" + hashlib.sha256(version.encode()).hexdigest()[:12]


def versioned_batch_id(table: str, version: str, now: datetime | None = None) -> str:
    """The id of a batch of ``table`` rows that ``version`` wrote."""
    return new_batch_id(f"{table}-{version_key(version)}", now)


def version_files(lake_dir: Path, table: str, version: str) -> list[Path]:
    """The committed files of ``table`` that may hold rows of ``version``: its own
    partitions, and those written before batches named their version (read and filtered)."""
    key, marker = f"-{table}-{version_key(version)}-", f"-{table}-v"
    return [
        path
        for path in list_table(lake_dir, table)
        if key in _batch_of(path) or marker not in _batch_of(path)
    ]


def _batch_of(path: Path) -> str:
    return path.parent.name.removeprefix(f"{PARTITION_COLUMN}=")
