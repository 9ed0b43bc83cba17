"""The Great Expectations gate, run for real on tiny hand-written images tables."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
import pytest

from tests.gate_rows import (
    commit_gate_rows,
    gate_rows,
    image_id_of,
    stage_gate_rows,
    tiny_png,
    write_gate_rows,
)
from visionloop.lake import commit as lake
from visionloop.lake.label_events import ANNOTATOR, event_id, events_table
from visionloop.quality.aggregates import (
    STATS_FILE,
    STATS_TABLE,
    batch_columns,
    batch_frame,
    table_file_stats,
)
from visionloop.quality.gate import QualityGateError, enforce, run_gate, split_bounds
from visionloop.settings import load_settings
from visionloop.web import report_url


def _failed(result, severity: str = "critical") -> set[tuple[str, str, str | None]]:
    failures = result.critical_failures if severity == "critical" else result.warnings
    return {(o.suite, o.expectation, o.column) for o in failures}


def test_batch_frame_has_lengths_not_bytes(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    write_gate_rows(settings.images_dir / "batch_id=b1", gate_rows(range(3)), row_group_size=1)
    frame = batch_frame(sorted((settings.images_dir / "batch_id=b1").glob("*.parquet")), "b1")
    assert list(frame.columns) == batch_columns()
    assert frame["image_nbytes"].tolist() == [len(tiny_png())] * 3
    assert frame["batch_id"].tolist() == ["b1"] * 3
    assert list(batch_frame([], "none").columns) == batch_columns()


def test_table_is_read_as_one_row_of_aggregates_per_file(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    write_gate_rows(settings.images_dir / "batch_id=b1", gate_rows(range(3)), row_group_size=1)
    commit_gate_rows(settings, "b2", gate_rows(range(3, 5), width=7))
    stage_gate_rows(settings, "b3", gate_rows(range(4, 7), labels=(None,)))  # id 4 is in b2 already
    stats = table_file_stats(settings, "b3")
    frame = stats.frame({"cat"})
    assert frame["batch_id"].tolist() == ["b1", "b2", "b3"]
    assert frame["rows"].tolist() == [3, 2, 3]
    assert frame["schema_matches"].tolist() == [True, True, True]
    assert frame["ids_in_other_files"].tolist() == [0, 1, 1]
    assert frame["labels_not_allowed"].tolist() == [1, 1, 0]  # the dogs
    assert frame["min_width"].tolist() == [32, 7, 32]
    assert stats.rows == 8 and stats.prior_labels == {"cat", "dog"}
    assert stats.class_counts == {"cat": 3, "dog": 2}


def test_split_tolerance_widens_for_small_samples() -> None:
    assert split_bounds(0.8, 100_000, 0.05) == pytest.approx((0.75, 0.85))
    low, high = split_bounds(0.1, 10, 0.05)
    assert low == 0.0 and high == pytest.approx(0.1 + 3 * (0.09 / 10) ** 0.5)
    assert split_bounds(0.1, 0, 0.05) == (0.0, 1.0)


def test_clean_batch_passes_and_rare_class_is_a_warning(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)
    commit_gate_rows(settings, "b1", gate_rows(range(8)))
    stage_gate_rows(settings, "b2", gate_rows(range(8, 12)))
    result = run_gate(settings, "b2", files_in=5, quarantined=1)
    enforce(result)
    assert result.passed and not result.overridden and not result.critical_failures
    assert _failed(result, "warning") == {
        ("images_stats", "expect_column_values_to_be_between", "min_class_count")
    }
    assert result.warnings[0].observed == "6 for cat, dog (needs >= 10)"
    assert result.stats["class_counts"] == {"cat": 6, "dog": 6}
    assert result.data_docs.name == "index.html" and result.data_docs.is_file()
    assert result.data_docs.is_relative_to(settings.data_docs_dir)  # published with the reports
    assert all(page.is_file() for page in result.pages.values())
    recorded = json.loads((settings.runs_dir / "b2" / "validation.json").read_text())
    assert recorded["passed"] and recorded["warnings"] == 1 and recorded["message"] == ""
    assert {row["suite"] for row in result.summary_rows()} == {
        "images_batch",
        "images_table",
        "images_stats",
    }


def test_duplicate_id_fails_critically_until_an_operator_accepts_it(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    commit_gate_rows(settings, "b1", gate_rows(range(6)))
    stage_gate_rows(settings, "b2", gate_rows(range(4, 8)))
    result = run_gate(settings, "b2", files_in=4, quarantined=0)
    assert not result.passed
    assert _failed(result) == {
        ("images_table", "expect_column_values_to_be_between", "ids_in_other_files")
    }
    assert result.data_docs.is_file() and "images_table" in str(result.data_docs)
    with pytest.raises(QualityGateError) as raised:
        enforce(result)
    message = str(raised.value)
    # The pages are quoted as their addresses on the reports server, never as local paths.
    page = report_url(settings, result.data_docs)
    assert page.startswith(f"{settings.web.reports_url}/data-docs/validations/images_table/")
    assert result.data_docs_url == page and f"images_table (Data Docs: {page})" in message
    assert f"All results: {report_url(settings, result.pages['index'])}" in message
    assert str(settings.data_home) not in message and "file://" not in message
    assert "- expect_column_values_to_be_between(ids_in_other_files): image_id is unique" in message
    assert f"Data Docs: {page}" in message and "--accept-failing-batch" in message

    accepted = run_gate(settings, "b2", files_in=4, quarantined=0, accept_failing_batch=True)
    enforce(accepted)
    assert accepted.passed and accepted.overridden
    assert _failed(accepted) == _failed(result)
    recorded = json.loads((settings.runs_dir / "b2" / "validation.json").read_text())
    assert recorded["passed"] and recorded["overridden"] and recorded["critical_failures"] == 1
    assert "operator override" in recorded["message"]


def test_unexpected_label_is_a_warning_unless_classes_are_configured(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    commit_gate_rows(settings, "b1", gate_rows(range(6)))
    stage_gate_rows(settings, "b2", gate_rows(range(6, 9), labels=("bird", None)))
    open_set = run_gate(settings, "b2", files_in=3, quarantined=0)
    assert open_set.passed
    label_check = ("images_batch", "expect_column_values_to_be_in_set", "label")
    assert _failed(open_set, "warning") == {label_check}
    assert "bird" in open_set.warnings[0].observed

    closed = settings.model_copy(update={"classes": ["cat", "dog"]})
    closed_set = run_gate(closed, "b2", files_in=3, quarantined=0)
    assert not closed_set.passed and not closed_set.warnings
    table_check = ("images_table", "expect_column_values_to_be_between", "labels_not_allowed")
    assert _failed(closed_set) == {label_check, table_check}


def test_width_out_of_range_fails(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    stage_gate_rows(settings, "b1", gate_rows(range(4)) + gate_rows(range(4, 5), width=4))
    result = run_gate(settings, "b1", files_in=5, quarantined=0)
    between = "expect_column_values_to_be_between"
    assert _failed(result) == {
        ("images_batch", between, "width"),
        ("images_table", between, "min_width"),
    }
    batch_failure = next(o for o in result.critical_failures if o.suite == "images_batch")
    assert "1 of 5 rows unexpected" in batch_failure.observed


def test_skewed_splits_fail_on_a_large_table_not_a_small_batch(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    commit_gate_rows(settings, "b1", gate_rows(range(400), split="train"))
    stage_gate_rows(settings, "b2", gate_rows(range(400, 408), split="train"))
    result = run_gate(settings, "b2", files_in=8, quarantined=0)
    failed = {o.column for o in result.critical_failures}
    assert failed == {"table_train_fraction", "table_val_fraction", "table_test_fraction"}
    batch_checks = [o for o in result.outcomes if (o.column or "").startswith("batch_")]
    assert len(batch_checks) == 3 and all(o.success for o in batch_checks)


def test_quarantine_rate_over_threshold_fails(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    stage_gate_rows(settings, "b1", gate_rows(range(4)))
    result = run_gate(settings, "b1", files_in=10, quarantined=6)
    assert _failed(result) == {
        ("images_stats", "expect_column_values_to_be_between", "quarantine_rate")
    }
    assert result.critical_failures[0].observed.startswith("0.6 ")


def _unreadable_images(path: Path) -> None:
    """Overwrite every ``image`` column chunk of a Parquet file with zeros (same size)."""
    metadata = pq.ParquetFile(path).metadata
    column = metadata.schema.to_arrow_schema().get_field_index("image")
    with path.open("r+b") as stream:
        for group in range(metadata.num_row_groups):
            chunk = metadata.row_group(group).column(column)
            start = chunk.dictionary_page_offset if chunk.has_dictionary_page else None
            stream.seek(start or chunk.data_page_offset)
            stream.write(bytes(chunk.total_compressed_size))


def test_committed_batches_are_read_as_stored_aggregates_never_their_images(
    tmp_path: Path,
) -> None:
    settings = load_settings(data_home=tmp_path, quality={"min_class_count": 0})
    stage_gate_rows(settings, "b1", gate_rows(range(8)))
    enforce(run_gate(settings, "b1", files_in=8, quarantined=0))
    assert (settings.staging_dir / "b1" / STATS_TABLE / STATS_FILE).is_file()
    lake.commit(settings, "b1", {"batch_id": "b1"})
    assert (settings.lake_dir / STATS_TABLE / "batch_id=b1" / STATS_FILE).is_file()
    committed = settings.images_dir / "batch_id=b1" / "part-0.parquet"
    _unreadable_images(committed)
    with pytest.raises(OSError):  # the committed images cannot be read any more ...
        pq.read_table(committed, columns=["image"])

    stage_gate_rows(settings, "b2", gate_rows(range(8, 12)))
    result = run_gate(settings, "b2", files_in=4, quarantined=0)  # ... and are never read
    enforce(result)
    assert not result.warnings and result.stats["table_rows"] == 12
    frame = table_file_stats(settings, "b2").frame(None)
    assert frame["empty_images"].tolist() == [0, 0] and frame["rows"].tolist() == [8, 4]


def test_a_lake_without_aggregates_gets_them_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = load_settings(data_home=tmp_path)
    commit_gate_rows(settings, "b1", gate_rows(range(6)))  # committed before aggregates were kept
    stage_gate_rows(settings, "b2", gate_rows(range(6, 9)))
    with caplog.at_level(logging.INFO, logger="visionloop.quality.aggregates"):
        first = table_file_stats(settings, "b2").frame(None)
    assert "aggregating 1 of 1 images files" in caplog.text
    assert (settings.lake_dir / STATS_TABLE / "batch_id=b1" / STATS_FILE).is_file()
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="visionloop.quality.aggregates"):
        again = table_file_stats(settings, "b2").frame(None)
    assert "aggregating" not in caplog.text
    assert again.equals(first) and first["rows"].tolist() == [6, 3]


def _annotation(image_id: str, label: str, recorded_at: datetime) -> dict[str, Any]:
    return {
        "event_id": event_id(ANNOTATOR, image_id, label, recorded_at),
        "image_id": image_id,
        "label": label,
        "label_source": ANNOTATOR,
        "annotator": "ann",
        "labelled_at": recorded_at,
        "recorded_at": recorded_at,
    }


def test_annotator_label_events_lift_a_class_over_min_class_count(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path)  # min_class_count 10
    labels = ("cat",) * 11 + ("dog",) * 5 + (None,) * 4
    commit_gate_rows(
        settings, "b1", gate_rows(range(20), labels=labels)
    )  # cat 11, dog 5, 4 unlabelled
    stage_gate_rows(settings, "b2", gate_rows(range(20, 24), labels=labels))  # 4 more cats
    early, late = datetime(2024, 2, 1, tzinfo=UTC), datetime(2024, 2, 2, tzinfo=UTC)
    events = [_annotation(image_id_of(index), "dog", late) for index in range(16, 20)]
    events += [
        _annotation(image_id_of(0), "dog", late),  # a cat relabelled ...
        _annotation(image_id_of(0), "bird", early),  # ... after an older, superseded label
        _annotation(image_id_of(999), "cat", late),  # an image the table does not hold
    ]
    folder = settings.lake_dir / "label_events" / "batch_id=sync-1"
    folder.mkdir(parents=True)
    pq.write_table(events_table(events), folder / "part-0.parquet")

    result = run_gate(settings, "b2", files_in=4, quarantined=0)
    assert result.stats["class_counts"] == {"cat": 14, "dog": 10}
    assert result.passed and not result.warnings
    assert result.stats["min_class_count"] == 10
