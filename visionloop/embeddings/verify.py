"""Which candidate pairs are copies: the verification cascade of the leakage check.

Each checked image (a *query*) comes with candidates (:class:`Candidates`); a pair is a copy
when its fixed-position fingerprint similarity (:mod:`visionloop.embeddings.fingerprints`:
resized, re-encoded, brightened, cropped copies) reaches ``leakage.threshold``, or, for the
``closest`` candidates, when the similarity at their best shift and rotation
(:mod:`visionloop.embeddings.alignment`: shifted and rotated copies) reaches
``leakage.aligned_threshold``. The aligned check is a cascade itself: every closest pair
gets the coarse alignment (by FFT, many pairs at once); of the pairs scoring
:data:`alignment.COARSE_FLOOR`, those of two of the night's images and each query's
``leakage.fine_checks`` best with lake images get the dearer fine check at the stored
resolution, so the number of fine checks follows the night, not how crowded the lake is
around its images.

One pass over the candidates, :data:`CHUNK` images at a time: each image is decoded and
blurred once for both checks, and its fingerprint variants are dropped after its chunk (the
queries' own are kept); only the alignment thumbnails of the closest candidates (9 KB each)
are kept to the end, so memory follows the night, not the lake. Pure functions over stored
(preprocessed) image bytes.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from visionloop.embeddings import alignment, fingerprints
from visionloop.settings import LeakageSettings

CHUNK = 256  # candidate images decoded, blurred and compared at once
ALIGNED_CHUNK = 256  # pairs coarsely aligned at once
PAIRS_CHUNK = 2048  # pairs whose fingerprints are compared at once


@dataclass(frozen=True)
class Candidates:
    """One image's candidates: all are checked by the fixed-position fingerprint, the
    ``closest`` (a subset) also at their best alignment."""

    nearest: frozenset[str]
    closest: frozenset[str]


@dataclass(frozen=True)
class Verified:
    """A pair found to be a copy (``a < b``) and its similarity."""

    a: str
    b: str
    similarity: float


@dataclass
class _Work:
    """The queries one candidate image is compared with, by fingerprint and aligned."""

    fixed: list[str] = field(default_factory=list)
    aligned: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class _Pixels:
    """What the checks need of some images: fingerprint variants, alignment thumbnails."""

    position: dict[str, int]
    variants: np.ndarray  # (N, variants, SIDE * SIDE)
    thumbnails: dict[str, np.ndarray]

    @classmethod
    def of(cls, ids: Sequence[str], images: Mapping[str, bytes], aligned: set[str]) -> _Pixels:
        greys = [alignment.blurred(images[image_id]) for image_id in ids]
        thumbnails = {
            image_id: alignment.thumbnails(grey)
            for image_id, grey in zip(ids, greys, strict=True)
            if image_id in aligned
        }
        position = {image_id: n for n, image_id in enumerate(ids)}
        return cls(position, fingerprints.variants_of(greys), thumbnails)


def _key(first: str, second: str) -> tuple[str, str]:
    return (first, second) if first < second else (second, first)


def verified_pairs(
    query_ids: Sequence[str],
    candidates: Sequence[Candidates],
    images: Mapping[str, bytes],
    settings: LeakageSettings,
) -> list[Verified]:
    """The copies among each query's candidates (``images``: the stored bytes of all of
    them), each unordered pair once, highest similarity first."""
    work = _plan(query_ids, candidates)
    queries = sorted(set(query_ids))
    query = _Pixels.of(queries, images, set(queries))
    thumbnails = dict(query.thumbnails)
    found: list[Verified] = []
    aligned: list[tuple[str, str]] = []
    others = sorted(work)
    for start in range(0, len(others), CHUNK):
        ids = others[start : start + CHUNK]
        part = _Pixels.of(ids, images, {image_id for image_id in ids if work[image_id].aligned})
        fixed = _fixed(query, part, [(q, o) for o in ids for q in work[o].fixed], settings)
        found += fixed
        known = {(pair.a, pair.b) for pair in fixed}
        aligned += [(q, o) for o in ids for q in work[o].aligned if _key(q, o) not in known]
        thumbnails.update(part.thumbnails)
    coarse = _coarse(thumbnails, sorted(aligned))  # by query: a chunk's pairs share images
    fine = _fine(coarse, images, set(queries), settings)
    return sorted(found + fine, key=lambda pair: -pair.similarity)


def _plan(query_ids: Sequence[str], candidates: Sequence[Candidates]) -> dict[str, _Work]:
    """Per candidate image, the queries to compare it with; each unordered pair once (of two
    queries, the greater id is the candidate)."""
    queried = set(query_ids)
    work: dict[str, _Work] = defaultdict(_Work)
    done: dict[str, set[tuple[str, str]]] = {"fixed": set(), "aligned": set()}
    for q, found in zip(query_ids, candidates, strict=True):
        for kind, others in (("fixed", found.nearest), ("aligned", found.closest)):
            for other in sorted(others - {q}):
                key = _key(q, other)
                if key in done[kind]:
                    continue
                done[kind].add(key)
                first, second = key if other in queried else (q, other)
                getattr(work[second], kind).append(first)
    return dict(work)


def _fixed(
    query: _Pixels, part: _Pixels, pairs: Sequence[tuple[str, str]], settings: LeakageSettings
) -> list[Verified]:
    """The ``(query, candidate)`` pairs whose :func:`fingerprints.similarity` reaches
    ``threshold``, :data:`PAIRS_CHUNK` pairs at a time."""
    found = []
    for start in range(0, len(pairs), PAIRS_CHUNK):
        chunk = pairs[start : start + PAIRS_CHUNK]
        q = query.variants[[query.position[first] for first, _ in chunk]]
        c = part.variants[[part.position[second] for _, second in chunk]]
        scores = fingerprints.similarities(q, c)
        found += [
            Verified(*_key(first, second), float(score))
            for (first, second), score in zip(chunk, scores, strict=True)
            if score >= settings.threshold
        ]
    return found


def _coarse(
    thumbnails: Mapping[str, np.ndarray], pairs: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], alignment.Alignment]:
    """The coarse alignment of each ``(query, candidate)`` pair that reaches
    :data:`alignment.COARSE_FLOOR`, :data:`ALIGNED_CHUNK` pairs at a time (each image of a
    chunk prepared once)."""
    found = {}
    for start in range(0, len(pairs), ALIGNED_CHUNK):
        chunk = pairs[start : start + ALIGNED_CHUNK]
        involved = sorted({image_id for pair in chunk for image_id in pair})
        prepared = alignment.prepare([thumbnails[image_id] for image_id in involved])
        at = {image_id: n for n, image_id in enumerate(involved)}
        matches = alignment.coarse_alignments(
            prepared, [at[first] for first, _ in chunk], [at[second] for _, second in chunk]
        )
        found.update(
            (pair, match)
            for pair, match in zip(chunk, matches, strict=True)
            if match.score >= alignment.COARSE_FLOOR
        )
    return found


def _fine(
    coarse: Mapping[tuple[str, str], alignment.Alignment],
    images: Mapping[str, bytes],
    queries: set[str],
    settings: LeakageSettings,
) -> list[Verified]:
    """The coarsely aligned pairs checked at the stored resolution: those reaching
    ``aligned_threshold``. Every pair of two queries is checked (the night's own copies of
    each other); of a query's pairs with lake images, its ``fine_checks`` best."""
    chosen, per_query = set(), defaultdict(list)
    for pair in sorted(coarse, key=lambda pair: -coarse[pair].score):
        first, second = pair
        if second in queries:
            chosen.add(pair)
        else:
            per_query[first].append(pair)
    chosen.update(pair for pairs in per_query.values() for pair in pairs[: settings.fine_checks])
    found = []
    for first, second in sorted(chosen):
        score = alignment.fine_similarity(images[first], images[second], coarse[first, second])
        if score >= settings.aligned_threshold:
            found.append(Verified(*_key(first, second), score))
    return found
