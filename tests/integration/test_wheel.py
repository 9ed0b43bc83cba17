"""The wheel runs the flows outside the checkout, with its data files (expectation suites,
Feast repository, deployments) inside it (issue 14 §4)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.wheel import CLI, install_wheel
from visionloop.settings import REPO_ROOT, load_settings

SAMPLE = REPO_ROOT / "data" / "sample" / "labelled"
SHIPPED = {
    "visionloop/expectations/suites/images_batch.json",
    "visionloop/expectations/suites/images_table.json",
    "visionloop/feature_repo/feature_store.yaml",
    "visionloop/feature_repo/definitions.py",
    "visionloop/deployments/prefect.yaml",
    "visionloop/flows/nightly.py",
    "visionloop/spark_jobs/preprocess_images.py",
}
pytestmark = pytest.mark.slow

# Run as files, never ``python -c`` (pyspark exits a program whose __main__ has no file).
EMBED = """import json, sys
import visionloop
from visionloop.flows.embed import embed
from visionloop.parameters import EmbedParameters

result = embed(EmbedParameters(config=sys.argv[1]))
print(json.dumps({"package": visionloop.__file__, "written": result.embed.embeddings.written,
                  "views": result.feature_views}))
"""


def test_the_wheel_runs_ingest_and_embedding_from_another_folder(
    tmp_path: Path, wheel: Path
) -> None:
    assert set(zipfile.ZipFile(wheel).namelist()) >= SHIPPED
    python = install_wheel(wheel, tmp_path / "venv")

    work = tmp_path / "elsewhere"
    landing = work / "landing"
    for class_dir in sorted(SAMPLE.iterdir())[:3]:
        shutil.copytree(class_dir, landing / class_dir.name, ignore=_first(20))
    settings = load_settings(data_home=work / "home", image_size=32, embeddings={"input_size": 32})
    config = settings.save(work / "config")
    (work / "cli.py").write_text(CLI)
    (work / "embed.py").write_text(EMBED)
    environment = {
        name: value for name, value in os.environ.items() if name not in {"PYTHONPATH"}
    } | {"VISIONLOOP_CONFIG": str(config)}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(python), *args], cwd=work, env=environment, capture_output=True, text=True
        )

    ingested = run("cli.py", "ingest", str(landing), "--accept-failing-batch")
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    assert "60" in ingested.stdout  # files in = written
    embedded = run("embed.py", str(config))
    assert embedded.returncode == 0, embedded.stderr[-3000:]
    report = json.loads(embedded.stdout.strip().splitlines()[-1])
    assert report["package"].startswith(str(tmp_path / "venv"))  # the wheel's copy, not ours
    assert report["written"] == 60 and "image_embeddings" in report["views"]


def _first(count: int):
    """A copytree filter keeping the first ``count`` files of each folder."""

    def ignore(folder: str, names: list[str]) -> list[str]:
        return sorted(names)[count:]

    return ignore
