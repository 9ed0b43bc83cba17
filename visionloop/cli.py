"""``visionloop``: the operations a person runs by hand.

Exit codes (also in the README): 0 done; 1 the operation failed (training, registration,
promotion, a Spark or lake error); 2 bad arguments or settings; 3 the quality gate stopped
a batch (it is held); 4 a service is unreachable (MLflow tracking store, Label Studio).
Errors are one clear message on stderr, never a bare traceback.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from visionloop.settings import Settings, SettingsError, load_settings

if TYPE_CHECKING:  # the flows import Prefect and Spark: not on ``--help``
    from visionloop.embeddings.results import LeakageResult
    from visionloop.flows.embed import EmbedResult
    from visionloop.flows.ingest import IngestResult
    from visionloop.flows.nightly import NightlyResult
    from visionloop.flows.train import TrainResult
    from visionloop.labelling.handoff import HandoffResult
    from visionloop.registry.export import ExportedModel
    from visionloop.registry.promotion import PromotionResult
    from visionloop.registry.tracking import ChampionSummary

EXIT_FAILED, EXIT_USAGE, EXIT_GATE, EXIT_UNREACHABLE = 1, 2, 3, 4
DEPLOYMENTS = (
    "nightly",
    "ingest",
    "embed",
    "score",
    "drift",
    "train",
    "promote",
    "sync_labels",
    "handoff",
    "tune",
)

app = typer.Typer(help="Keep image classifiers fresh.", no_args_is_help=True)
ConfigOption = Annotated[
    Path | None, typer.Option("--config", "-c", help="settings YAML (else VISIONLOOP_CONFIG)")
]


def _settings(config: Path | None) -> Settings:
    with reported_errors():
        settings = load_settings(config)
    prefect_env(settings)
    return settings


def prefect_env(settings: Settings) -> None:
    """Embedded Prefect defaults: a per-project home and a patient ephemeral API start."""
    prefect_home = Path(os.environ.setdefault("PREFECT_HOME", str(settings.data_home / "prefect")))
    prefect_home.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bars in flow logs


def _exit_codes() -> dict[type[Exception], int]:
    """Known errors and their exit codes (imported late: nothing heavy on ``--help``)."""
    from visionloop.embeddings.similar import SimilarityError
    from visionloop.ingest.landing import LandingError
    from visionloop.labelling.server import LabelStudioUnavailableError
    from visionloop.lake.snapshot import SnapshotError
    from visionloop.locks import LockBusyError
    from visionloop.quality.gate import QualityGateError
    from visionloop.registry.export import ExportParityError, VersionNotFoundError
    from visionloop.registry.promotion import PromotionError
    from visionloop.registry.served_model import RegistrationError
    from visionloop.registry.tracking import TrackingUnavailableError
    from visionloop.shared_lock import SharedLockUnavailableError
    from visionloop.spark import SparkUnavailableError
    from visionloop.training.lake_reader import LakeReadError
    from visionloop.training.launch import TrainingError
    from visionloop.training.tuning import TuningError

    return {
        SettingsError: EXIT_USAGE,
        LandingError: EXIT_USAGE,
        QualityGateError: EXIT_GATE,
        TrackingUnavailableError: EXIT_UNREACHABLE,
        SimilarityError: EXIT_USAGE,
        LabelStudioUnavailableError: EXIT_UNREACHABLE,
        SharedLockUnavailableError: EXIT_UNREACHABLE,
        SparkUnavailableError: EXIT_FAILED,
        LockBusyError: EXIT_FAILED,
        SnapshotError: EXIT_FAILED,
        LakeReadError: EXIT_FAILED,
        TrainingError: EXIT_FAILED,
        TuningError: EXIT_FAILED,
        RegistrationError: EXIT_FAILED,
        PromotionError: EXIT_FAILED,
        ExportParityError: EXIT_FAILED,
        VersionNotFoundError: EXIT_USAGE,
    }


@contextmanager
def reported_errors() -> Iterator[None]:
    """Turn a known error into its message on stderr and its exit code."""
    try:
        yield
    except SettingsError as error:  # before the heavy imports below
        _fail(str(error), EXIT_USAGE)
    except Exception as error:
        code = next((code for kind, code in _exit_codes().items() if isinstance(error, kind)), None)
        if code is None:
            raise
        _fail(str(error), code)


def _fail(message: str, code: int) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _run(operation: Callable[[], Any]) -> Any:
    with reported_errors():
        return operation()


@app.command()
def run(
    source: Annotated[
        list[Path] | None, typer.Option("--source", help="one-off landing folder or manifest")
    ] = None,
    layout: Annotated[str, typer.Option(help="auto|imagefolder|manifest|unlabelled")] = "auto",
    sample: Annotated[
        bool, typer.Option("--sample", help="the shipped sample, arriving as two nights")
    ] = False,
    accept_failing_batch: Annotated[bool, typer.Option(help="accept a failing batch")] = False,
    config: ConfigOption = None,
) -> None:
    """Run the nightly flow once on the landing zone (``landing.sources``) or ``--source``.

    With ``--sample`` (``make run``) the shipped sample arrives as two nights: the labelled
    images, then the unlabelled pool, so the second night judges drift against the first
    night's champion. A night reads only files the lake has not placed yet.
    """
    settings = _settings(config)
    from visionloop.flows.nightly import nightly
    from visionloop.ingest.landing import LandingSource, landing_sources
    from visionloop.parameters import NightlyParameters, sample_nights

    if sample:
        nights = sample_nights()
    else:
        sources = [LandingSource(path=str(path), layout=layout) for path in source or []]
        with reported_errors():
            nights = [landing_sources(sources, settings.landing.sources)]
    for number, sources in enumerate(nights, start=1):
        if len(nights) > 1:
            typer.secho(f"\n== night {number} of {len(nights)} ==", bold=True)
        params = NightlyParameters(
            sources=sources,
            accept_failing_batch=accept_failing_batch,
            config=str(config) if config else None,
        )
        print_summary(settings, _run(lambda params=params: nightly(params)))


@app.command()
def ingest(
    sources: Annotated[
        list[Path] | None,
        typer.Argument(help="landing folders or manifests; default: landing.sources"),
    ] = None,
    layout: Annotated[str, typer.Option(help="auto|imagefolder|manifest|unlabelled")] = "auto",
    accept_failing_batch: Annotated[bool, typer.Option(help="accept a failing batch")] = False,
    config: ConfigOption = None,
) -> None:
    """Ingest the new files of landing folders or manifests through the quality gate."""
    settings = _settings(config)
    from visionloop.flows.ingest import ingest as ingest_flow
    from visionloop.ingest.landing import LandingSource, landing_sources
    from visionloop.parameters import IngestParameters

    with reported_errors():
        params = IngestParameters(
            sources=landing_sources(
                [LandingSource(path=str(path), layout=layout) for path in sources or []],
                settings.landing.sources,
            ),
            accept_failing_batch=accept_failing_batch,
            config=str(config) if config else None,
        )
    typer.echo("\n".join(_ingest_lines(settings, _run(lambda: ingest_flow(params)))))


@app.command("fashion-mnist")
def fashion_mnist(
    dest: Annotated[Path, typer.Argument(help="landing folder to write class folders into")],
    limit: Annotated[int | None, typer.Option(help="write only the first N images")] = None,
) -> None:
    """Write the full Fashion-MNIST (70k PNGs) from Debian's dataset-fashion-mnist package."""
    from visionloop.ingest.samples import DatasetMissingError, materialise

    try:
        count = materialise(dest, limit)
    except DatasetMissingError as error:
        _fail(str(error), EXIT_USAGE)
    typer.echo(f"wrote {count} images into {dest} (ImageFolder layout)")


