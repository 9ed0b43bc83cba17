"""The Great Expectations quality gate of a batch and of the table it would make.

Three suites, kept as JSON files in ``expectations/suites/`` and reviewed like code, are
loaded into a file Data Context at ``settings.gx_root`` on every run:

* ``images_batch`` checks the rows of the new batch (staged, or committed when not staged);
* ``images_table`` checks the rows of the whole table with the batch in it;
* ``images_stats`` checks a one-row frame of aggregates: split fractions of the batch and
  the table, the rarest class count of the table, and the batch's quarantine rate.

Rows are the table's metadata columns plus ``image_nbytes`` (the length of the encoded
image); image bytes are read one row group at a time and dropped. Suite files hold the
structure and each expectation's ``severity``; every number comes from settings and
reaches the suites as suite parameters (``{"$PARAMETER": name}``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from visionloop.contract import IMAGES_SCHEMA, PARTITION_COLUMN, SPLITS
from visionloop.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from great_expectations.checkpoint.checkpoint import Checkpoint
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )
    from great_expectations.data_context import FileDataContext

SUITES_DIR = REPO_ROOT / "expectations" / "suites"
BATCH_SUITE, TABLE_SUITE, STATS_SUITE = "images_batch", "images_table", "images_stats"
SUITES = (BATCH_SUITE, TABLE_SUITE, STATS_SUITE)
CRITICAL, WARNING = "critical", "warning"
NBYTES_COLUMN = "image_nbytes"
DATASOURCE = "visionloop"
INDEX_LIMIT = 3 * 60  # Data Docs index lists the results of the last 60 gate runs
OVERRIDE_HINT = (
    "To accept this batch anyway, rerun with --accept-failing-batch "
    "(flow parameter accept_failing_batch=True); the override is recorded on the run."
)


@dataclass(frozen=True)
class ExpectationOutcome:
    """One expectation's verdict, flattened for messages, artifacts and JSON."""

    suite: str
    expectation: str
    column: str | None
    severity: str  # "critical" | "warning"
    success: bool
    observed: str  # short text of the observed value / unexpected count
    description: str = ""

    @property
    def name(self) -> str:
        column = f"({self.column})" if self.column else ""
        return f"{self.suite}: {self.expectation}{column}"

    def row(self) -> dict[str, Any]:
        return {
            "suite": self.suite,
            "expectation": self.expectation,
            "column": self.column or "",
            "severity": self.severity,
            "status": "passed" if self.success else "FAILED",
            "observed": self.observed,
            "description": self.description,
        }


@dataclass(frozen=True)
class GateResult:
    """The outcomes of every suite, where Data Docs shows them, and whether an override applied."""

    outcomes: list[ExpectationOutcome]
    data_docs: Path
    overridden: bool
    batch_id: str = ""
    pages: dict[str, Path] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)

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
            lines.append(f"  {suite} (Data Docs: {self.pages.get(suite, self.data_docs)})")
            lines.extend(
                f"    - {o.expectation}{f'({o.column})' if o.column else ''}: "
                f"{o.description}; observed {o.observed}"
                for o in failures
                if o.suite == suite
            )
        if self.warnings:
            lines.append(f"  ({len(self.warnings)} warning(s) recorded)")
        lines.append(f"Data Docs: {self.data_docs}")
        if "index" in self.pages:
            lines.append(f"All results: {self.pages['index']}")
        if not self.overridden:
            lines.append(OVERRIDE_HINT)
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


# Reading the table: metadata plus image length, one row group at a time.


def _frame_schema() -> pa.Schema:
    schema = IMAGES_SCHEMA.remove(IMAGES_SCHEMA.get_field_index("image"))
    return schema.append(pa.field(NBYTES_COLUMN, pa.int64())).append(
        pa.field(PARTITION_COLUMN, pa.string())
    )


def expected_columns() -> list[str]:
    """The columns of a gate frame: the contract's, less ``image``, plus length and batch."""
    return _frame_schema().names


def _file_table(path: Path, batch_id: str) -> pa.Table:
    """One Parquet file's metadata and image lengths, reading a row group at a time."""
    parquet = pq.ParquetFile(path)
    names = parquet.schema_arrow.names
    parts = []
    for group in range(parquet.num_row_groups):
        table = parquet.read_row_group(group)
        if "image" in names:
            nbytes = pc.binary_length(table.column("image")).cast(pa.int64())
            table = table.drop_columns(["image"]).append_column(NBYTES_COLUMN, nbytes)
        parts.append(table)
    table = pa.concat_tables(parts) if parts else parquet.schema_arrow.empty_table()
    if "image" in table.column_names:  # a file without row groups
        table = table.drop_columns(["image"])
    return table.append_column(PARTITION_COLUMN, pa.array([batch_id] * table.num_rows, pa.string()))


def _read(files: Iterable[tuple[Path, str]]) -> pd.DataFrame:
    tables = [_file_table(path, batch_id) for path, batch_id in files]
    if not tables:
        return _frame_schema().empty_table().to_pandas()
    return pa.concat_tables(tables, promote_options="permissive").to_pandas()


