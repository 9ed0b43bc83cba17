"""The Feast feature store on the lake: built from ``feature_repo/``, applied, materialised.

:func:`feature_store` reads ``feature_repo/feature_store.yaml`` with the data home filled in
from settings (no environment variable needed), so the registry and online store live
under ``<data_home>/feast``. :func:`apply` registers the definitions of ``feature_repo``
for the settings' lake; :func:`materialise` pushes the rows of partitions not yet written
to the online store. :func:`online_features` and :func:`training_frame` read them back.

Refreshing the online store costs the night's partitions, not the lake: Feast's
``materialize_incremental`` on the file offline store reads each view's whole table folder.
Committed partitions are immutable, so ``<feast>/pushed.json`` records, per view, the batch
ids already written (saved atomically after each write; a crash in between re-pushes the
same rows, which the per-entity upsert makes harmless), and only the other partitions that
:func:`visionloop.lake.snapshot.list_table` lists are read. A compacted partition counts as
written when every partition it replaced was. The SQLite online store overwrites an entity
whatever its timestamp, so a row older than the one online (by second) is not written: per
entity the online store ends with the latest row by event timestamp, as with
``materialize_incremental``. Historical retrieval (:func:`training_frame`) reads the lake.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import pyarrow as pa
import yaml

from visionloop.lake.contract import PARTITION_COLUMN
from visionloop.lake.snapshot import in_effect, list_table, row_groups, superseded
from visionloop.settings import Settings
from visionloop.shipped import folder

if TYPE_CHECKING:
    from feast import FeatureStore, FeatureView

REPO_DIR = folder("visionloop.feature_repo")
PUSHED = "pushed.json"
FEAST_HOME_VARIABLE = "${VISIONLOOP_FEAST_HOME}"
VIEWS = ("image_embeddings", "image_predictions", "image_facts", "image_labels")
#: What the labelling handoff reads for a batch of images.
HANDOFF_FEATURES = (
    "image_embeddings:vector",
    "image_embeddings:embedder_version",
    "image_predictions:label",
    "image_predictions:confidence",
    "image_predictions:margin",
    "image_predictions:model_version",
)


def feature_store(settings: Settings) -> FeatureStore:
    """A FeatureStore on ``feature_repo/`` with its stores under the settings' data home."""
    from feast import FeatureStore
    from feast.repo_config import RepoConfig

    repo = REPO_DIR
    text = (repo / "feature_store.yaml").read_text()
    config = yaml.safe_load(text.replace(FEAST_HOME_VARIABLE, str(settings.feast_dir)))
    config["materialization"] = {
        "online_write_batch_size": settings.feature_store.online_write_batch_size
    }
    settings.feast_dir.mkdir(parents=True, exist_ok=True)
    repo_config = RepoConfig(**config)
    repo_config.repo_path = repo
    return FeatureStore(repo_path=str(repo), config=repo_config)


def definitions(settings: Settings) -> list[object]:
    from visionloop.feature_repo.definitions import build

    return build(settings.lake_dir)


def feature_views(settings: Settings) -> list[FeatureView]:
    """The feature views of ``feature_repo`` over the settings' lake."""
    from feast import FeatureView

    return [item for item in definitions(settings) if isinstance(item, FeatureView)]


def source_table(view: FeatureView) -> str:
    """The lake table a view reads (its source is the table's folder)."""
    return Path(view.batch_source.path).name


def present_views(settings: Settings) -> list[str]:
    """Views whose lake table has committed rows."""
    return [
        view.name
        for view in feature_views(settings)
        if list_table(settings.lake_dir, source_table(view))
    ]


def apply(store: FeatureStore, settings: Settings) -> list[str]:
    """Register the entity and feature views (idempotent); their names."""
    objects = definitions(settings)
    store.apply(objects)
    return [getattr(item, "name", "") for item in objects]


def pushed_path(settings: Settings) -> Path:
    """The record of the partitions each view has written to the online store."""
    return settings.feast_dir / PUSHED


def load_pushed(settings: Settings) -> dict[str, set[str]]:
    """``view -> batch ids`` already written online (empty when there is no record)."""
    path = pushed_path(settings)
    if not path.exists():
        return {}
    return {view: set(ids) for view, ids in json.loads(path.read_text()).items()}


def _save_pushed(settings: Settings, pushed: dict[str, set[str]]) -> None:
    path = pushed_path(settings)
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({view: sorted(ids) for view, ids in pushed.items()}))
    os.replace(temporary, path)


def _visible_partitions(lake_dir: Path, table: str) -> dict[str, list[Path]]:
    """Committed partitions of ``table`` and their files, in batch id (time) order."""
    files: dict[str, list[Path]] = {}
    for path in list_table(lake_dir, table):
        files.setdefault(path.parent.name.removeprefix(f"{PARTITION_COLUMN}="), []).append(path)
    return dict(sorted(files.items()))