@app.command()
def settings(config: ConfigOption = None) -> None:
    """Print the resolved settings."""
    typer.echo(_settings(config).to_yaml())


@app.command()
def lake(config: ConfigOption = None) -> None:
    """Print the committed batches of the lake."""
    from visionloop.lake.commit import committed_batches

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
        _fail(str(error), EXIT_UNREACHABLE)
    typer.echo(f"deployed to pool {pool}: " + ", ".join(f"{name}/{name}" for name in DEPLOYMENTS))


@app.command()
def train(
    config: ConfigOption = None,
    force: Annotated[
        bool, typer.Option(help="train a new version even if nothing changed")
    ] = False,
) -> None:
    """Train a challenger on the lake and put it through the promotion gate."""
    settings = _settings(config)
    from visionloop.flows.train import train as train_flow
    from visionloop.parameters import TrainParameters

    params = TrainParameters(force=force, config=str(config) if config else None)
    typer.echo("\n".join(_training_lines(settings, _run(lambda: train_flow(params)))))


@app.command("train-join")
def train_join(
    run_dir: Annotated[Path, typer.Argument(help="the run directory, as this node sees it")],
) -> None:
    """Join a multi-node training run from this node (its settings are the run's own)."""
    from visionloop.training.launch import join_training

    _run(lambda: join_training(run_dir))


