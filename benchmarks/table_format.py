"""Benchmark: Delta Lake (delta-rs) against Apache Iceberg (pyiceberg, SQL catalog) as the
lake's table format on a real S3-compatible server (issue 14 §1: "choose by measurement").

Everything runs against SeaweedFS's ``weed mini`` on 127.0.0.1 (``tests/s3_server.py``),
a table of the images table's shape (``image_id``, ``label``, ``batch_id``, 2 KB of
``image`` bytes a row). Measured, alternating Delta and Iceberg each round:

- **append**: one night's batch (``--rows``) appended by the library's own writer;
- **commit of written files**: the lake's own pattern — Spark executors write Parquet
  files, the driver commits them as one transaction (Delta ``create_write_transaction``
  with ``AddAction`` s, Iceberg ``add_files``); only the commit is timed;
- **concurrent writers**: ``--writers`` processes each appending ``--appends`` small
  batches at once to one table: rows expected, found, duplicated, and appends that failed
  loudly (an error the writer sees and can retry is not a loss; a missing row without one is);
- **time travel**: every version/snapshot read back holds exactly the rows committed by then;
- **deletion**: an image deleted (an erasure request) is gone from the current version and
  still in the version a registered model trained on; Delta's vacuum keeps that version's
  files when told to (``keep_versions``).

Delta commits through the object store's conditional put (``conditional_put: etag``; S3 and
SeaweedFS support it), so writers on many machines need nothing else; Iceberg's SQL catalog
commits in its database (SQLite here, which only one machine can share — Postgres across
machines). Results: ``benchmarks/results/table_format.json``.

    .venv/bin/python -m benchmarks.table_format [--rows 1000] [--rounds 5] [--writers 4]
        [--appends 10]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from benchmarks.common import fresh_workdir, spread, write_result
from tests.s3_server import S3Server, s3_server

ROW_BYTES = 2_000
SCHEMA = pa.schema(
    [
        ("image_id", pa.string()),
        ("label", pa.string()),
        ("batch_id", pa.string()),
        ("image", pa.binary()),
    ]
)


def rows_of(rows: int, batch_id: str) -> pa.Table:
    rng = np.random.default_rng(int.from_bytes(batch_id.encode()[-8:], "little"))
    return pa.table(
        {
            "image_id": [f"{batch_id}-{n:05d}" for n in range(rows)],
            "label": ["shirt"] * rows,
            "batch_id": [batch_id] * rows,
            "image": [rng.bytes(ROW_BYTES) for _ in range(rows)],
        },
        schema=SCHEMA,
    )


@dataclass(frozen=True)
class Store:
    """Where the tables live, picklable for the writer processes."""

    endpoint: str
    bucket: str
    access_key: str
    secret_key: str
    catalog_db: str  # Iceberg's SQL catalog (SQLite)

    @classmethod
    def of(cls, server: S3Server, work: Path) -> Store:
        return cls(
            server.endpoint,
            server.bucket,
            server.access_key,
            server.secret_key,
            str(work / "catalog.db"),
        )

    def delta_options(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
            "AWS_ALLOW_HTTP": "true",
            "conditional_put": "etag",  # atomic commits on the object store itself
        }

    def filesystem(self) -> pafs.S3FileSystem:
        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key=self.access_key,
            secret_key=self.secret_key,
            region="us-east-1",
            scheme="http",
        )

    def catalog(self):
        from pyiceberg.catalog.sql import SqlCatalog

        return SqlCatalog(
            "lake",
            uri=f"sqlite:///{self.catalog_db}",
            warehouse=f"s3://{self.bucket}/iceberg",
            **{
                "s3.endpoint": self.endpoint,
                "s3.access-key-id": self.access_key,
                "s3.secret-access-key": self.secret_key,
                "s3.region": "us-east-1",
                "py-io-impl": "pyiceberg.io.pyarrow.PyArrowFileIO",
            },
        )


class DeltaFormat:
    name = "delta"

    def __init__(self, store: Store) -> None:
        self.store = store

    def uri(self, table: str) -> str:
        return f"s3://{self.store.bucket}/delta/{table}"

    def create(self, table: str) -> None:
        from deltalake import write_deltalake

        empty = SCHEMA.empty_table()
        write_deltalake(self.uri(table), empty, mode="error", storage_options=self.opts)

    @property
    def opts(self) -> dict[str, str]:
        return self.store.delta_options()

    def append(self, table: str, data: pa.Table) -> None:
        from deltalake import write_deltalake

        write_deltalake(self.uri(table), data, mode="append", storage_options=self.opts)

    def commit_files(self, table: str, paths: list[str], schema: pa.Schema) -> None:
        from deltalake import DeltaTable
        from deltalake.transaction import AddAction

        fs, root = self.store.filesystem(), self.uri(table).removeprefix("s3://")
        actions = []
        for path in paths:
            info = fs.get_file_info(path)
            actions.append(
                AddAction(
                    path=path.removeprefix(root + "/"),
                    size=info.size,
                    partition_values={},
                    modification_time=int(info.mtime.timestamp() * 1000),
                    data_change=True,
                    stats="{}",
                )
            )
        dt = DeltaTable(self.uri(table), storage_options=self.opts)
        dt.create_write_transaction(actions, mode="append", schema=schema)

    def file_folder(self, table: str) -> str:
        return self.uri(table).removeprefix("s3://")

    def versions(self, table: str) -> list[int]:
        from deltalake import DeltaTable

        return list(range(DeltaTable(self.uri(table), storage_options=self.opts).version() + 1))

    def read_ids(self, table: str, version: int | None = None) -> list[str]:
        from deltalake import DeltaTable

        dt = DeltaTable(self.uri(table), version=version, storage_options=self.opts)
        return dt.to_pyarrow_table(columns=["image_id"])["image_id"].to_pylist()

    def delete(self, table: str, image_id: str) -> None:
        from deltalake import DeltaTable

        dt = DeltaTable(self.uri(table), storage_options=self.opts)
        dt.delete(f"image_id = '{image_id}'")

    def vacuum_keeping(self, table: str, version: int) -> dict[str, int]:
        """Vacuum with no retention but ``version`` kept: files a plain vacuum would remove
        (counted, not removed) and files removed."""
        from deltalake import DeltaTable

        dt = DeltaTable(self.uri(table), storage_options=self.opts)
        options = {"retention_hours": 0, "enforce_retention_duration": False}
        plain = dt.vacuum(dry_run=True, **options)
        kept = dt.vacuum(dry_run=False, keep_versions=[version], **options)
        return {"plain_vacuum_would_remove": len(plain), "removed_keeping_pinned": len(kept)}


class IcebergFormat:
    name = "iceberg"

    def __init__(self, store: Store) -> None:
        self.store = store
        self.catalog = store.catalog()
        if ("lake",) not in self.catalog.list_namespaces():
            self.catalog.create_namespace("lake")

    def create(self, table: str) -> None:
        self.catalog.create_table(f"lake.{table}", schema=SCHEMA)

    def table(self, table: str):
        return self.catalog.load_table(f"lake.{table}")

    def append(self, table: str, data: pa.Table) -> None:
        self.table(table).append(data)

    def commit_files(self, table: str, paths: list[str], schema: pa.Schema) -> None:
        self.table(table).add_files([f"s3://{path}" for path in paths])

    def file_folder(self, table: str) -> str:
        return f"{self.store.bucket}/iceberg-files/{table}"

    def versions(self, table: str) -> list[int]:
        return [snapshot.snapshot_id for snapshot in self.table(table).snapshots()]

    def read_ids(self, table: str, version: int | None = None) -> list[str]:
        scan = self.table(table).scan(snapshot_id=version, selected_fields=("image_id",))
        return scan.to_arrow()["image_id"].to_pylist()

    def delete(self, table: str, image_id: str) -> None:
        self.table(table).delete(f"image_id == '{image_id}'")


def format_of(name: str, store: Store) -> DeltaFormat | IcebergFormat:
    return DeltaFormat(store) if name == "delta" else IcebergFormat(store)


def timed(action) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def write_files(store: Store, folder: str, batch_id: str, rows: int, files: int) -> list[str]:
    """What Spark's executors do: Parquet files written straight to the object store."""
    fs, paths = store.filesystem(), []
    for number in range(files):
        path = f"{folder}/part-{number:05d}-{batch_id}.parquet"
        pq.write_table(rows_of(rows // files, f"{batch_id}-{number}"), path, filesystem=fs)
        paths.append(path)
    return paths


def _writer(args: tuple[str, Store, str, int, int, int]) -> dict[str, Any]:
    """One of the concurrent writers: ``appends`` batches of ``rows``."""
    name, store, table, writer, appends, rows = args
    tables, failed = format_of(name, store), []
    for number in range(appends):
        try:
            tables.append(table, rows_of(rows, f"w{writer}-{number}"))
        except Exception as error:  # any failure the writer sees counts as loud
            failed.append(f"{type(error).__name__}: {str(error)[:160]}")
    return {"failed": failed}


def concurrent(name: str, store: Store, writers: int, appends: int, rows: int) -> dict[str, Any]:
    tables = format_of(name, store)
    tables.create("concurrent")
    jobs = [(name, store, "concurrent", w, appends, rows) for w in range(writers)]
    started = time.perf_counter()
    with multiprocessing.get_context("spawn").Pool(writers) as pool:
        outcomes = pool.map(_writer, jobs)
    wall = time.perf_counter() - started
    failed = [message for outcome in outcomes for message in outcome["failed"]]
    ids = tables.read_ids("concurrent")
    expected = {
        f"w{w}-{n}-{i:05d}" for w in range(writers) for n in range(appends) for i in range(rows)
    }
    counts = Counter(ids)
    failed_batches = len(failed)
    return {
        "wall_s": round(wall, 2),
        "appends": writers * appends,
        "failed_loudly": failed_batches,
        "failure_examples": sorted(set(failed))[:3],
        "rows_expected": len(expected),
        "rows_found": len(ids),
        "rows_duplicated": sum(count - 1 for count in counts.values() if count > 1),
        "rows_lost_silently": len(expected) - len(set(ids)) - failed_batches * rows,
    }


def time_travel(name: str, store: Store, rows: int, commits: int) -> dict[str, Any]:
    """Each version holds exactly what was committed by then; then one image is deleted."""
    tables = format_of(name, store)
    tables.create("travel")
    for number in range(commits):
        tables.append("travel", rows_of(rows, f"t{number}"))
    versions = tables.versions("travel")
    sizes = [len(tables.read_ids("travel", version)) for version in versions]
    pinned = versions[-1]  # the version a registered model trained on
    victim = f"t0-{0:05d}"
    tables.delete("travel", victim)
    result = {
        "rows_per_version": sizes,
        "exact": sizes[-commits:] == [rows * (n + 1) for n in range(commits)],
        "deleted_gone_now": victim not in tables.read_ids("travel"),
        "deleted_still_in_pinned_version": victim in tables.read_ids("travel", pinned),
    }
    if isinstance(tables, DeltaFormat):
        result["vacuum"] = tables.vacuum_keeping("travel", pinned)
        result["pinned_version_readable_after_vacuum"] = (
            len(tables.read_ids("travel", pinned)) == rows * commits
        )
    return result


def one_round(
    store: Store, tables: DeltaFormat | IcebergFormat, number: int, rows: int, files: int
) -> tuple[float, float]:
    """Seconds of one append, and of one commit of already written files."""
    batch = rows_of(rows, f"r{number}")
    append = timed(lambda: tables.append("append", batch))
    paths = write_files(store, tables.file_folder("files"), f"r{number}", rows, files)
    commit = timed(lambda: tables.commit_files("files", paths, SCHEMA))
    return append, commit


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1000, help="rows of a night's batch")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writers", type=int, default=4)
    parser.add_argument("--appends", type=int, default=10, help="per concurrent writer")
    parser.add_argument("--files", type=int, default=4, help="files a batch is written as")
    args = parser.parse_args()
    work = fresh_workdir("table-format")
    names = ("delta", "iceberg")
    result: dict[str, Any] = {"rows": args.rows, "row_bytes": ROW_BYTES, "rounds": args.rounds}
    with s3_server(work / "s3") as server:
        store = Store.of(server, work)
        tables = {name: format_of(name, store) for name in names}
        for name in names:
            tables[name].create("append")
            tables[name].create("files")
        seconds: dict[str, dict[str, list[float]]] = {
            n: {"append": [], "commit": []} for n in names
        }
        for number in range(args.rounds):
            for name in names:  # alternating: both see the same machine state each round
                append, commit = one_round(store, tables[name], number, args.rows, args.files)
                seconds[name]["append"].append(append)
                seconds[name]["commit"].append(commit)
        for name in names:
            rows = len(tables[name].read_ids("files"))
            assert rows == args.rows * args.rounds, f"{name}: {rows} rows after commits"
        result["seconds"] = {
            name: {kind: spread(values) for kind, values in kinds.items()}
            for name, kinds in seconds.items()
        }
        result["iceberg_over_delta"] = {
            kind: spread(
                [
                    i / d
                    for i, d in zip(seconds["iceberg"][kind], seconds["delta"][kind], strict=True)
                ]
            )
            for kind in ("append", "commit")
        }
        result["concurrent"] = {
            name: concurrent(name, store, args.writers, args.appends, 50) for name in names
        }
        result["time_travel"] = {name: time_travel(name, store, 100, 3) for name in names}
    print(json.dumps(result, indent=1))
    write_result("table_format", result)


if __name__ == "__main__":
    main()
