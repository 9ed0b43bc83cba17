"""The one typed settings object: defaults < YAML file < ``VISIONLOOP_*`` environment < arguments.

Nested fields are set from the environment with a double underscore, e.g.
``VISIONLOOP_SPLIT__TRAIN=0.7``. The YAML file is named by ``VISIONLOOP_CONFIG``
(or passed to :func:`load_settings`). Nothing is read until :func:`load_settings` is called.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import (
    BaseModel,
    Field,
    GetCoreSchemaHandler,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic_core import core_schema
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

REPO_ROOT = Path(__file__).resolve().parent.parent
CONFIG_ENV_VAR = "VISIONLOOP_CONFIG"
ENV_PREFIX = "VISIONLOOP_"


Layout = Literal["auto", "imagefolder", "manifest", "unlabelled"]


class Secret:
    """A secret setting, given as its value or as ``{env: NAME}`` (read from ``$NAME``).

    It is shown and saved only as ``{env: NAME}``: the variable it was read from, else the
    ``VISIONLOOP_…`` variable that sets it. A saved settings file therefore holds no secret,
    and re-loads wherever the environment supplies it (:meth:`Settings.secret_environment`).
    """

    def __init__(self, value: str, env: str | None = None) -> None:
        self._value, self.env = value, env

    def get_secret_value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return f"Secret(env={self.env!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and (self._value, self.env) == (other._value, other.env)

    def __hash__(self) -> int:
        return hash((self._value, self.env))

    @classmethod
    def parse(cls, value: Any) -> Secret:
        if isinstance(value, Secret):
            return value
        if isinstance(value, str):
            return cls(value)
        if isinstance(value, dict) and set(value) == {"env"} and isinstance(value["env"], str):
            name = value["env"]
            if name not in os.environ:
                raise ValueError(
                    f"the secret is read from the environment variable {name}, which is unset; "
                    f"set {name} (saved settings name their secrets, never hold them)"
                )
            return cls(os.environ[name], name)
        raise ValueError("a secret is a string or {env: VARIABLE_NAME}")

    def reference(self) -> dict[str, str | None]:
        return {"env": self.env}

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: Any, handler: GetCoreSchemaHandler
    ) -> core_schema.CoreSchema:
        return core_schema.no_info_plain_validator_function(
            cls.parse,
            serialization=core_schema.plain_serializer_function_ser_schema(cls.reference),
        )


def split_password(uri: str) -> tuple[str, str | None]:
    """``uri`` without the password of its ``user:password@``, and that password."""
    parts = urlsplit(uri)
    if parts.password is None:
        return uri, None
    userinfo, host = parts.netloc.rsplit("@", 1)
    user = userinfo.split(":", 1)[0]
    return urlunsplit(parts._replace(netloc=f"{user}@{host}")), parts.password


def with_password(uri: str, password: str) -> str:
    parts = urlsplit(uri)
    userinfo, host = parts.netloc.rsplit("@", 1) if "@" in parts.netloc else ("", parts.netloc)
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:{password}@{host}"))


class LandingSource(BaseModel):
    """One place images arrive, and how its files are laid out.

    ``auto`` picks a manifest file (``.csv``/``.parquet``), class folders or a flat folder;
    a folder of dated sub-folders (``2026-12-02/…``) is read as one such source per date.
    """

    path: str
    layout: Layout = "auto"


class LandingSettings(BaseModel):
    """Where a team's new images arrive: the scheduled nightly drains these sources.

    Every ingest of a source reads only files the lake's arrival ledger has not placed
    (same path, size and mtime); a file replaced in place is read again.
    """

    sources: list[LandingSource] = Field(
        default_factory=list,
        description="landing folders or manifests; a plain path string means layout auto",
    )
    after_ingest: Literal["keep", "archive"] = Field(
        "keep", description="archive: move placed files under archive_dir (never deleted)"
    )
    archive_dir: Path | None = Field(None, description="default: <data_home>/landing-archive")

    @field_validator("sources", mode="before")
    @classmethod
    def _paths_as_sources(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            return [{"path": item} if isinstance(item, str) else item for item in value]
        return value


class LakeMaintenance(BaseModel):
    """Compaction of the lake's side tables and retention of superseded model outputs."""

    retention_days: float = Field(
        30, ge=0, description="predictions/embeddings of versions no longer used are kept this long"
    )
    grace_hours: float = Field(
        24, ge=0, description="replaced files stay on disk this long for readers that listed them"
    )
    min_files: int = Field(8, ge=2, description="small partitions of a table merged at once")
    target_rows: int = Field(200_000, ge=1, description="partitions this large are left alone")