@app.command()
def tune(
    trials: Annotated[int, typer.Option(help="trials to run (the settings' recipe first)")] = 20,
    timeout: Annotated[
        float | None, typer.Option(help="seconds after which no trial starts")
    ] = 3600,
    config: ConfigOption = None,
) -> None:
    """Search the training recipe on the lake (Optuna TPE, median pruner) and write the best
    as a ``training:`` recipe; the nightly trains it only with ``training_recipe`` set."""
    _settings(config)
    from visionloop.flows.tune import tune as tune_flow
    from visionloop.parameters import TuneParameters

    params = TuneParameters(
        n_trials=trials, timeout_s=timeout, config=str(config) if config else None
    )
    result = _run(lambda: tune_flow(params))
    states = [row["state"] for row in result.trials]
    counts = ", ".join(f"{states.count(state)} {state.lower()}" for state in sorted(set(states)))
    baseline = "pruned" if result.baseline_value is None else f"{result.baseline_value:.4f}"
    typer.echo(
        f"trials:             {len(states)} ({counts}) in {result.wall_s:.0f} s\n"
        f"best:               trial {result.best_trial}, val_accuracy {result.best_value:.4f} "
        f"(settings' recipe: {baseline})\n"
        f"recipe:             {result.recipe_path}"
    )


