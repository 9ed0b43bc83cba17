"""Hold a lake's writer lock until told to let go: another writer, in a process of its own.

python hold_lake_writer.py <settings.yaml> <held flag file> <release flag file>
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from visionloop.lake import commit as lake
from visionloop.settings import load_settings

if __name__ == "__main__":
    config, held, release = (Path(argument) for argument in sys.argv[1:4])
    with lake.writer(load_settings(config), "a test's other writer"):
        held.touch()
        while not release.exists():
            time.sleep(0.05)
