"""Leakage and drift on real images, real embeddings, the real index and Evidently.

Leakage: altered copies of sample images (resized, JPEG at quality 20, brightened, cropped
by 2 pixels) planted in another split are found, while distinct images are rarely flagged.
Drift: a batch like the reference is not flagged; inverted images are.
"""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageEnhance, ImageOps, PngImagePlugin

from tests.lakes import commit_rows
from visionloop.embeddings.embedder import EmbedderSource, EmbeddingJob
from visionloop.embeddings.index import updated_indexes
from visionloop.embeddings.leakage import LEAKAGE, check_batches
from visionloop.lake import commit as lake
from visionloop.lake.contract import split_for
from visionloop.lake.snapshot import take
from visionloop.monitoring.drift import drift_frame, drift_report, image_statistics, save
from visionloop.parameters import SAMPLE_DIR
from visionloop.preprocessing import ProcessedImage, image_options, process_image_bytes
from visionloop.settings import Settings, load_settings

pytestmark = pytest.mark.slow
SIZE = 64


def _encode(image: Image.Image, fmt: str = "PNG", note: str = "", **params: object) -> bytes:
    """Encoded bytes; ``note`` goes into metadata (a PNG text chunk, a JPEG comment), so it
    changes the file's hash, and with it its split, but not a pixel."""
    buffer = io.BytesIO()
    if note and fmt == "PNG":
        info = PngImagePlugin.PngInfo()
        info.add_text("note", note)
        params["pnginfo"] = info
    elif note:
        params["comment"] = note.encode()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def _row(settings: Settings, raw: bytes, label: str | None, uri: str) -> dict:
    processed = process_image_bytes(raw, image_options(settings))
    assert isinstance(processed, ProcessedImage)
    now = datetime.now(UTC)
    return {
        "image_id": processed.image_id,
        "image": processed.image,
        "image_format": processed.image_format,
        "label": label,
        "label_source": "seed" if label else None,
        "labelled_at": now if label else None,
        "split": split_for(processed.image_id, settings.split),
        "width": processed.width,
        "height": processed.height,
        "mode": processed.mode,
        "source_format": processed.source_format,
        "source_uri": uri,
        "ingested_at": now,
    }


def _sample(count: int, seed: int = 0) -> list[tuple[Path, str]]:
    """``count`` labelled sample images, drawn at random (all classes mixed)."""
    files = sorted((SAMPLE_DIR / "labelled").glob("*/*.png"))
    chosen = np.random.default_rng(seed).choice(len(files), count, replace=False)
    return [(files[i], files[i].parent.name) for i in chosen]


COPIES = {
    "resized": lambda image, note: _encode(image.resize((56, 56)), note=note),
    "jpeg": lambda image, note: _encode(image, "JPEG", note=note, quality=20),
    "brightened": lambda image, note: _encode(
        ImageEnhance.Brightness(image).enhance(1.3), note=note
    ),
    "cropped": lambda image, note: _encode(
        image.crop((2, 2, image.width - 2, image.height - 2)), note=note
    ),
    "shifted": lambda image, note: _encode(
        image.transform(image.size, Image.Transform.AFFINE, (1, 0, 2, 0, 1, -2)), note=note
    ),
    "rotated": lambda image, note: _encode(image.rotate(5, Image.Resampling.BILINEAR), note=note),
}


def _copy_in_another_split(settings: Settings, image: Image.Image, kind: str, split: str):
    """An altered copy whose split differs from the original's."""
    for attempt in range(100):
        row = _row(settings, COPIES[kind](image, f"copy {attempt}"), None, f"planted/{kind}")
        if row["split"] != split:
            return row
    raise AssertionError("no copy landed in another split")


