"""The quality gate of a batch and of the table it would make (Great Expectations).

Three suites, kept as JSON files in ``expectations/suites/`` and reviewed like code:

* ``images_batch`` checks the rows of the new batch (staged, or committed when not staged);
* ``images_table`` checks one row of column aggregates per Parquet file of the table with
  the batch in it (schema, null/empty/duplicate ids and images, splits, labels, sizes);
* ``images_stats`` checks a one-row frame: split fractions of the batch and the table, the
  rarest class count of the table, and the batch's quarantine rate.

No frame holds image bytes, and only the batch's rows are ever a frame: the table is read
as per-file aggregates kept beside each batch (:mod:`visionloop.quality.aggregates`), so
memory stays flat and no committed image is read again as the lake grows. An image's label
is its latest label event (annotators' labels count), else the label it came with.
Suite files hold structure and each expectation's ``severity``; every number comes from
settings as a suite parameter (``{"$PARAMETER": name}``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from visionloop.lake.contract import SPLITS
from visionloop.quality.aggregates import (
    TableStats,
    batch_columns,
    batch_frame,
    staged_or_committed,
    table_file_stats,
)
from visionloop.quality.expectations import (
    CRITICAL,
    SUITES_DIR,
    ExpectationOutcome,
    validate,
)
from visionloop.settings import Settings
from visionloop.web import report_url

BATCH_SUITE, TABLE_SUITE, STATS_SUITE = "images_batch", "images_table", "images_stats"
SUITES = (BATCH_SUITE, TABLE_SUITE, STATS_SUITE)
OVERRIDE_HINT = (
    "To accept this batch anyway, rerun with --accept-failing-batch "
    "(flow parameter accept_failing_batch=True); the override is recorded on the run."
)


@dataclass(frozen=True)
class GateResult:
    """The outcomes of every suite, where Data Docs shows them, and whether an override applied.

    ``data_docs`` and ``pages`` are the files (under the published reports folder);
    ``links`` holds each page's address on the reports server (``web.reports_url``), which is
    what the message quotes: a path only opens on the machine that wrote it.
    """

    outcomes: list[ExpectationOutcome]
    data_docs: Path
    overridden: bool
    batch_id: str = ""
    pages: dict[str, Path] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)  # page -> its http:// address
    hint: str = OVERRIDE_HINT  # what an operator can do about a failure

    @property
    def critical_failures(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity == CRITICAL]

    @property
    def warnings(self) -> list[ExpectationOutcome]:
        return [o for o in self.outcomes if not o.success and o.severity != CRITICAL]

    @property
    def passed(self) -> bool:
        """No critical expectation failed, or an operator accepted the failures."""
        return self.overridden or not self.critical_failures

    def link(self, page: Path) -> str:
        """The address of ``page`` on the reports server (the path when none is known)."""
        named = {path: self.links[key] for key, path in self.pages.items() if key in self.links}
        return named.get(page, str(page))

    @property
    def data_docs_url(self) -> str:
        return self.link(self.data_docs)

    @property
    def message(self) -> str:
        """Empty when nothing critical failed; otherwise names failures, Data Docs and the fix."""
        failures = self.critical_failures
        if not failures:
            return ""
        head = (
            f"Quality gate: batch {self.batch_id} failed {len(failures)} critical expectation(s)"
            + (" (accepted by operator override)" if self.overridden else "")
            + ":"
        )
        lines = [head]
        for suite in dict.fromkeys(outcome.suite for outcome in failures):
            lines.append(
                f"  {suite} (Data Docs: {self.link(self.pages.get(suite, self.data_docs))})"
            )
            lines.extend(
                f"    - {o.expectation}{f'({o.column})' if o.column else ''}: "
                f"{o.description}; observed {o.observed}"
                for o in failures
                if o.suite == suite
            )
        if self.warnings:
            lines.append(f"  ({len(self.warnings)} warning(s) recorded)")
        lines.append(f"Data Docs: {self.data_docs_url}")
        if "index" in self.pages:
            lines.append(f"All results: {self.link(self.pages['index'])}")
        if not self.overridden:
            lines.append(self.hint)
        return "\n".join(lines)

    def summary_rows(self) -> list[dict[str, Any]]:
        """One row per expectation, failures first, for a Prefect table artifact."""
        ordered = sorted(self.outcomes, key=lambda o: (o.success, o.severity != CRITICAL))
        return [outcome.row() for outcome in ordered]

    def to_json(self) -> dict[str, Any]:
        return {
            "batch_id": self.batch_id,
            "passed": self.passed,
            "overridden": self.overridden,
            "critical_failures": len(self.critical_failures),
            "warnings": len(self.warnings),
            "message": self.message,
            "data_docs": str(self.data_docs),
            "data_docs_url": self.data_docs_url,
            "pages": {suite: str(page) for suite, page in self.pages.items()},
            "stats": self.stats,
            "outcomes": self.summary_rows(),
        }


class QualityGateError(RuntimeError):
    """A critical expectation failed; the message names it, Data Docs and the override."""


def enforce(result: GateResult) -> None:
    """Raise :class:`QualityGateError` unless the gate passed (or was overridden)."""
    if not result.passed:
        raise QualityGateError(result.message)


# Statistics and suite parameters: every number comes from settings.


def split_bounds(expected: float, rows: int, tolerance: float) -> tuple[float, float]:
    """Allowed range of a split fraction: the wider of the tolerance and 3 binomial sigmas."""
    sigma = math.sqrt(expected * (1 - expected) / rows) if rows else math.inf
    width = max(tolerance, 3 * sigma)
    return max(0.0, expected - width), min(1.0, expected + width)


def _fractions(split_rows: Mapping[str, int], scope: str) -> dict[str, float]:
    rows = sum(split_rows.values())
    return {
        f"{scope}_{split}_fraction": split_rows.get(split, 0) / rows if rows else math.nan
        for split in SPLITS
    }


def class_counts(settings: Settings, table: TableStats) -> dict[str, int]:
    """Images per class in the table, by latest label event (every configured class)."""
    classes = settings.classes if settings.classes is not None else list(table.class_counts)
    return {str(name): int(table.class_counts.get(name, 0)) for name in sorted(classes)}


def gate_statistics(
    settings: Settings, batch: pd.DataFrame, table: TableStats, files_in: int, quarantined: int
) -> dict[str, Any]:
    """The one row the stats suite checks (NaN where a statistic is undefined)."""
    counts = class_counts(settings, table)
    return {
        **_fractions(batch["split"].value_counts().to_dict(), "batch"),
        **_fractions(table.split_rows, "table"),
        "min_class_count": float(min(counts.values())) if counts else math.nan,
        "quarantine_rate": quarantined / files_in if files_in else 0.0,
    }


def _batch_labels(batch: pd.DataFrame) -> set[str]:
    return set(batch["label"].dropna())


def label_sets(settings: Settings, batch: pd.DataFrame, prior: set[str]) -> tuple[list, list]:
    """``(allowed, known)``: labels the critical check allows, and those a warning expects."""
    if settings.classes is not None:
        allowed = sorted(settings.classes)
        return allowed, sorted(set(allowed) | _batch_labels(batch))  # the critical check covers it
    everything = sorted(prior | _batch_labels(batch))  # nothing is forbidden outright
    return everything, sorted(prior or _batch_labels(batch))  # the first labels define the set


def suite_parameters(
    settings: Settings, batch: pd.DataFrame, table: TableStats, allowed: list, known: list
) -> dict[str, Any]:
    """Values of every ``$PARAMETER`` the suites name."""
    quality = settings.quality
    params: dict[str, Any] = {
        "expected_columns": batch_columns(),
        "splits": list(SPLITS),
        "allowed_labels": allowed,
        "known_labels": known,
        "min_width": quality.min_width,
        "max_width": quality.max_width,
        "min_height": quality.min_height,
        "max_height": quality.max_height,
        "min_class_count": quality.min_class_count,
        "max_quarantine_rate": quality.max_quarantine_rate,
    }
    expected = settings.split.model_dump()
    for scope, rows in (("batch", len(batch)), ("table", table.rows)):
        for split in SPLITS:
            low, high = split_bounds(expected[split], rows, quality.split_tolerance)
            params[f"{scope}_{split}_fraction_min"] = low
            params[f"{scope}_{split}_fraction_max"] = high
    return params


def stats_observed(
    stats: Mapping[str, float], params: Mapping[str, Any], counts: Mapping[str, int]
) -> dict[str, str]:
    """Readable value and bounds of each statistic the stats suite checks."""
    texts = {}
    for column, value in stats.items():
        text = "undefined (no rows)" if math.isnan(value) else f"{value:.4g}"
        if column == "min_class_count":
            rarest = [name for name, count in counts.items() if count == value]
            text += f" for {', '.join(rarest[:5])}" if rarest else ""
            text += f" (needs >= {params['min_class_count']})"
        elif column == "quarantine_rate":
            text += f" (allowed <= {params['max_quarantine_rate']})"
        else:
            text += f" (allowed {params[f'{column}_min']:.4g}..{params[f'{column}_max']:.4g})"
        texts[column] = text
    return texts


def run_gate(
    settings: Settings,
    batch_id: str,
    files_in: int,
    quarantined: int,
    *,
    accept_failing_batch: bool = False,
    suites_dir: Path = SUITES_DIR,
) -> GateResult:
    """Validate the batch and the table it makes; record the result in the batch's run folder.

    Does not raise on failures: call :func:`enforce` (or read ``passed``). With
    ``accept_failing_batch`` the failures are kept but ``passed`` is true and
    ``overridden`` records that an operator accepted them.
    """
    batch = batch_frame(staged_or_committed(settings, batch_id), batch_id)
    table = table_file_stats(settings, batch_id)
    allowed, known = label_sets(settings, batch, table.prior_labels)
    stats = gate_statistics(settings, batch, table, files_in, quarantined)
    params = suite_parameters(settings, batch, table, allowed, known)
    counts = class_counts(settings, table)
    frames = {
        BATCH_SUITE: batch,
        TABLE_SUITE: table.frame(set(allowed)),
        STATS_SUITE: pd.DataFrame([stats]),
    }
    explain = {STATS_SUITE: stats_observed(stats, params, counts)}
    outcomes, pages = validate(settings, batch_id, frames, params, explain, suites_dir)
    failing = [o.suite for o in outcomes if not o.success and o.severity == CRITICAL]
    result = GateResult(
        outcomes=outcomes,
        data_docs=pages[failing[0]] if failing else pages["index"],
        overridden=accept_failing_batch and bool(failing),
        batch_id=batch_id,
        pages=pages,
        links=_links(settings, pages),
        stats={
            **{key: None if math.isnan(value) else value for key, value in stats.items()},
            "batch_rows": len(batch),
            "table_rows": table.rows,
            "files_in": files_in,
            "quarantined": quarantined,
            "class_counts": counts,
            "accept_failing_batch": accept_failing_batch,
        },
    )
    _record(settings, result)
    return result


def _links(settings: Settings, pages: Mapping[str, Path]) -> dict[str, str]:
    """Each Data Docs page's address on the reports server (they are built under it)."""
    return {key: report_url(settings, page) for key, page in pages.items()}


