"""``visionloop``: the operations a person runs by hand."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from visionloop.settings import Settings, SettingsError, load_settings

app = typer.Typer(help="Keep image classifiers fresh.", no_args_is_help=True)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="settings YAML (else VISIONLOOP_CONFIG)")
]


def _settings(config: Path | None) -> Settings:
    try:
        settings = load_settings(config)
    except SettingsError as error:
        _fail(str(error))
    prefect_env(settings)
    return settings


def prefect_env(settings: Settings) -> None:
    """Embedded Prefect defaults: a per-project home and a patient ephemeral API start."""
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(settings.data_home / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


def _fail(message: str) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(2)


def _known_errors() -> tuple[type[Exception], ...]:
    from visionloop.landing import LandingError
    from visionloop.spark import SparkUnavailableError
    from visionloop.training.launch import TrainingError
    from visionloop.training.promotion import PromotionError
    from visionloop.training.registry import RegistrationError, TrackingUnavailableError
    from visionloop.validation import QualityGateError

    return (
        SettingsError,
        LandingError,
        QualityGateError,
        SparkUnavailableError,
        TrainingError,
        TrackingUnavailableError,
        RegistrationError,
        PromotionError,
    )


@app.command()
def run(
    config: ConfigOption = None,
    accept_failing_batch: Annotated[bool, typer.Option(help="accept a failing batch")] = False,
) -> None:
    """Run the nightly flow once, on the sample images (or the configured sources)."""
    settings = _settings(config)
    from flows.nightly import nightly
    from visionloop.parameters import NightlyParameters

    params = NightlyParameters(
        accept_failing_batch=accept_failing_batch, config=str(config) if config else None
    )
    try:
        result = nightly(params)
    except _known_errors() as error:
        _fail(str(error))
    print_summary(settings, result)


@app.command()
def ingest(
    sources: Annotated[list[Path], typer.Argument(help="landing folders or manifests")],
    layout: Annotated[str, typer.Option(help="auto|imagefolder|manifest|unlabelled")] = "auto",
    accept_failing_batch: Annotated[bool, typer.Option(help="accept a failing batch")] = False,
    config: ConfigOption = None,
) -> None:
    """Ingest landing folders or manifests into the lake through the quality gate."""
    settings = _settings(config)
    from flows.ingest import ingest as ingest_flow
    from visionloop.landing import LandingSource
    from visionloop.parameters import IngestParameters

    params = IngestParameters(
        sources=[LandingSource(path=str(path), layout=layout) for path in sources],
        accept_failing_batch=accept_failing_batch,
        config=str(config) if config else None,
    )
    try:
        result = ingest_flow(params)
    except _known_errors() as error:
        _fail(str(error))
    print_summary(settings, {"ingest": result})


@app.command("fashion-mnist")
def fashion_mnist(
    dest: Annotated[Path, typer.Argument(help="landing folder to write class folders into")],
    limit: Annotated[int | None, typer.Option(help="write only the first N images")] = None,
) -> None:
    """Write the full Fashion-MNIST (70k PNGs) from Debian's dataset-fashion-mnist package."""
    from visionloop.samples import DatasetMissingError, materialise

    try:
        count = materialise(dest, limit)
    except DatasetMissingError as error:
        _fail(str(error))
    typer.echo(f"wrote {count} images into {dest} (ImageFolder layout)")


@app.command()
def settings(config: ConfigOption = None) -> None:
    """Print the resolved settings."""
    typer.echo(_settings(config).to_yaml())


@app.command()
def lake(config: ConfigOption = None) -> None:
    """Print the committed batches of the lake."""
    from visionloop.lake import committed_batches

    for report in committed_batches(_settings(config)):
        typer.echo(json.dumps(report))