@app.command()
def promote(
    version: Annotated[
        str | None, typer.Argument(help="model version (default: challenger)")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Evaluate a version against the champion on the lake's test split and decide."""
    _settings(config)
    from visionloop.flows.promote import promote as promote_flow
    from visionloop.parameters import PromoteParameters

    params = PromoteParameters(version=version, config=str(config) if config else None)
    result = _run(lambda: promote_flow(params))
    promotion = result.promotion
    champion = promotion.champion_after
    lines = [_promotion_line(promotion), *_export_lines(result.export, result.export_error)]
    lines.append(
        f"champion:           {f'{promotion.name} v{champion}' if champion else 'none yet'}"
    )
    typer.echo("\n".join(lines))


@app.command()
def similar(
    query: Annotated[str, typer.Argument(help="an image file, or the id of a lake image")],
    k: Annotated[int, typer.Option("-k", help="how many similar images")] = 10,
    config: ConfigOption = None,
) -> None:
    """The images most like QUERY, from the similar-image index."""
    settings = _settings(config)
    from visionloop.embeddings.embedder import current_embedder
    from visionloop.embeddings.similar import similar as find_similar
    from visionloop.registry.tracking import Tracking

    def search():
        source = current_embedder(settings, Tracking.connect(settings))
        return find_similar(settings, source, query, k)

    for match in _run(search):
        typer.echo(
            f"{match.similarity:.4f}  {match.image_id}  {match.split or '-':5}  "
            f"{match.label or '(unlabelled)':12}  {match.source_uri or ''}"
        )


@app.command("label-studio")
def label_studio(config: ConfigOption = None) -> None:
    """Run the local Label Studio (127.0.0.1, data under the data home) until stopped.

    Ctrl-C, SIGTERM and SIGHUP (a service manager, a Prefect worker) stop its server too.
    """
    settings = _settings(config)
    from visionloop.labelling.server import start

    for number in (signal.SIGTERM, signal.SIGHUP):  # a service manager or worker stops us
        signal.signal(number, _raise_stopped)
    try:
        server = _run(lambda: start(settings))  # stops its server itself if interrupted
    except _Stopped:
        return  # asked to stop while starting: nothing is left running, a clean exit
    typer.echo(
        f"Label Studio: {server.url} (log in as {settings.labelling.admin_email}; unless set in "
        f"the settings the password is in {settings.secrets_dir / 'label-studio-password'}, the "
        f"API token in {settings.secrets_dir / 'label-studio-token'}). Ctrl-C stops it."
    )
    try:
        server.process.wait()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        server.stop()


class _Stopped(BaseException):
    """SIGTERM or SIGHUP arrived: stop like Ctrl-C, but exit 0 as a service manager expects."""


def _raise_stopped(number: int, frame: object) -> None:
    raise _Stopped(signal.Signals(number).name)


@app.command()
def rollback(config: ConfigOption = None) -> None:
    """Restore the previous champion (undoes the last promotion)."""
    settings = _settings(config)
    from visionloop.registry.promotion import rollback as rollback_model
    from visionloop.registry.tracking import Tracking

    result = _run(lambda: rollback_model(Tracking.connect(settings), settings))
    typer.echo(
        f"{result.name}: champion is v{result.champion_version} again "
        f"(v{result.demoted_version} rolled back)"
    )


@app.command()
def exclude(
    image_ids: Annotated[list[str], typer.Argument(help="image ids (sha256) to keep out")],
    reason: Annotated[str, typer.Option(help="why, recorded with the exclusion")],
    by: Annotated[str, typer.Option(help="who excludes them")] = "operator",
    config: ConfigOption = None,
) -> None:
    """Exclude images from training (a leaked copy, an erasure request); nothing is rewritten."""
    settings = _settings(config)
    from visionloop.lake.exclusions import exclude as exclude_images

    batch = _run(lambda: exclude_images(settings, image_ids, by=by, reason=reason))
    typer.echo(f"{len(set(image_ids))} images excluded from training (label events, batch {batch})")


@app.command()
def compact(config: ConfigOption = None) -> None:
    """Merge the lake's small side-table partitions and retire unused model outputs."""
    settings = _settings(config)
    from visionloop.embeddings.embedder import current_embedder
    from visionloop.lake.compaction import maintain
    from visionloop.registry.tracking import Tracking

    def run_maintenance() -> list:
        tracking = Tracking.connect(settings)
        embedder = current_embedder(settings, tracking).version
        return maintain(
            settings, {"embeddings": {embedder}, "predictions": tracking.aliased_versions()}
        )

    for result in _run(run_maintenance):
        typer.echo(
            f"{result.table}: {result.partitions_before} -> {result.partitions_after} "
            f"partitions, {result.retired} retired, {result.removed} removed"
        )


BatchOption = Annotated[
    list[str] | None, typer.Option("--batch", help="a batch id (repeatable); default: latest")
]


@app.command()
def embed(batch: BatchOption = None, config: ConfigOption = None) -> None:
    """Embed new images, grow the similar-image index, check the batches for leakage.

    ``--batch`` names the batches to check (default: the latest ingest); Feast is refreshed.
    """
    settings = _settings(config)
    from visionloop.flows.embed import embed as embed_flow
    from visionloop.parameters import EmbedParameters

    params = EmbedParameters(batch_ids=batch or [], config=str(config) if config else None)
    result = _run(lambda: embed_flow(params))
    lines = _embed_lines(settings, result.embed)
    typer.echo("\n".join([*lines, _feast_line(settings, result.feature_views)]))


@app.command()
def score(config: ConfigOption = None) -> None:
    """Score the lake's images the champion has not scored yet; refresh Feast."""
    settings = _settings(config)
    from visionloop.flows.score import score as score_flow
    from visionloop.parameters import ScoreParameters

    result = _run(lambda: score_flow(ScoreParameters(config=str(config) if config else None)))
    scored = result.scoring
    if scored is None:
        line = "predictions:        none: no champion yet (train or promote one first)"
    else:
        line = (
            f"predictions:        {scored.written} new by {settings.registered_model_name} "
            f"v{scored.version} in {settings.lake_dir / 'predictions'}"
        )
    typer.echo("\n".join([line, _feast_line(settings, result.feature_views)]))


@app.command()
def drift(
    batch: BatchOption = None,
    days: Annotated[
        int, typer.Option(min=0, help="the batches of the last N days; 0: --batch or latest")
    ] = 0,
    config: ConfigOption = None,
) -> None:
    """Compare new images' embeddings with the champion's training images (Evidently)."""
    _settings(config)
    from visionloop.flows.drift import drift as drift_flow
    from visionloop.parameters import DriftParameters

    params = DriftParameters(
        batch_ids=batch or [], days=days, config=str(config) if config else None
    )
    check = _run(lambda: drift_flow(params))
    verdict = {True: "drifted", False: "no drift", None: "not judged"}[check.drifted]
    lines = [f"drift:              {verdict}: {check.note}"]
    if check.report:
        lines.append(f"drift report:       {check.report}")
    if check.drifted_ids:
        lines.append(f"to annotators first: {len(check.drifted_ids)} drifted images")
    typer.echo("\n".join(lines))


@app.command("sync-labels")
def sync_labels(config: ConfigOption = None) -> None:
    """Bring completed Label Studio annotations into the lake as label events (or reviews)."""
    _settings(config)
    from visionloop.flows.labelling import sync_labels as sync_flow
    from visionloop.parameters import SyncParameters

    synced = _run(lambda: sync_flow(SyncParameters(config=str(config) if config else None)))
    if synced.skipped:
        typer.echo(f"label sync skipped: {synced.skipped}")
        return
    counts = ", ".join(f"{name} {count}" for name, count in synced.counts().items())
    batch = f"label batch {synced.batch_id}" if synced.batch_id else "nothing new to commit"
    typer.echo(f"label sync: {counts}; {batch}")


@app.command()
def handoff(
    budget: Annotated[
        int | None, typer.Option(min=0, help="images to send; default labelling.budget")
    ] = None,
    config: ConfigOption = None,
) -> None:
    """Send the images the champion is least sure about to Label Studio (idempotently)."""
    _settings(config)
    from visionloop.flows.labelling import handoff as handoff_flow
    from visionloop.parameters import HandoffParameters

    params = HandoffParameters(budget=budget, config=str(config) if config else None)
    typer.echo("\n".join(_handoff_lines(_run(lambda: handoff_flow(params)))))


@app.command()
def export(
    version: Annotated[
        str | None, typer.Option(help="registered model version; default: the champion")
    ] = None,
    force: Annotated[bool, typer.Option(help="export again even if exported before")] = False,
    config: ConfigOption = None,
) -> None:
    """Export the champion (or --version) to ONNX beside its pyfunc, parity checked.

    Parity is checked on the lake's test split; when the ONNX model disagrees nothing is
    logged and the exit code is 1.
    """
    settings = _settings(config)
    from visionloop.registry.export import export_registered
    from visionloop.registry.tracking import Tracking

    def run_export() -> ExportedModel:
        tracking = Tracking.connect(settings)
        return export_registered(tracking, settings, version, force=force)

    typer.echo("\n".join(_export_lines(_run(run_export), None)))


def print_summary(settings: Settings, night: NightlyResult) -> None:
    """Where the outputs of a night are, and what each stage counted and decided."""
    lines = _ingest_lines(settings, night.ingest)
    lines += _training_lines(settings, night.train)
    lines += _loop_lines(settings, night)
    typer.echo("\n".join(lines))


def _ingest_lines(settings: Settings, ingested: IngestResult) -> list[str]:
    """What an ingest listed, read and wrote, its gate, and where the lake keeps it."""
    report, gate = ingested.report, ingested.gate
    reasons = ", ".join(f"{k}={v}" for k, v in report.quarantined_by_reason.items()) or "none"
    lines = [
        f"landing: {report.listed} files listed, {report.skipped} already placed, "
        f"{report.read} read",
    ]
    if report.arrived and gate is not None:
        lines += [
            f"batch {report.batch_id}: {report.written} written, {report.duplicates} "
            f"duplicates, {report.quarantined} quarantined ({reasons})"
            + (f", {report.archived} archived" if report.archived else ""),
            f"quality gate: {'passed' if gate.passed else 'failed'}"
            + (" (operator override)" if gate.overridden else ""),
            f"Data Docs:          {gate.data_docs_url}",
            f"run settings:       {settings.runs_dir / report.batch_id / 'settings.yaml'}",
        ]
    else:
        lines.append("nothing new arrived: no batch tonight")
    return [
        *lines,
        f"images (Parquet):   {settings.images_dir}",
        f"TFRecord shards:    {settings.tfrecord_dir}",
        f"quarantine:         {settings.quarantine_dir}",
        f"arrival ledger:     {settings.lake_dir / 'arrivals'}",
    ]


def _loop_lines(settings: Settings, night: NightlyResult) -> list[str]:
    """Where the nightly's later stages left their outputs, and what they decided."""
    drift = night.drift
    return [
        *_embed_lines(settings, night.embed),
        f"Feast repository:   feature_repo/ (registry and online store in {settings.feast_dir})",
        f"drift:              {drift.note}" + (f"; report {drift.report}" if drift.report else ""),
        f"predictions:        {settings.lake_dir / 'predictions'}",
        f"tonight's decision: {night.decision.action} ({night.decision.reason})",
        *_handoff_lines(night.handoff),
    ]


def _embed_lines(settings: Settings, embed: EmbedResult) -> list[str]:
    """Where the vectors and the index are, what grew, and the batches' leakage check."""
    vectors, index = embed.embeddings, embed.index
    lines = [
        f"embeddings:         {settings.lake_dir / 'embeddings'} ({vectors.version}, "
        f"{vectors.written} new)",
        f"similar images:     {settings.index_dir} ({index.vectors} images, {index.added} new; "
        "visionloop similar FILE_OR_ID)",
    ]
    if embed.leakage is not None:
        lines.append(_leakage_line(embed.leakage))
    return lines


def _leakage_line(leakage: LeakageResult) -> str:
    summary = leakage.summary
    return (
        f"leakage:            {summary.leaked_images} of {summary.images} new images leak "
        f"across splits ({leakage.excluded} excluded from training); pairs in {leakage.report}"
    )


def _feast_line(settings: Settings, feature_views: list[str]) -> str:
    views = ", ".join(feature_views) or "none"
    return f"Feast:              {views} materialised (online store in {settings.feast_dir})"


def _handoff_lines(handed: HandoffResult) -> list[str]:
    queued, sent = handed.queued, handed.sent
    lines = [
        f"labelling queue:    {queued.selected} images selected, {queued.queued} queued, "
        f"{sent.imported} imported, {sent.refreshed} refreshed; {sent.where}"
    ]
    if queued.why_held_back:
        lines.append(f"held back:          {queued.why_held_back}")
    return lines


def _export_lines(export: ExportedModel | None, error: str | None) -> list[str]:
    """The ONNX export of a champion, or why it failed (the champion stands either way)."""
    if error is not None:
        return [f"ONNX export:        failed ({error}); retry with `visionloop export`"]
    if export is None:
        return []
    parity, earlier = export.parity, " (exported earlier)" if export.reused else ""
    return [
        f"ONNX export:        {export.name} v{export.version}{earlier}: parity on "
        f"{parity.images} test images, max |dp| {parity.max_abs_diff:.1e}, "
        f"{parity.label_mismatches} labels differ",
        f"ONNX model:         {export.artifact_location} (logged model {export.model_id})",
    ]


def _training_lines(settings: Settings, trained: TrainResult | None) -> list[str]:
    """The training plan's outcome, the promotion's reason, and the champion after."""
    if trained is None:
        return []
    from visionloop.registry.tracking import redact

    lines = [f"MLflow:             {redact(settings.resolved_mlflow_uri)}"]
    plan = trained.plan
    if plan.action == "skip":
        lines.append(f"training skipped:   {plan.reason}")
    elif plan.action == "reuse":
        lines.append(f"challenger:         v{plan.version} reused ({plan.reason})")
    if challenger := trained.challenger:
        lines.append(
            f"challenger:         v{challenger.version.version} test accuracy "
            f"{challenger.test.accuracy:.3f}, macro-F1 {challenger.test.macro_f1:.3f}"
        )
    if trained.promotion is not None:
        lines.append(_promotion_line(trained.promotion))
    lines += _export_lines(trained.export, trained.export_error)
    return [*lines, _champion_line(settings, trained.champion)]


def _promotion_line(promotion: PromotionResult) -> str:
    verdict = "promoted" if promotion.decision.promoted else "not promoted"
    replayed = " (decided earlier)" if promotion.replayed else ""
    return (
        f"promotion:          v{promotion.challenger_version} {verdict}{replayed}: "
        f"{promotion.decision.reason}"
    )


def _champion_line(settings: Settings, champion: ChampionSummary | None) -> str:
    if champion is None:
        return "champion:           none yet"
    return (
        f"champion:           {settings.registered_model_name} v{champion.version}, "
        f"test accuracy {champion.test_accuracy:.3f} "
        f"(models:/{settings.registered_model_name}@champion)"
    )


if __name__ == "__main__":
    sys.exit(app())
