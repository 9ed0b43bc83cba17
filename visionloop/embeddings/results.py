"""The embed stage's typed results beside the embedding report: the index and the leakage check."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionloop.embeddings.leakage import LeakageSummary
from visionloop.quality.gate import GateResult


@dataclass(frozen=True)
class IndexUpdate:
    """The similar-image index of an embedder version after tonight's vectors joined it."""

    embedder_version: str
    vectors: int  # in the index now
    added: int  # tonight


@dataclass(frozen=True)
class LeakageResult:
    """The leakage check of some batches: what it found, what it excluded, its gate."""

    summary: LeakageSummary
    excluded: int  # leaked copies excluded from training (leakage.exclude)
    report: Path  # the pairs, as Parquet
    gate: GateResult  # the leakage expectation (a critical failure has stopped the flow)
    exclusions: str | None = None  # the batch of the exclusion events committed, if any
