"""The one Spark session of a flow run: started once, passed to every Spark stage."""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NONE
from pyspark.sql import SparkSession

from visionloop.settings import Settings
from visionloop.spark import spark_session


@task(cache_policy=NONE)
def start_spark(settings: Settings) -> SparkSession:
    """Start (or join) the session: the JVM and Python workers start once per run."""
    return spark_session(settings, "visionloop")
