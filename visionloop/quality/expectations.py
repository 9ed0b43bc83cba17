"""Great Expectations: suites from reviewed JSON files, one checkpoint per suite, Data Docs.

Suites live in ``expectations/suites/*.json`` and are loaded into a file Data Context at
``settings.gx_root`` on every run (added or updated by name), so the files are the single
source of the checks. :func:`validate` runs each suite on its pandas frame and returns
every expectation's verdict as a flat :class:`ExpectationOutcome`, plus the Data Docs pages.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from visionloop.settings import Settings
from visionloop.shipped import folder

if TYPE_CHECKING:
    from great_expectations.checkpoint.checkpoint import Checkpoint
    from great_expectations.core.batch_definition import BatchDefinition
    from great_expectations.core.expectation_suite import ExpectationSuite
    from great_expectations.core.expectation_validation_result import (
        ExpectationSuiteValidationResult,
    )
    from great_expectations.data_context import FileDataContext

SUITES_DIR = folder("visionloop.expectations") / "suites"
CRITICAL, WARNING = "critical", "warning"
DATASOURCE = "visionloop"
INDEX_LIMIT = 3 * 60  # the Data Docs index lists the results of the last 60 gate runs


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


def _context(settings: Settings) -> FileDataContext:
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="file", context_root_dir=settings.gx_root)
    # Data Docs are built inside the published reports folder (see visionloop.web), also for
    # a context made before they moved there or under another data home.
    site_dir = f"{settings.data_docs_dir}{os.sep}"
    sites = context.variables.data_docs_sites or {}
    if any(site["store_backend"]["base_directory"] != site_dir for site in sites.values()):
        context.variables.progress_bars = ProgressBarsConfig(globally=False)
        for site in sites.values():  # the index reads every listed result on each build
            site.setdefault("site_index_builder", {})["validation_results_limit"] = INDEX_LIMIT
            site["store_backend"]["base_directory"] = site_dir
        context.variables.data_docs_sites = sites
        context.variables.save()
        context = gx.get_context(mode="file", context_root_dir=settings.gx_root)  # re-read it
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


def short(value: Any, limit: int = 120) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _observed(result: Mapping[str, Any]) -> str:
    """Observed value, or unexpected count and a few examples, of one expectation result."""
    if "observed_value" in result:
        return short(result["observed_value"])
    if "unexpected_count" in result:
        text = f"{result['unexpected_count']} of {result.get('element_count')} rows unexpected"
        sample = result.get("partial_unexpected_list") or []
        return text + (f", e.g. {short(sample[:3], 220)}" if sample else "")
    return short(dict(result)) if result else ""


def _outcomes(
    suite: str, result: ExpectationSuiteValidationResult, explain: Mapping[str, str]
) -> list[ExpectationOutcome]:
    """Flat verdicts; ``explain`` replaces the observed text of a column where given."""
    outcomes = []
    for item in result.results:
        config = item.expectation_config
        column = config.kwargs.get("column")
        severity = getattr(config, "severity", None) or config.meta.get("severity", CRITICAL)
        exception = item.exception_info or {}
        if exception.get("raised_exception"):
            observed = f"error: {short(exception.get('exception_message'))}"
        elif column in explain:
            observed = explain[column]
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


def validate(
    settings: Settings,
    run_name: str,
    frames: Mapping[str, pd.DataFrame],
    params: dict[str, Any],
    explain: Mapping[str, Mapping[str, str]] | None = None,
    suites_dir: Path = SUITES_DIR,
) -> tuple[list[ExpectationOutcome], dict[str, Path]]:
    """Run each suite on its frame and build Data Docs; returns outcomes and pages by suite.

    ``pages["index"]`` is the Data Docs index; ``explain[suite][column]`` overrides the
    observed text of that suite's expectations on ``column``.
    """
    from great_expectations.core.run_identifier import RunIdentifier
    from great_expectations.data_context.types.resource_identifiers import (
        ExpectationSuiteIdentifier,
    )

    context = _context(settings)
    run_id = RunIdentifier(run_name=run_name, run_time=datetime.now(UTC))
    outcomes: list[ExpectationOutcome] = []
    identifiers = {}
    for suite, frame in frames.items():
        checkpoint = _checkpoint(context, suite, suites_dir)
        result = checkpoint.run(
            batch_parameters={"dataframe": frame}, expectation_parameters=params, run_id=run_id
        )
        ((identifier, suite_result),) = result.run_results.items()
        identifiers[suite] = identifier
        outcomes += _outcomes(suite, suite_result, (explain or {}).get(suite, {}))
    suite_ids = [ExpectationSuiteIdentifier(name=suite) for suite in frames]
    sites = context.build_data_docs(resource_identifiers=[*identifiers.values(), *suite_ids])
    pages = {
        suite: _page(context.get_docs_sites_urls(resource_identifier=identifier)[0]["site_url"])
        for suite, identifier in identifiers.items()
    }
    pages["index"] = _page(next(iter(sites.values())))
    return outcomes, pages
