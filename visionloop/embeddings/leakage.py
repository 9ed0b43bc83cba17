"""Near-duplicates and split leakage, from the embedding table.

Two images that show the same picture (resized, re-encoded, brightened, cropped by a few
pixels ...) across train/val/test are **leakage**: the test split no longer measures
generalisation. Within one split they are **near-duplicates**. For each image checked,
candidates are its ``leakage.neighbours`` nearest images by embedding (the similar-image
index) and by pixel spectrum (the spectrum index beside it). Which candidates
are copies is decided by pixels (:mod:`visionloop.embeddings.verify`): at a fixed position
for all of them, at their best shift and rotation for the ``leakage.aligned_neighbours``
nearest by each index. :func:`candidates_of` and :func:`verified_pairs` are the two steps
over in-memory data (``benchmarks/leakage.py`` measures them on Fashion-MNIST).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import pyarrow as pa

from visionloop.embeddings import verify
from visionloop.embeddings.index import LakeIndexes, VectorIndex
from visionloop.embeddings.verify import Candidates
from visionloop.lake.snapshot import LakeSnapshot, row_groups
from visionloop.preprocessing import decode_stored
from visionloop.settings import LeakageSettings

LEAKAGE, NEAR_DUPLICATE = "leakage", "near_duplicate"

PAIRS_SCHEMA = pa.schema(
    [
        ("image_a", pa.string()),
        ("image_b", pa.string()),
        ("split_a", pa.string()),
        ("split_b", pa.string()),
        ("similarity", pa.float64()),
        ("kind", pa.string()),  # leakage | near_duplicate
        ("embedder_version", pa.string()),
        ("found_at", pa.timestamp("us", tz="UTC")),
    ]
)


@dataclass(frozen=True)
class Pair:
    image_a: str
    image_b: str
    split_a: str
    split_b: str
    similarity: float

    @property
    def kind(self) -> str:
        return LEAKAGE if self.split_a != self.split_b else NEAR_DUPLICATE


@dataclass(frozen=True)
class LeakageSummary:
    """What a batch's check found: the rate the expectation checks, and the counts."""

    images: int  # images checked
    leaked_images: int  # checked images with a partner in another split
    leakage_pairs: int
    near_duplicate_pairs: int

    @property
    def leakage_rate(self) -> float:
        return self.leaked_images / self.images if self.images else 0.0

    def to_dict(self) -> dict[str, float | int]:
        return {**asdict(self), "leakage_rate": self.leakage_rate}


def summarise(query_ids: Sequence[str], pairs: Sequence[Pair]) -> LeakageSummary:
    queried = set(query_ids)
    leaked = {
        image
        for pair in pairs
        if pair.kind == LEAKAGE
        for image in (pair.image_a, pair.image_b)
        if image in queried
    }
    leakage = sum(pair.kind == LEAKAGE for pair in pairs)
    return LeakageSummary(len(queried), len(leaked), leakage, len(pairs) - leakage)


def pairs_table(pairs: Sequence[Pair], embedder_version: str) -> pa.Table:
    now = datetime.now(UTC)
    return pa.Table.from_pylist(
        [
            {
                **asdict(pair),
                "kind": pair.kind,
                "embedder_version": embedder_version,
                "found_at": now,
            }
            for pair in pairs
        ],
        schema=PAIRS_SCHEMA,
    )