def _with_compacted(table_dir: Path, pushed: set[str]) -> set[str]:
    """``pushed`` plus the committed compacted partitions whose every source was pushed."""
    done = set(pushed)
    entries = [e for e in superseded(table_dir) if e["new"] is not None and in_effect(table_dir, e)]
    grown = True
    while grown:  # a compacted partition may itself have been compacted again
        fresh = {e["new"] for e in entries if e["new"] not in done and set(e["old"]) <= done}
        done |= fresh
        grown = bool(fresh)
    return done


def _chunks(files: list[Path], columns: list[str], rows: int) -> Iterator[pd.DataFrame]:
    """The asked-for columns of ``files``, about ``rows`` rows at a time."""
    tables, count = [], 0
    for group in row_groups(files, columns):
        tables.append(group.table)
        count += group.table.num_rows
        if count >= rows:
            yield pa.concat_tables(tables).to_pandas()
            tables, count = [], 0
    if tables:
        yield pa.concat_tables(tables).to_pandas()


def _newest_online(store: FeatureStore, view: FeatureView, frame: pd.DataFrame) -> pd.DataFrame:
    """Each entity's latest row of ``frame``, unless the online store holds a newer one."""
    timestamp = view.batch_source.timestamp_field
    latest = frame.sort_values(timestamp, kind="stable").drop_duplicates("image_id", keep="last")
    feature = view.features[0].name
    online = store.get_online_features(
        features=[f"{view.name}:{feature}"],
        entity_rows=[{"image_id": image_id} for image_id in latest["image_id"]],
    ).to_dict(include_event_timestamps=True)
    seconds = pd.Series(online[f"{feature}__ts"], index=latest.index)
    written = pd.to_datetime(seconds, unit="s", utc=True)  # whole seconds; 0 when absent
    return latest[pd.to_datetime(latest[timestamp], utc=True) >= written]


def push_view(
    store: FeatureStore, settings: Settings, view: FeatureView, pushed: dict[str, set[str]]
) -> int:
    """Write the rows of ``view``'s partitions not yet pushed; recorded after each partition.

    Returns the rows written. ``pushed`` is updated (and saved) in place.
    """
    table = source_table(view)
    partitions = _visible_partitions(settings.lake_dir, table)
    done = _with_compacted(settings.lake_dir / table, pushed.get(view.name, set()))
    columns = ["image_id", view.batch_source.timestamp_field, *(f.name for f in view.features)]
    written = 0
    for batch_id, files in partitions.items():
        if batch_id in done:
            continue
        for chunk in _chunks(files, columns, settings.feature_store.online_write_batch_size):
            rows = _newest_online(store, view, chunk)
            if len(rows):
                store.write_to_online_store(view.name, rows.reset_index(drop=True))
                written += len(rows)
        done.add(batch_id)
        pushed[view.name] = done & partitions.keys()  # hidden partitions need no record
        _save_pushed(settings, pushed)
    return written


def materialise(store: FeatureStore, settings: Settings) -> list[str]:
    """Push the rows of partitions not yet written online, view by view, oldest first; the
    views whose table has rows."""
    pushed = load_pushed(settings)
    views = []
    for view in feature_views(settings):
        if list_table(settings.lake_dir, source_table(view)):
            push_view(store, settings, view, pushed)
            views.append(view.name)
    return views


def online_features(
    store: FeatureStore, image_ids: Sequence[str], features: Sequence[str] = HANDOFF_FEATURES
) -> pd.DataFrame:
    """The online features of ``image_ids``, one row each, in their order (None when absent)."""
    rows = [{"image_id": image_id} for image_id in image_ids]
    result = store.get_online_features(
        features=list(features), entity_rows=rows, full_feature_names=True
    ).to_dict()
    frame = pd.DataFrame(result)
    if frame["image_id"].tolist() != list(image_ids):  # never trust an unchecked join
        raise RuntimeError("Feast returned online features out of the requested order")
    return frame


def training_frame(
    store: FeatureStore, entities: pd.DataFrame, features: Sequence[str]
) -> pd.DataFrame:
    """Point-in-time features for ``entities`` (``image_id``, ``event_timestamp``).

    One row per input row, in order: the file offline store drops rows without data in the
    window and merges duplicate keys, so unique keys are queried and joined back.
    """
    frame = entities.reset_index(drop=True).copy()
    frame["event_timestamp"] = pd.to_datetime(frame["event_timestamp"], utc=True)
    keys = frame[["image_id", "event_timestamp"]].drop_duplicates()
    found = store.get_historical_features(entity_df=keys, features=list(features)).to_df()
    found["event_timestamp"] = pd.to_datetime(found["event_timestamp"], utc=True)
    return frame.merge(
        found, on=["image_id", "event_timestamp"], how="left", validate="many_to_one"
    )