class SplitFractions(BaseModel):
    """Fractions of images assigned to each split; a pure function of ``image_id``."""

    train: float = Field(0.8, ge=0, le=1)
    val: float = Field(0.1, ge=0, le=1)
    test: float = Field(0.1, ge=0, le=1)

    @model_validator(mode="after")
    def _sum_to_one(self) -> SplitFractions:
        total = self.train + self.val + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(
                f"split fractions must sum to 1 (train+val+test = {total:.4f}); "
                "adjust VISIONLOOP_SPLIT__TRAIN/VAL/TEST"
            )
        return self


class QualityThresholds(BaseModel):
    """Numbers the Great Expectations suites are checked against."""

    min_width: int = Field(8, ge=1)
    max_width: int = Field(20_000, ge=1)
    min_height: int = Field(8, ge=1)
    max_height: int = Field(20_000, ge=1)
    max_quarantine_rate: float = Field(0.2, ge=0, le=1)
    min_class_count: int = Field(10, ge=0)
    split_tolerance: float = Field(0.05, ge=0, le=1)


class DistributedSettings(BaseModel):
    """Multi-node training: every node's ``torchrun`` agent joins one c10d rendezvous.

    With ``nnodes`` 1 a run is ``torchrun --standalone``. With more, the launching node's
    agent hosts the rendezvous at ``rdzv_endpoint`` and every other node runs
    ``visionloop train-join <run dir>`` (the run directory on storage all nodes share).
    """

    nnodes: int = Field(1, ge=1, description="nodes of a run, each with nproc_per_node ranks")
    rdzv_endpoint: str | None = Field(
        None, description="host:port of the launching node's rendezvous (needed when nnodes > 1)"
    )
    rdzv_id: str | None = Field(None, description="default: the run directory's name")
    local_addr: str | None = Field(
        None, description="this node's address as the others reach it (default: its hostname)"
    )
    join_timeout_s: int = Field(600, ge=1, description="how long the agents wait for all nodes")
    max_restarts: int = Field(
        3, ge=0, description="times the agents restart the ranks after a node fails or leaves"
    )

    @model_validator(mode="after")
    def _endpoint_when_multinode(self) -> DistributedSettings:
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ValueError(
                f"training.distributed.nnodes is {self.nnodes} but rdzv_endpoint is unset; set "
                "VISIONLOOP_TRAINING__DISTRIBUTED__RDZV_ENDPOINT=<launching node>:<free port>"
            )
        return self


class TrainingSettings(BaseModel):
    """How models are fine-tuned (see ``visionloop.training``)."""

    model_name: str = "tf_efficientnet_lite0"
    pretrained: Literal["packaged", "none"] | Path = "packaged"
    input_size: int = Field(64, ge=16)
    epochs: int = Field(6, ge=1)
    batch_size: int = Field(64, ge=1)
    lr: float = Field(3e-3, gt=0)
    weight_decay: float = Field(0.02, ge=0)
    warmup_epochs: float = Field(0.5, ge=0)
    grad_accum_steps: int = Field(1, ge=1)
    early_stopping_patience: int = Field(3, ge=1)
    num_workers: int = Field(1, ge=0)
    nproc_per_node: int = Field(1, ge=1)
    distributed: DistributedSettings = DistributedSettings()
    rand_augment: str | None = "rand-m6-n2-mstd0.5"
    mixup: float = Field(0.0, ge=0)
    cutmix: float = Field(0.0, ge=0)
    seed: int = 42
    max_steps_per_epoch: int | None = Field(None, ge=1)
    shuffle_window_row_groups: int = Field(
        8, ge=1, description="row groups whose rows are shuffled together (reader memory)"
    )


class PromotionSettings(BaseModel):
    """The champion/challenger gate (``visionloop.registry.promotion.decide``)."""

    primary_metric: str = "macro_f1"
    min_improvement: float = Field(
        0.0, ge=0, description="the delta's confidence interval must lie above this"
    )
    max_recall_drop: float = Field(0.05, ge=0, le=1)
    first_model_floor: float = Field(0.5, ge=0, le=1)
    confidence: float = Field(0.95, gt=0, lt=1, description="of the paired bootstrap interval")
    bootstrap_resamples: int = Field(1000, ge=100, description="paired resamples of the test split")
    bootstrap_seed: int = 0