def thumbnail_uri(data: bytes, size: int = 48) -> str:
    """A small PNG of stored image bytes as a data URI, for a markdown artifact."""
    image = decode_stored(data)
    image.thumbnail((size, size))
    buffer = io.BytesIO()
    image.save(buffer, "PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def pairs_markdown(pairs: Sequence[Pair], images: Mapping[str, bytes], limit: int = 12) -> str:
    """The top pairs as a markdown table of thumbnails, for a Prefect artifact."""
    if not pairs:
        return "No near-duplicate or leaking pairs above the threshold."
    lines = ["| image A | image B | splits | similarity | kind |", "|---|---|---|---|---|"]
    for pair in pairs[:limit]:
        thumbs = [
            f"![{image_id[:8]}]({thumbnail_uri(images[image_id])})" if image_id in images else ""
            for image_id in (pair.image_a, pair.image_b)
        ]
        lines.append(
            f"| {thumbs[0]} `{pair.image_a[:12]}` | {thumbs[1]} `{pair.image_b[:12]}` "
            f"| {pair.split_a} / {pair.split_b} | {pair.similarity:.4f} | {pair.kind} |"
        )
    return "\n".join(lines)


@dataclass(frozen=True)
class LeakageCheck:
    """What :func:`check_batches` found for some batches."""

    pairs: list[Pair]
    summary: LeakageSummary
    images: dict[str, bytes]  # stored bytes of the images in the pairs (for thumbnails)
    queried: tuple[str, ...] = ()  # the checked batches' images

    def leaked_copies(self) -> list[str]:
        """The checked images that have a copy in another split: what to exclude from
        training (of a pair within the checked images, the greater id)."""
        queried, copies = set(self.queried), set()
        for pair in self.pairs:
            inside = sorted(image for image in (pair.image_a, pair.image_b) if image in queried)
            if pair.kind == LEAKAGE and inside:
                copies.add(inside[-1])
        return sorted(copies)


def check_batches(
    snapshot: LakeSnapshot,
    indexes: LakeIndexes,
    batch_ids: Collection[str],
    settings: LeakageSettings,
) -> LeakageCheck:
    """Pairs of each image of ``batch_ids`` with its copies anywhere in the lake (the
    batches' images are in ``indexes`` already)."""
    query_ids = _batch_ids(snapshot, batch_ids)
    if not query_ids:  # a batch of duplicates only
        return LeakageCheck([], summarise([], []), {})
    candidates = candidates_of(query_ids, indexes, settings)
    involved = set(query_ids).union(*(c.nearest for c in candidates))
    rows = snapshot.lookup(involved, ["image", "split"])
    images = {image_id: row["image"] for image_id, row in rows.items()}
    splits = {image_id: row["split"] for image_id, row in rows.items()}
    pairs = verified_pairs(query_ids, candidates, images, splits, settings)
    shown = {image for pair in pairs[:PAIRS_SHOWN] for image in (pair.image_a, pair.image_b)}
    thumbnails = {i: images[i] for i in shown if i in images}
    return LeakageCheck(pairs, summarise(query_ids, pairs), thumbnails, tuple(query_ids))


def candidates_of(
    query_ids: Sequence[str], indexes: LakeIndexes, settings: LeakageSettings
) -> list[Candidates]:
    """Each query's ``leakage.neighbours`` nearest images by embedding and by pixel spectrum,
    from the two indexes (which hold the queries too)."""
    by_embedding = nearest(indexes.vectors, query_ids, settings.neighbours)
    by_pixels = nearest(indexes.spectra, query_ids, settings.neighbours)
    m = settings.aligned_neighbours
    return [
        Candidates(
            frozenset(by_embedding.get(q, []) + by_pixels.get(q, [])),
            frozenset(by_embedding.get(q, [])[: m + 1] + by_pixels.get(q, [])[: m + 1]),
        )
        for q in query_ids
    ]


def verified_pairs(
    query_ids: Sequence[str],
    candidates: Sequence[Candidates],
    images: Mapping[str, bytes],
    splits: Mapping[str, str],
    settings: LeakageSettings,
) -> list[Pair]:
    """The candidate pairs that are copies (:func:`verify.verified_pairs`), with their splits."""
    found = verify.verified_pairs(query_ids, candidates, images, settings)
    return [Pair(p.a, p.b, splits[p.a], splits[p.b], p.similarity) for p in found]


def nearest(index: VectorIndex, query_ids: Sequence[str], k: int) -> dict[str, list[str]]:
    """The ``k`` nearest images of each query the index holds, nearest first (itself
    included), searched by its stored vector."""
    query = index.vectors_of(query_ids)
    found = index.search(query.matrix, k + 1)
    return {
        image_id: [n.image_id for n in row] for image_id, row in zip(query.ids, found, strict=True)
    }


PAIRS_SHOWN = 12


def _batch_ids(snapshot: LakeSnapshot, batch_ids: Collection[str]) -> list[str]:
    paths = [item.path for item in snapshot.files if item.batch_id in set(batch_ids)]
    return [
        image_id
        for part in row_groups(paths, ["image_id"])
        for image_id in part.table["image_id"].to_pylist()
    ]