def _parquet_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.parquet")) if directory.is_dir() else []


def table_frame(images_dir: Path, batch_id: str | None = None) -> pd.DataFrame:
    """Metadata columns, ``image_nbytes`` and ``batch_id`` of the images table (or one batch)."""
    pattern = f"{PARTITION_COLUMN}={batch_id}" if batch_id else f"{PARTITION_COLUMN}=*"
    partitions = sorted(path for path in images_dir.glob(pattern) if path.is_dir())
    return _read(
        (path, partition.name.split("=", 1)[1])
        for partition in partitions
        for path in _parquet_files(partition)
    )


def _batch_and_prior(settings: Settings, batch_id: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The batch's rows (staged if staged, else committed) and the rest of the table."""
    staged = settings.staging_dir / batch_id / "images"
    if staged.is_dir():
        batch = _read((path, batch_id) for path in _parquet_files(staged))
    else:
        batch = table_frame(settings.images_dir, batch_id)
    table = table_frame(settings.images_dir)
    prior = table[table[PARTITION_COLUMN] != batch_id].reset_index(drop=True)
    return batch, prior


# Statistics and suite parameters: every number comes from settings.


def split_bounds(expected: float, rows: int, tolerance: float) -> tuple[float, float]:
    """Allowed range of a split fraction: the wider of the tolerance and 3 binomial sigmas."""
    sigma = math.sqrt(expected * (1 - expected) / rows) if rows else math.inf
    width = max(tolerance, 3 * sigma)
    return max(0.0, expected - width), min(1.0, expected + width)


def _labels(frame: pd.DataFrame) -> list[str]:
    return sorted(set(frame["label"].dropna()))


def _fractions(frame: pd.DataFrame, scope: str) -> dict[str, float]:
    counts = frame["split"].value_counts()
    rows = len(frame)
    return {
        f"{scope}_{split}_fraction": (float(counts.get(split, 0)) / rows if rows else math.nan)
        for split in SPLITS
    }


def class_counts(settings: Settings, table: pd.DataFrame) -> dict[str, int]:
    """Labelled images per class in the table (every configured class, present or not)."""
    counts = table["label"].dropna().value_counts()
    classes = settings.classes if settings.classes is not None else list(counts.index)
    return {str(name): int(counts.get(name, 0)) for name in sorted(classes)}


def gate_statistics(
    settings: Settings, batch: pd.DataFrame, table: pd.DataFrame, files_in: int, quarantined: int
) -> dict[str, Any]:
    """The one row the stats suite checks (NaN where a statistic is undefined)."""
    counts = class_counts(settings, table)
    return {
        **_fractions(batch, "batch"),
        **_fractions(table, "table"),
        "min_class_count": float(min(counts.values())) if counts else math.nan,
        "quarantine_rate": quarantined / files_in if files_in else 0.0,
    }


def suite_parameters(
    settings: Settings, batch: pd.DataFrame, prior: pd.DataFrame, table: pd.DataFrame
) -> dict[str, Any]:
    """Values of every ``$PARAMETER`` the suites name."""
    quality = settings.quality
    if settings.classes is not None:
        allowed = sorted(settings.classes)
        known = sorted(set(allowed) | set(_labels(table)))  # the critical check covers it
    else:
        allowed = _labels(table)  # nothing is forbidden outright
        known = _labels(prior) or _labels(batch)  # the first labels define the set
    params: dict[str, Any] = {
        "expected_columns": expected_columns(),
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
    for scope, frame in (("batch", batch), ("table", table)):
        for split in SPLITS:
            low, high = split_bounds(expected[split], len(frame), quality.split_tolerance)
            params[f"{scope}_{split}_fraction_min"] = low
            params[f"{scope}_{split}_fraction_max"] = high
    return params


# Great Expectations: context, suites from files, one checkpoint per suite, Data Docs.


def _context(settings: Settings) -> FileDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    fresh = not (settings.gx_root / "great_expectations.yml").exists()
    context = gx.get_context(mode="file", context_root_dir=settings.gx_root)
    if fresh:
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        sites = context.variables.data_docs_sites or {}
        for site in sites.values():  # the index reads every listed result on each build
            site.setdefault("site_index_builder", {})["validation_results_limit"] = INDEX_LIMIT
        context.variables.data_docs_sites = sites
        context.variables.save()
    return context


def load_suite_file(path: Path) -> ExpectationSuite:
    """An ExpectationSuite from a reviewed JSON file (name, meta, expectations)."""
    from great_expectations.core.expectation_suite import ExpectationSuite

    spec = json.loads(path.read_text())
    return ExpectationSuite(
        name=spec["name"], expectations=spec["expectations"], meta=spec.get("meta")
    )


def _batch_definition(context: FileDataContext, name: str) -> BatchDefinition:
    """The whole-dataframe batch definition of the pandas asset ``name``, made on first use."""
    try:
        source = context.data_sources.get(DATASOURCE)
    except (KeyError, ValueError):
        source = context.data_sources.add_pandas(DATASOURCE)
    try:
        asset = source.get_asset(name)
    except LookupError:
        asset = source.add_dataframe_asset(name)
    try:
        return asset.get_batch_definition(name)
    except KeyError:
        return asset.add_batch_definition_whole_dataframe(name)


def _checkpoint(context: FileDataContext, suite_name: str, suites_dir: Path) -> Checkpoint:
    """Load the suite file into the context and (re)register its validation and checkpoint."""
    import great_expectations as gx

    path = suites_dir / f"{suite_name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"expectation suite {path} is missing; restore it from git")
    suite = context.suites.add_or_update(load_suite_file(path))
    definition = context.validation_definitions.add_or_update(
        gx.ValidationDefinition(
            name=suite_name, data=_batch_definition(context, suite_name), suite=suite
        )
    )
    return context.checkpoints.add_or_update(
        gx.Checkpoint(
            name=suite_name,
            validation_definitions=[definition],
            actions=[],
            result_format={"result_format": "SUMMARY"},
        )
    )


def _short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _observed(result: Mapping[str, Any]) -> str:
    """Observed value, or unexpected count and a few examples, of one expectation result."""
    if "observed_value" in result:
        return _short(result["observed_value"])
    if "unexpected_count" in result:
        text = f"{result['unexpected_count']} of {result.get('element_count')} rows unexpected"
        sample = result.get("partial_unexpected_list") or []
        return text + (f", e.g. {_short(sample[:3], 220)}" if sample else "")
    return _short(dict(result)) if result else ""


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


def _outcomes(
    suite: str, result: ExpectationSuiteValidationResult, stats_texts: Mapping[str, str]
) -> list[ExpectationOutcome]:
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        column = config.kwargs.get("column")
        severity = getattr(config, "severity", None) or config.meta.get("severity", CRITICAL)
        exception = item.exception_info or {}
        if exception.get("raised_exception"):
            observed = f"error: {_short(exception.get('exception_message'))}"
        elif suite == STATS_SUITE and column in stats_texts:
            observed = stats_texts[column]
        else:
            observed = _observed(item.result or {})
        outcomes.append(
            ExpectationOutcome(
                suite=suite,
                expectation=config.type,
                column=column,
                severity=str(getattr(severity, "value", severity)),
                success=bool(item.success),
                observed=observed,
                description=config.description or "",
            )
        )
    return outcomes


def _page(url: str) -> Path:
    return Path(url.removeprefix("file://"))


def _validate(
    settings: Settings,
    batch_id: str,
    frames: Mapping[str, pd.DataFrame],
    params: dict[str, Any],
    suites_dir: Path,
) -> tuple[dict[str, ExpectationSuiteValidationResult], dict[str, Path]]:
    """Run each suite on its frame and build Data Docs; returns results and pages by suite.

    ``pages["index"]`` is the Data Docs index.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    context = _context(settings)
    run_id = RunIdentifier(run_name=batch_id, run_time=datetime.now(UTC))
    results, identifiers = {}, {}
    for suite, frame in frames.items():
        checkpoint = _checkpoint(context, suite, suites_dir)
        outcome = checkpoint.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=run_id
        )
        ((identifier, result),) = outcome.run_results.items()
        results[suite], identifiers[suite] = result, identifier
    suite_ids = [ExpectationSuiteIdentifier(name=suite) for suite in frames]
    sites = context.build_data_docs(resource_identifiers=[*identifiers.values(), *suite_ids])
    pages = {
        suite: _page(context.get_docs_sites_urls(resource_identifier=identifier)[0]["site_url"])
        for suite, identifier in identifiers.items()
    }
    pages["index"] = _page(next(iter(sites.values())))
    return results, pages


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
    batch, prior = _batch_and_prior(settings, batch_id)
    table = pd.concat([prior, batch], ignore_index=True) if len(prior) else batch
    stats = gate_statistics(settings, batch, table, files_in, quarantined)
    params = suite_parameters(settings, batch, prior, table)
    counts = class_counts(settings, table)
    frames = {BATCH_SUITE: batch, TABLE_SUITE: table, STATS_SUITE: pd.DataFrame([stats])}
    results, pages = _validate(settings, batch_id, frames, params, suites_dir)
    texts = stats_observed(stats, params, counts)
    outcomes = [o for suite, res in results.items() for o in _outcomes(suite, res, texts)]
    failing = [o.suite for o in outcomes if not o.success and o.severity == CRITICAL]
    result = GateResult(
        outcomes=outcomes,
        data_docs=pages[failing[0]] if failing else pages["index"],
        overridden=accept_failing_batch and bool(failing),
        batch_id=batch_id,
        pages=pages,
        stats={
            **{key: None if math.isnan(value) else value for key, value in stats.items()},
            "batch_rows": len(batch),
            "table_rows": len(table),
            "files_in": files_in,
            "quarantined": quarantined,
            "class_counts": counts,
            "accept_failing_batch": accept_failing_batch,
        },
    )
    _record(settings, result)
    return result


def _record(settings: Settings, result: GateResult) -> Path:
    directory = settings.runs_dir / result.batch_id
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "validation.json"
    path.write_text(json.dumps(result.to_json(), indent=2, default=str))
    return path