class EmbeddingSettings(BaseModel):
    """The frozen embedder behind similarity search, leakage checks and drift."""

    model_name: str = "tf_efficientnet_lite0"
    weights: Literal["packaged", "champion"] | Path = Field(
        "packaged",
        description="packaged ImageNet weights, the champion's backbone, or a weights file",
    )
    input_size: int = Field(64, ge=16)
    batch_size: int = Field(128, ge=1)
    threads_per_task: int = Field(1, ge=1, description="torch threads in each Spark task")


class SimilaritySettings(BaseModel):
    """The approximate nearest-neighbour index over the embeddings."""

    dimensions: int = Field(128, ge=8, description="PCA dimensions the index searches in")
    connectivity: int = Field(32, ge=4, description="HNSW graph degree (M)")
    ef_construction: int = Field(200, ge=8)
    ef_search: int = Field(64, ge=10)
    rerank: int = Field(
        50, ge=1, description="graph candidates re-ranked by exact cosine on the full vectors"
    )


class LeakageSettings(BaseModel):
    """Near-duplicates (same split) and leakage (across splits): embedding and pixel-spectrum
    neighbours, confirmed by pixel similarity at a fixed position or at the best alignment."""

    threshold: float = Field(
        0.995, gt=0, le=1, description="fingerprint similarity of a pair (measured default)"
    )
    neighbours: int = Field(50, ge=1, description="candidates per image, from each index")
    aligned_threshold: float = Field(
        0.995, gt=0, le=1, description="fine similarity at the best shift/rotation (measured)"
    )
    aligned_neighbours: int = Field(
        16, ge=0, description="nearest candidates per image, from each index, checked aligned"
    )
    fine_checks: int = Field(
        8, ge=1, description="per image: its best coarse alignments that get the fine check"
    )
    max_leakage_rate: float = Field(0.01, ge=0, le=1)
    severity: Literal["warning", "critical"] = "warning"
    exclude: bool = Field(
        True, description="exclude a batch's copies of images in another split from training"
    )


class DriftSettings(BaseModel):
    """Evidently drift of the new images against the champion's training images."""

    reference_size: int = Field(2000, ge=200)
    min_current: int = Field(50, ge=10, description="fewer new images cannot be judged")
    classifier_auc: float = Field(0.55, gt=0.5, le=1)
    mmd: float = Field(0.015, gt=0)
    ratio: float = Field(0.2, gt=0, le=1)
    votes: int = Field(2, ge=1, le=3, description="embedding methods that must agree")
    seed: int = 0


class FeatureStoreSettings(BaseModel):
    """The Feast store on ``feature_repo/`` (registry and online store under the data home)."""

    online_write_batch_size: int = Field(
        2000, ge=1, description="rows per online write while materialising (bounds memory)"
    )
    materialise: bool = Field(
        True, description="the nightly refreshes Feast (false: no consumer reads it)"
    )


class LabellingSettings(BaseModel):
    """Active learning and the Label Studio round trip."""

    url: str | None = Field(
        None,
        description="an existing Label Studio; unset: the local one (visionloop label-studio)",
    )
    token: Secret | None = Field(
        None, description="its API token; unset: <data_home>/secrets/label-studio-token"
    )
    admin_password: Secret | None = Field(
        None,
        description="the local admin's password; unset: <data_home>/secrets/label-studio-password",
    )
    port: int = Field(8080, ge=1, le=65535, description="of the local Label Studio")
    admin_email: str = "admin@visionloop.local"
    budget: int = Field(200, ge=0, description="images sent to annotators per night")
    strategy: Literal["margin", "entropy", "least_confidence", "random", "margin_clusters"] = Field(
        "margin_clusters",
        description="the best measured in benchmarks/active_learning.py (see its README)",
    )
    min_agreement: float = Field(
        0.5, gt=0, le=1, description="share of a task's annotations its label needs (strictly more)"
    )
    confident: float = Field(
        0.9, gt=0, le=1, description="an annotation against a prediction this sure is reviewed"
    )
    test_share: float = Field(
        0.1,
        ge=0,
        le=1,
        description="of the budget: unlabelled test-split images, a uniform sample, so the "
        "frozen test split grows and promotion's interval narrows",
    )
    overlay: bool = Field(True, description="send a Grad-CAM overlay of the predicted class")
    max_open_tasks: int = Field(
        1000,
        ge=0,
        description="open tasks at most (queued in the outbox or not yet annotated in Label "
        "Studio); the hand-off holds the rest of its budget back",
    )
    seed: int = 0


