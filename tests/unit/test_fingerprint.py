"""The training fingerprint's code hash: the code that makes the model, and only that."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from visionloop.registry.lineage import TRAINING_CODE, code_hash, code_sources
from visionloop.settings import REPO_ROOT

IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc")


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The package laid out by module name, as installed: spark_jobs under visionloop/."""
    shutil.copytree(REPO_ROOT / "visionloop", tmp_path / "visionloop", ignore=IGNORE)
    shutil.copytree(REPO_ROOT / "spark_jobs", tmp_path / "visionloop" / "spark_jobs", ignore=IGNORE)
    return tmp_path


def _edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{old!r} not in {path}"
    path.write_text(text.replace(old, new, 1))


def test_the_hash_covers_the_training_code_and_the_ingest_job() -> None:
    keys = set(code_sources())
    assert {"visionloop.preprocessing", "visionloop.spark_jobs.preprocess_images"} <= keys
    assert {"visionloop.training/loop.py", "visionloop.training/models.py"} <= keys
    assert "visionloop.lake.snapshot" in keys and "visionloop.lake.contract" in keys
    assert not any(key.startswith(("visionloop.cli", "visionloop.labelling")) for key in keys)


def test_cli_help_does_not_change_the_hash_but_training_code_does(copy: Path) -> None:
    before = code_hash(code_sources(root=copy))
    assert before == code_hash()  # the copy hashes like the importable package

    _edit(copy / "visionloop" / "cli.py", 'help="', 'help="Now with clearer help: ')
    _edit(copy / "visionloop" / "labelling" / "client.py", '"""', '"""Reworded. ')
    assert code_hash(code_sources(root=copy)) == before

    loop = copy / "visionloop" / "training" / "loop.py"
    _edit(loop, "floor: float = 0.01", "floor: float = 0.02")
    after_training = code_hash(code_sources(root=copy))
    assert after_training != before

    _edit(copy / "visionloop" / "spark_jobs" / "preprocess_images.py", '"""', '"""Changed. ')
    assert code_hash(code_sources(root=copy)) not in (before, after_training)


def test_a_new_training_module_changes_the_hash(copy: Path) -> None:
    before = code_hash(code_sources(root=copy))
    (copy / "visionloop" / "training" / "augment.py").write_text("SCALE = 2\n")
    assert code_hash(code_sources(root=copy)) != before


def test_a_missing_training_module_is_a_clear_error(copy: Path) -> None:
    (copy / "visionloop" / "preprocessing.py").unlink()
    with pytest.raises(FileNotFoundError, match=r"visionloop\.preprocessing is not under"):
        code_sources(TRAINING_CODE, root=copy)
