"""Exclusions: an excluded image leaves every labelled split and the annotation pool."""

from __future__ import annotations

from pathlib import Path

from tests.lakes import tiny_lake
from visionloop.embeddings.leakage import LeakageCheck, Pair, summarise
from visionloop.labelling.pool import candidates
from visionloop.lake.exclusions import exclude
from visionloop.lake.snapshot import take, with_label_events
from visionloop.registry.lineage import Fingerprint, lineage_tags


def test_excluded_images_drop_out_of_training_and_the_pool(tmp_path: Path) -> None:
    settings = tiny_lake(tmp_path, labelled=60, unlabelled=20, batches=1)
    before = take(settings.lake_dir)
    train = next(before.labelled("train", batch_size=1000, columns=()))["image_id"]
    pool = candidates(before, open_tasks=())
    chosen = [train[0], pool[0]]

    assert exclude(settings, chosen, by="test", reason="leaked copy") is not None
    after = take(settings.lake_dir)
    assert after.excluded == set(chosen)
    assert after.train_rows == before.train_rows - 1 and after.train_hash != before.train_hash
    assert pool[0] not in candidates(after, open_tasks=())
    tags = lineage_tags(after, Fingerprint.of(after, settings, code="c"), None, "commit")
    assert tags["lineage.excluded_images"] == "2"
    assert exclude(settings, [], by="test", reason="nothing") is None


def test_a_snapshot_gains_a_night_s_own_exclusions_and_nothing_else(tmp_path: Path) -> None:
    # the nightly excludes leaked copies after its snapshot was taken: its training must
    # still see them, or the next night trains again on an unchanged lake
    settings = tiny_lake(tmp_path, labelled=60, unlabelled=20, batches=1)
    before = take(settings.lake_dir)
    train = next(before.labelled("train", batch_size=1000, columns=()))["image_id"]
    tonight = exclude(settings, train[:2], by="leakage check", reason="leaked copies")
    exclude(settings, train[2:3], by="operator", reason="committed meanwhile")
    assert tonight is not None and with_label_events(before, []) is before

    grown = with_label_events(before, [tonight])
    assert grown.excluded == set(train[:2]) and grown.files == before.files
    assert grown.train_rows == before.train_rows - 2
    alone = take(settings.lake_dir)  # what a fresh snapshot sees: both exclusions
    assert alone.train_rows == before.train_rows - 3 and alone.excluded == set(train[:3])


def test_a_checked_batch_s_copy_of_an_image_in_another_split_is_the_one_excluded() -> None:
    pairs = [
        Pair("old-train", "new-test", "train", "test", 0.999),  # leakage: the new copy goes
        Pair("new-a", "new-b", "train", "val", 0.999),  # both new: the greater id goes
        Pair("new-c", "old-c", "train", "train", 0.999),  # a near-duplicate, not leakage
    ]
    check = LeakageCheck(pairs, summarise([], []), {}, ("new-test", "new-a", "new-b", "new-c"))
    assert check.leaked_copies() == ["new-b", "new-test"]
