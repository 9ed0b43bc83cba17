"""The lake's persistent label map: class names in index order, append-only.

A batch that brings new classes appends them (``settings.classes`` first, in its order,
then the batch's other labels sorted); an index never changes. TFRecord shards of every
batch, every model head and every prediction agree on what index ``k`` means.
``lake/label_map.json`` is replaced atomically when a batch commits.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

LABEL_MAP_FILE = "label_map.json"


def path_of(lake_dir: Path) -> Path:
    return lake_dir / LABEL_MAP_FILE


def read(lake_dir: Path) -> tuple[str, ...]:
    """The committed classes in index order (empty for a lake without labels)."""
    path = path_of(lake_dir)
    if not path.exists():
        return ()
    return tuple(json.loads(path.read_text())["classes"])


def extended(current: Sequence[str], configured: Sequence[str] | None, labels: Iterable[str]):
    """``current`` plus the classes it lacks: configured ones in their order, then the rest sorted.

    Pure: the Spark job uses it to index a staged batch's TFRecords and the commit to persist
    the same map, under the same writer lock.
    """
    classes = list(current)
    known = set(classes)
    for name in [*(configured or ()), *sorted(set(labels) - set(configured or ()))]:
        if name not in known:
            classes.append(name)
            known.add(name)
    return tuple(classes)


def write(lake_dir: Path, classes: Sequence[str]) -> None:
    """Replace the map atomically."""
    path = path_of(lake_dir)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"classes": list(classes)}, indent=2) + "\n")
    os.replace(temporary, path)


def index_of(classes: Sequence[str]) -> dict[str, int]:
    return {name: index for index, name in enumerate(classes)}
