"""Where the Spark jobs run is a setting; a server that is not there is named with the fix."""

from __future__ import annotations

import socket

import pytest

from visionloop.settings import load_settings
from visionloop.spark import SparkUnavailableError, spark_session


def test_an_unreachable_connect_server_is_named_with_the_fix_at_once() -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = load_settings(spark_master=f"sc://127.0.0.1:{port}")
    with pytest.raises(SparkUnavailableError, match=f"sc://127.0.0.1:{port}.*local\\[\\*\\]"):
        spark_session(settings)