@app.command()
def deploy(
    config: ConfigOption = None,
    pool: Annotated[str, typer.Option(help="process work pool to deploy to")] = "visionloop",
) -> None:
    """Create the work pool and apply deployments/prefect.yaml to the Prefect API in use."""
    from visionloop.deploy import DeployError, deploy_all

    try:
        deploy_all(_settings(config), pool)
    except DeployError as error:
        _fail(str(error))
    typer.echo("deployed: nightly/nightly, ingest/ingest, train/train, promote/promote")


@app.command()
def train(
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option(help="train even if the training split is unchanged")
    ] = False,
) -> None:
    """Train a challenger on the lake and put it through the promotion gate."""
    _settings(config)
    from flows.train import train as train_flow
    from visionloop.parameters import TrainParameters

    params = TrainParameters(force=force, config=str(config) if config else None)
    try:
        typer.echo(json.dumps(train_flow(params), indent=2, default=str))
    except _known_errors() as error:
        _fail(str(error))


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Argument(help="model version (default: challenger)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate a version against the champion on the frozen test split and decide."""
    _settings(config)
    from flows.promote import promote as promote_flow
    from visionloop.parameters import PromoteParameters

    params = PromoteParameters(version=version, config=str(config) if config else None)
    try:
        typer.echo(json.dumps(promote_flow(params), indent=2, default=str))
    except _known_errors() as error:
        _fail(str(error))


@app.command()
def rollback(config: ConfigOption = None) -> None:
    """Restore the previous champion (undoes the last promotion)."""
    from visionloop.training.promotion import rollback as rollback_model

    try:
        result = rollback_model(_settings(config))
    except _known_errors() as error:
        _fail(str(error))
    typer.echo(
        f"{result.name}: champion is v{result.champion_version} again "
        f"(v{result.demoted_version} rolled back)"
    )


def print_summary(settings: Settings, result: dict) -> None:
    """Where the outputs of a run are, and what it counted."""
    ingest_result = result["ingest"]
    batch, gate = ingest_result["batch"], ingest_result["gate"]
    reasons = ", ".join(f"{k}={v}" for k, v in batch["quarantined_by_reason"].items()) or "none"
    lines = [
        f"batch {batch['batch_id']}: {batch['files_in']} files in, {batch['written']} written, "
        f"{batch['duplicates']} duplicates, {batch['quarantined']} quarantined ({reasons})",
        f"quality gate: {'passed' if gate['passed'] else 'failed'}"
        + (" (operator override)" if gate["overridden"] else ""),
        f"images (Parquet):   {settings.images_dir}",
        f"TFRecord shards:    {settings.tfrecord_dir}",
        f"quarantine:         {settings.quarantine_dir}",
        f"Data Docs:          {gate['data_docs']}",
        f"run settings:       {settings.runs_dir / batch['batch_id'] / 'settings.yaml'}",
    ]
    lines += _training_lines(settings, result.get("train"))
    typer.echo("\n".join(lines))


def _training_lines(settings: Settings, train_result: dict | None) -> list[str]:
    if train_result is None:
        return []
    from visionloop.training.pipeline import champion_tags

    lines = [f"MLflow:             {settings.resolved_mlflow_uri}"]
    if not train_result["trained"]:
        lines.append(f"training skipped:   {train_result['skip_reason']}")
    else:
        challenger = train_result["challenger"]
        promotion = train_result.get("promotion", {})
        lines.append(
            f"challenger:         v{challenger['version']} test accuracy "
            f"{challenger['test_accuracy']:.3f}, macro-F1 {challenger['test_macro_f1']:.3f}"
            + (f" — {promotion['reason']}" if promotion else "")
        )
    version, tags = champion_tags(settings)
    if version is None:
        lines.append("champion:           none yet")
    else:
        accuracy = float(tags.get("test.accuracy", "nan"))
        lines.append(
            f"champion:           {settings.registered_model_name} v{version}, "
            f"test accuracy {accuracy:.3f} (models:/{settings.registered_model_name}@champion)"
        )
    return lines


if __name__ == "__main__":
    sys.exit(app())
