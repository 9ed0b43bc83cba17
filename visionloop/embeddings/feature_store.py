"""The Feast feature store on the lake: built from ``feature_repo/``, applied, materialised.

:func:`feature_store` reads ``feature_repo/feature_store.yaml`` with the data home filled in
from settings (no environment variable needed), so the registry and online store live
under ``<data_home>/feast``. :func:`apply` registers the definitions of ``feature_repo``
for the settings' lake; :func:`materialise` copies rows newer than the last run into the
online store. :func:`online_features` and :func:`training_frame` read them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pandas as pd
import yaml

from visionloop.settings import REPO_ROOT, Settings

if TYPE_CHECKING:
    from feast import FeatureStore

REPO_DIR = REPO_ROOT / "feature_repo"
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


def present_views(settings: Settings) -> list[str]:
    """Views whose lake table has rows (Feast cannot read an empty source folder)."""
    tables = {
        "image_embeddings": "embeddings",
        "image_predictions": "predictions",
        "image_facts": "images",
        "image_labels": "label_events",
    }
    return [
        view
        for view, table in tables.items()
        if any((settings.lake_dir / table).glob("*/*.parquet"))
    ]


def apply(store: FeatureStore, settings: Settings) -> list[str]:
    """Register the entity and feature views (idempotent); their names."""
    objects = definitions(settings)
    store.apply(objects)
    return [getattr(item, "name", "") for item in objects]


def materialise(store: FeatureStore, settings: Settings, end: datetime | None = None) -> list[str]:
    """Copy rows recorded since the last run into the online store; the views materialised."""
    views = present_views(settings)
    if views:
        store.materialize_incremental(end_date=end or datetime.now(UTC), feature_views=views)
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
