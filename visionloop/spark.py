"""The one place a Spark session is built from settings."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

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
    if settings.spark_master.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
        builder = (
            builder.config("spark.driver.host", "127.0.0.1")
            .config("spark.driver.bindAddress", "127.0.0.1")
            .config("spark.ui.enabled", "false")
        )
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session
