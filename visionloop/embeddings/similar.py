"""Similar-image search: the nearest images of an image file or of an image already in the lake."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from visionloop.embeddings.embedder import EmbedderSource
from visionloop.embeddings.index import VectorIndex, index_dir, saved_version
from visionloop.embeddings.vectors import read_vectors
from visionloop.lake.snapshot import take
from visionloop.settings import Settings

IMAGE_ID = re.compile(r"^[0-9a-f]{64}$")


class SimilarityError(ValueError):
    """The query cannot be answered (no index yet, an unknown id); the message says why."""


@dataclass(frozen=True)
class Match:
    image_id: str
    similarity: float
    split: str | None
    label: str | None
    source_uri: str | None


def similar(settings: Settings, source: EmbedderSource, query: str, k: int = 10) -> list[Match]:
    """The ``k`` images most like ``query``: a path to an image file, or a lake image id."""
    directory = index_dir(settings.index_dir, source.version)
    if saved_version(directory) is None:
        raise SimilarityError(
            f"no similarity index for embedder {source.version} under {settings.index_dir}; "
            "run the embed flow (or `visionloop run`) first"
        )
    index = VectorIndex.load(directory, settings.similarity)
    if Path(query).is_file():
        vector = source.build().embed([Path(query).read_bytes()])
        exclude = None
    elif IMAGE_ID.match(query):
        found = read_vectors(settings.lake_dir, source.version, image_ids=[query])
        if not len(found):
            raise SimilarityError(f"image {query} has no {source.version} vector in the lake")
        vector, exclude = found.matrix, query
    else:
        raise SimilarityError(f"{query!r} is neither an image file nor a 64-hex image id")
    neighbours = [n for n in index.search(vector, k + 1)[0] if n.image_id != exclude][:k]
    return _describe(settings, neighbours)


def _describe(settings: Settings, neighbours: list) -> list[Match]:
    columns = ["split", "label", "source_uri"]
    facts = take(settings.lake_dir).lookup([n.image_id for n in neighbours], columns)
    return [
        Match(n.image_id, n.similarity, *(facts.get(n.image_id, {}).get(c) for c in columns))
        for n in neighbours
    ]