def _embed(settings: Settings, batch_id: str) -> str:
    """Embeddings of every image, with the real embedding job's model, committed as a batch."""
    source = EmbedderSource("tf_efficientnet_lite0", "packaged", SIZE, image_options(settings))
    job = EmbeddingJob(source, 1280)
    embed = job.load()
    rows = [
        row
        for part in take(settings.lake_dir).row_groups(["image_id", "image"])
        for row in part.table.to_pylist()
    ]
    staging = lake.stage(settings, batch_id)
    staging.table("embeddings").mkdir()
    table = embed([row["image_id"] for row in rows], [row["image"] for row in rows])
    pq.write_table(table, staging.table("embeddings") / "part-0.parquet")
    lake.commit(settings, batch_id, {"batch_id": batch_id, "table": "embeddings"})
    return job.version


def test_planted_copies_are_found_and_distinct_images_rarely_flagged(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path / "home", image_size=SIZE)
    originals = _sample(400)
    rows = [_row(settings, path.read_bytes(), label, str(path)) for path, label in originals]
    commit_rows(settings, rows, batch_id="originals")
    version = _embed(settings, "emb-originals")
    indexes, _ = updated_indexes(
        settings.index_dir, settings.lake_dir, version, settings.similarity
    )
    distinct = check_batches(take(settings.lake_dir), indexes, ["originals"], settings.leakage)
    flagged = {i for p in distinct.pairs for i in (p.image_a, p.image_b)}
    assert len(flagged) / len(rows) <= 0.01, distinct.pairs[:5]

    planted, expected = [], set()
    for (path, _), original in zip(originals[:40], rows[:40], strict=True):
        image = Image.open(path).convert("RGB")
        for kind in COPIES:
            copy = _copy_in_another_split(settings, image, kind, original["split"])
            planted.append(copy)
            expected.add(frozenset((copy["image_id"], original["image_id"])))
    commit_rows(settings, planted, batch_id="planted")
    version = _embed(settings, "emb-planted")
    indexes, _ = updated_indexes(
        settings.index_dir, settings.lake_dir, version, settings.similarity
    )
    found = check_batches(take(settings.lake_dir), indexes, ["planted"], settings.leakage)
    leaks = {frozenset((p.image_a, p.image_b)) for p in found.pairs if p.kind == LEAKAGE}
    assert len(leaks & expected) / len(expected) >= 0.9
    assert found.summary.leakage_rate >= 0.9 and found.images
    # What the nightly excludes from training: the planted copies, never their originals.
    copies, planted_ids = set(found.leaked_copies()), {copy["image_id"] for copy in planted}
    assert copies <= planted_ids and len(copies) >= 0.9 * len(planted_ids)


def _frame(settings: Settings, images: list[bytes], embed) -> pd.DataFrame:
    stored = [process_image_bytes(data, image_options(settings)).image for data in images]
    table = embed([str(i) for i in range(len(stored))], stored)
    vectors = np.stack(table["vector"].to_numpy(zero_copy_only=False))
    sizes = pd.DataFrame({"width": [28] * len(stored), "height": [28] * len(stored)})
    return drift_frame(vectors, image_statistics(stored), sizes, ["unscored"] * len(stored))


def test_drift_flags_inverted_images_not_a_batch_like_the_reference(tmp_path: Path) -> None:
    settings = load_settings(data_home=tmp_path / "home", image_size=SIZE)
    source = EmbedderSource("tf_efficientnet_lite0", "packaged", SIZE, image_options(settings))
    embed = EmbeddingJob(source, 1280).load()
    files = [path.read_bytes() for path, _ in _sample(700)]
    reference = _frame(settings, files[:400], embed)
    same = drift_report(reference, _frame(settings, files[400:550], embed), settings.drift)[0]
    assert not same.drifted, same.reason
    inverted = [
        _encode(ImageOps.invert(Image.open(io.BytesIO(data)).convert("RGB")))
        for data in files[550:]
    ]
    result, snapshot = drift_report(reference, _frame(settings, inverted, embed), settings.drift)
    assert result.drifted and result.votes >= settings.drift.votes, result.reason
    assert result.columns["brightness"]["drifted"]
    files_saved = save(snapshot, result, tmp_path / "reports", "inverted")
    assert files_saved["html"].stat().st_size > 10_000
    assert json.loads(files_saved["json"].read_text())["drifted"] is True
