"""The arrival ledger: which landing files the lake has already placed.

Every ingest writes one ledger row per file it read (table ``arrivals``, committed with the
batch). The next ingest compares its listing with the ledger by path, size, mtime and label,
and reads only what is new or replaced in place; the comparison touches four small columns,
never the images.
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from visionloop.lake.contract import ARRIVALS_SCHEMA
from visionloop.lake.snapshot import list_table

ARRIVALS = "arrivals"
#: What identifies an arrival: the same path, size, mtime and label is the same file.
KEY = ("uri", "size", "mtime_ns", "label")
_NO_LABEL = "\x00"  # joins never match nulls: unlabelled files key on this instead


def placed(lake_dir: Path) -> pa.Table:
    """The ledger's keys (``uri, size, mtime_ns, label``) of every file already placed."""
    columns = ["source_uri", "size", "mtime_ns", "label"]
    files = [str(path) for path in list_table(lake_dir, ARRIVALS)]
    if not files:
        table = ARRIVALS_SCHEMA.empty_table().select(columns)
    else:
        table = ds.dataset(files, format="parquet").to_table(columns=columns)
    return table.rename_columns(list(KEY))


def unplaced(listed: pa.Table, ledger: pa.Table) -> pa.Table:
    """The rows of ``listed`` whose file the ledger has not placed (new or replaced)."""
    if not ledger.num_rows or not listed.num_rows:
        return listed
    left = listed.append_column("_label_key", pc.fill_null(listed["label"], _NO_LABEL))
    right = ledger.select(["uri", "size", "mtime_ns"]).append_column(
        "_label_key", pc.fill_null(ledger["label"], _NO_LABEL)
    )
    keys = ["uri", "size", "mtime_ns", "_label_key"]
    right = right.group_by(keys).aggregate([])
    kept = left.join(right, keys=keys, join_type="left anti")
    return kept.drop_columns(["_label_key"]).sort_by("entry_id")
