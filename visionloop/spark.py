"""The one place a Spark session is built from settings.

``spark_master`` names where the jobs run: ``local[*]`` (a JVM started with the session), a
cluster manager (``spark://host:7077``, ``yarn``, ``k8s://…``), or a long-lived Spark Connect
server (``sc://host:15002``) whose JVM and Python workers outlive each night's flow.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import urllib.parse

from pyspark.sql import SparkSession

from visionloop.settings import Settings


class SparkUnavailableError(RuntimeError):
    """Spark cannot start here (no suitable Java)."""


def check_java() -> None:
    """Spark 4 needs Java 17+; say how to get it when it is missing."""
    java = shutil.which("java", path=os.path.join(os.environ.get("JAVA_HOME", ""), "bin"))
    java = java or shutil.which("java")
    if java is None:
        raise SparkUnavailableError(
            "Java was not found; Spark needs Java 17+: "
            "`sudo apt-get install openjdk-17-jre-headless` (or set JAVA_HOME)"
        )
    version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    major = version.split('"')[1].split(".")[0] if '"' in version else "0"
    if not major.isdigit() or int(major) < 17:
        raise SparkUnavailableError(f"Spark needs Java 17+, found: {version.splitlines()[0]}")


def spark_session(settings: Settings, app_name: str = "visionloop") -> SparkSession:
    """A session on ``settings.spark_master``; local sessions bind to 127.0.0.1 only."""
    if settings.spark_master.startswith("sc://"):
        return _connect(settings.spark_master)
    check_java()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(settings.spark_master)
        .appName(app_name)
        .config("spark.driver.memory", settings.spark_driver_memory)
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.adaptive.advisoryPartitionSizeInBytes", "32m")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.python.worker.reuse", "true")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in settings.spark_conf.items():
        builder = builder.config(key, value)
    local = settings.spark_master.startswith("local")
    host = settings.spark_driver_host or ("127.0.0.1" if local else None)
    if host:
        os.environ.setdefault("SPARK_LOCAL_IP", host)
        builder = builder.config("spark.driver.host", host).config("spark.driver.bindAddress", host)
    if local:
        builder = builder.config("spark.ui.enabled", "false")
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def _connect(url: str) -> SparkSession:
    """A session on a running Spark Connect server; its settings are the server's.

    The client retries an unreachable server for minutes, so the address is tried first.
    """
    address = urllib.parse.urlsplit(url.replace("sc://", "http://", 1))
    try:
        socket.create_connection((address.hostname, address.port or 15002), timeout=5).close()
    except OSError as error:
        raise SparkUnavailableError(
            f"no Spark Connect server answers at {url} ({error.strerror or error}); start one "
            "(pyspark's sbin/start-connect-server.sh) or set spark_master to local[*]"
        ) from error
    return SparkSession.builder.remote(url).getOrCreate()


def parallelism(spark: SparkSession) -> int:
    """Tasks the session runs at once: the cluster's cores (``spark.default.parallelism``
    on a Connect server, where the client cannot ask; else this machine's cores)."""
    if not is_remote(spark):
        return spark.sparkContext.defaultParallelism
    configured = spark.conf.get("spark.default.parallelism", None)
    return int(configured) if configured else os.cpu_count() or 1


def is_remote(spark: SparkSession) -> bool:
    return type(spark).__module__.startswith("pyspark.sql.connect")