class AlertSettings(BaseModel):
    """Where alerts go: ``visionloop deploy`` creates the Prefect automations that post them."""

    webhook_url: Secret | None = Field(
        None,
        description='a Slack-compatible incoming webhook (POST {"text": ...}); unset: no alerts',
    )


class WebSettings(BaseModel):
    """The addresses of the pages people open; ``make serve`` binds each URL's host and port."""

    reports_url: str = Field(
        "http://127.0.0.1:8090",
        pattern=r"^https?://[^/]+",
        description="where reports_dir (Data Docs, drift reports, leakage pairs) is served",
    )
    mlflow_ui_url: str = Field(
        "http://127.0.0.1:5000",
        pattern=r"^https?://[^/]+",
        description="the MLflow UI make serve starts on a local store (a server is its own UI)",
    )


class Settings(BaseSettings):
    """Everything visionloop can be configured with, in one place."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    data_home: Path = Path(".visionloop")
    spark_master: str = "local[*]"
    spark_driver_memory: str = "2g"
    spark_driver_host: str | None = Field(
        None,
        description="the address executors reach the driver at (local masters: 127.0.0.1)",
    )
    spark_conf: dict[str, str] = Field(
        default_factory=dict,
        description="more Spark properties for the session, e.g. spark.executor.memory",
    )
    spark_partitions: int | None = Field(
        None, ge=1, description="partitions of a landing batch; default 4 x default parallelism"
    )
    image_size: int = Field(64, ge=8, le=4096)
    image_format: Literal["PNG", "JPEG"] = "PNG"
    jpeg_quality: int = Field(95, ge=1, le=100)
    max_image_pixels: int = Field(50_000_000, ge=1)
    max_image_file_bytes: int = Field(
        100 * 2**20, ge=1, description="larger files are quarantined without being read"
    )
    parquet_row_group_rows: int = Field(1024, ge=1)
    lake_lock_timeout_s: float = Field(
        3600, ge=0, description="how long a batch waits while another batch writes the lake"
    )
    lake_lock: Literal["file", "prefect"] = Field(
        "file",
        description="the lake writer lock: a flock (one machine) or a Prefect global "
        "concurrency limit on the Prefect server (writers on several machines)",
    )
    tfrecord_shard_rows: int = Field(5000, ge=1)
    split: SplitFractions = SplitFractions()
    quality: QualityThresholds = QualityThresholds()
    classes: list[str] | None = Field(
        None, description="allowed label set; None accepts the labels the lake already has"
    )
    landing: LandingSettings = LandingSettings()
    lake_maintenance: LakeMaintenance = LakeMaintenance()
    timezone: str = "UTC"
    nightly_cron: str = "0 2 * * *"
    mlflow_tracking_uri: str | None = Field(
        None, description="default: sqlite:///<data_home>/mlflow.db; a password in it is moved out"
    )
    mlflow_tracking_password: Secret | None = Field(
        None, description="of the tracking URI's user (http basic auth)"
    )
    registered_model_name: str = "visionloop-classifier"
    training: TrainingSettings = TrainingSettings()
    promotion: PromotionSettings = PromotionSettings()
    embeddings: EmbeddingSettings = EmbeddingSettings()
    similarity: SimilaritySettings = SimilaritySettings()
    leakage: LeakageSettings = LeakageSettings()
    drift: DriftSettings = DriftSettings()
    feature_store: FeatureStoreSettings = FeatureStoreSettings()
    labelling: LabellingSettings = LabellingSettings()
    alerts: AlertSettings = AlertSettings()
    web: WebSettings = WebSettings()

    @field_validator("data_home")
    @classmethod
    def _absolute_home(cls, value: Path) -> Path:
        return value.expanduser().resolve()

    @model_validator(mode="before")
    @classmethod
    def _password_out_of_uri(cls, data: Any) -> Any:
        """``https://user:password@host`` keeps ``user@host``; the password becomes a secret."""
        uri = data.get("mlflow_tracking_uri") if isinstance(data, dict) else None
        if isinstance(uri, str):
            uri, password = split_password(uri)
            if password is not None:
                return data | {"mlflow_tracking_uri": uri, "mlflow_tracking_password": password}
        return data

    @model_validator(mode="after")
    def _name_secret_variables(self) -> Settings:
        """A secret given as a value is referenced by the variable that sets it."""
        for path, secret in self.secrets():
            if secret.env is None:
                secret.env = ENV_PREFIX + "__".join(path).upper()
        return self

    @field_serializer("mlflow_tracking_uri")
    def _uri_without_password(self, uri: str | None) -> str | None:
        return None if uri is None else split_password(uri)[0]

    def secrets(self) -> list[tuple[tuple[str, ...], Secret]]:
        """Every secret that is set, with its field path."""
        found: list[tuple[tuple[str, ...], Secret]] = []

        def walk(model: BaseModel, path: tuple[str, ...]) -> None:
            for name in type(model).model_fields:
                value = getattr(model, name)
                if isinstance(value, Secret):
                    found.append(((*path, name), value))
                elif isinstance(value, BaseModel):
                    walk(value, (*path, name))

        walk(self, ())
        return found

    def secret_environment(self) -> dict[str, str]:
        """The variables a process given the saved settings needs for their secrets."""
        return {secret.env: secret.get_secret_value() for _, secret in self.secrets() if secret.env}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        yaml_path = os.environ.get(CONFIG_ENV_VAR)
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if yaml_path:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=yaml_path))
        return tuple(sources)

    # Derived locations: one place decides where everything lives.
    @property
    def lake_dir(self) -> Path:
        return self.data_home / "lake"

    @property
    def images_dir(self) -> Path:
        return self.lake_dir / "images"

    @property
    def quarantine_dir(self) -> Path:
        return self.lake_dir / "quarantine"

    @property
    def tfrecord_dir(self) -> Path:
        return self.lake_dir / "tfrecord"

    @property
    def staging_dir(self) -> Path:
        return self.lake_dir / "_staging"

    @property
    def archive_dir(self) -> Path:
        """Where ``landing.after_ingest: archive`` moves placed files."""
        return self.landing.archive_dir or self.data_home / "landing-archive"

    @property
    def reports_dir(self) -> Path:
        return self.data_home / "reports"

    @property
    def drift_references_dir(self) -> Path:
        """Each champion's drift reference frame, drawn once and read by later nights."""
        return self.reports_dir / "drift" / "references"

    @property
    def models_dir(self) -> Path:
        """Registered model versions fetched for batch scoring and the embedder."""
        return self.data_home / "models"

    @property
    def index_dir(self) -> Path:
        return self.data_home / "index"

    @property
    def feast_dir(self) -> Path:
        return self.data_home / "feast"

    @property
    def labelling_dir(self) -> Path:
        """Label Studio's data, the files annotators see, the outbox and the sync cursor."""
        return self.data_home / "labelling"

    @property
    def secrets_dir(self) -> Path:
        return self.data_home / "secrets"

    @property
    def runs_dir(self) -> Path:
        return self.data_home / "runs"

    @property
    def gx_root(self) -> Path:
        return self.data_home / "gx"

    @property
    def data_docs_dir(self) -> Path:
        """Great Expectations' Data Docs site, inside the published reports folder."""
        return self.reports_dir / "data-docs"

    @property
    def resolved_mlflow_uri(self) -> str:
        """The tracking URI clients use, with its password (never logged: see ``redact``)."""
        uri = self.mlflow_tracking_uri or f"sqlite:///{self.data_home / 'mlflow.db'}"
        password = self.mlflow_tracking_password
        return uri if password is None else with_password(uri, password.get_secret_value())

    def to_yaml(self) -> str:
        """The settings as YAML, each secret as ``{env: NAME}`` (printed and saved as such)."""
        return yaml.safe_dump(self.model_dump(mode="json"), sort_keys=False)

    def save(self, directory: Path) -> Path:
        """Write the resolved settings beside a run's outputs, secrets as references;
        returns the file."""
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "settings.yaml"
        path.write_text(self.to_yaml())
        return path


class SettingsError(ValueError):
    """Settings could not be loaded; the message names the problem and the fix."""


def load_settings(config: Path | str | None = None, **overrides: Any) -> Settings:
    """Resolve settings from defaults, an optional YAML file, the environment and overrides."""
    previous = os.environ.get(CONFIG_ENV_VAR)
    if config is not None:
        path = Path(config)
        if not path.is_file():
            raise SettingsError(f"settings file {path} does not exist; pass an existing YAML file")
        os.environ[CONFIG_ENV_VAR] = str(path)
    elif previous and not Path(previous).is_file():
        raise SettingsError(
            f"{CONFIG_ENV_VAR}={previous} names no file; fix the path or unset the variable"
        )
    try:
        return Settings(**overrides)
    except (ValueError, yaml.YAMLError) as error:
        raise SettingsError(f"invalid visionloop settings:\n{error}") from error
    finally:
        if config is not None:
            if previous is None:
                os.environ.pop(CONFIG_ENV_VAR, None)
            else:
                os.environ[CONFIG_ENV_VAR] = previous
