"""Typed flow parameters: the Prefect UI renders these pydantic models as forms."""

from __future__ import annotations

from pydantic import BaseModel, Field

from visionloop.settings import REPO_ROOT, LandingSource

SAMPLE_DIR = REPO_ROOT / "data" / "sample"


def sample_sources() -> list[LandingSource]:
    """The real Fashion-MNIST sample shipped with the project."""
    return [source for night in sample_nights() for source in night]


def sample_nights() -> list[list[LandingSource]]:
    """The sample as it arrives for ``make run``: the labelled images, then the unlabelled pool."""
    return [
        [LandingSource(path=str(SAMPLE_DIR / "labelled"), layout="imagefolder")],
        [LandingSource(path=str(SAMPLE_DIR / "unlabelled"), layout="unlabelled")],
    ]


class IngestParameters(BaseModel):
    """What to ingest, and whether an operator accepts a batch that fails the gate."""

    sources: list[LandingSource] = Field(
        default_factory=list,
        description="landing folders or manifests (layout auto|imagefolder|manifest|unlabelled); "
        "empty: the landing zone in the settings (landing.sources)",
    )
    accept_failing_batch: bool = Field(
        False, description="operator override: commit and continue despite critical failures"
    )
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class TrainParameters(BaseModel):
    """Training switches an operator may flip from the UI."""

    force: bool = Field(False, description="train even if the training split is unchanged")
    promote: bool = Field(True, description="put the new challenger through the promotion gate")
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class PromoteParameters(BaseModel):
    """Which registered version to consider for promotion."""

    version: str | None = Field(None, description="model version; default: alias challenger")
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class EmbedParameters(BaseModel):
    """Embed the lake's images (incrementally), refresh the index, check for leakage."""

    batch_ids: list[str] = Field(
        default_factory=list,
        description="batches whose images are checked for leakage; empty: the latest ingest",
    )
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class ScoreParameters(BaseModel):
    """Score the lake's images the champion has not scored yet."""

    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class DriftParameters(BaseModel):
    """Which new images to compare with the champion's training images."""

    batch_ids: list[str] = Field(
        default_factory=list, description="batches to check; empty: see days"
    )
    days: int = Field(
        0, ge=0, description="batches ingested in the last N days; 0: the latest ingest only"
    )
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class SyncParameters(BaseModel):
    """Bring completed annotations back into the lake."""

    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class HandoffParameters(BaseModel):
    """Select the images the champion is least sure about and send them to annotators."""

    budget: int | None = Field(None, ge=0, description="images to send; default labelling.budget")
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")


class NightlyParameters(IngestParameters):
    """The nightly retraining run: ingest, then train and promote."""

    train: bool = Field(True, description="train and promote after ingest")
    force_training: bool = Field(False, description="train even if the training split is unchanged")
    training_recipe: str | None = Field(
        None,
        description="a recipe file `visionloop tune` wrote: its training keys replace the "
        "settings' for this night; empty: the settings' own recipe",
    )


class SearchSpace(BaseModel):
    """The recipe settings a tuning run searches, each as [low, high]."""

    lr: tuple[float, float] = Field((3e-4, 1e-2), description="learning rate (log scale)")
    weight_decay: tuple[float, float] = Field((1e-3, 0.1), description="AdamW (log scale)")
    augment_magnitude: tuple[int, int] = Field(
        (0, 10), description="RandAugment magnitude (rand-m<N>-n2-mstd0.5); 0: no RandAugment"
    )
    mixup: tuple[float, float] = Field((0.0, 0.4), description="mixup alpha; 0: off")


class TuneParameters(BaseModel):
    """A hyperparameter search over the training recipe on one lake snapshot."""

    n_trials: int = Field(20, ge=1, description="trials to run (the settings' recipe is the first)")
    timeout_s: float | None = Field(
        3600, gt=0, description="no trial starts after this many seconds; empty: no limit"
    )
    space: SearchSpace = SearchSpace()
    first_trials: list[dict[str, float]] = Field(
        default_factory=list,
        description="recipes tried right after the settings' own, e.g. {lr: 0.001}; "
        "keys from the search space",
    )
    config: str | None = Field(None, description="settings YAML file (else VISIONLOOP_CONFIG)")