def _record(settings: Settings, result: GateResult) -> Path:
    directory = settings.runs_dir / result.batch_id
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "validation.json"
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
    return path


LEAKAGE_SUITE = "leakage"


def leakage_gate(settings: Settings, run_name: str, summary: dict[str, Any]) -> GateResult:
    """The leakage expectation on a batch's check; its severity is ``leakage.severity``."""
    frame = pd.DataFrame([{"leakage_rate": summary["leakage_rate"]}])
    params = {"max_leakage_rate": settings.leakage.max_leakage_rate}
    explain = {
        LEAKAGE_SUITE: {
            "leakage_rate": f"{summary['leakage_rate']:.4g} ({summary['leaked_images']} of "
            f"{summary['images']} images; allowed <= {settings.leakage.max_leakage_rate})"
        }
    }
    outcomes, pages = validate(settings, run_name, {LEAKAGE_SUITE: frame}, params, explain)
    outcomes = [dataclasses.replace(o, severity=settings.leakage.severity) for o in outcomes]
    failing = any(not o.success and o.severity == CRITICAL for o in outcomes)
    return GateResult(
        outcomes=outcomes,
        data_docs=pages[LEAKAGE_SUITE] if failing else pages["index"],
        overridden=False,
        batch_id=run_name,
        pages=pages,
        links=_links(settings, pages),
        stats=summary,
        hint="The batch's leaked copies are excluded from training already (label events, "
        "see the pairs in the leakage report); exclude more with `visionloop exclude IMAGE_ID "
        "--reason …`, then rerun. To record leakage as a warning instead, set "
        "VISIONLOOP_LEAKAGE__SEVERITY=warning.",
    )
