"""The ``starling`` command line. Transport only: each command parses options and calls one function.

Heavy modules (torch, feast, polars pipelines) are imported inside commands so ``starling --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from starling.cli_group import StarlingGroup
from starling.errors import StarlingError


@click.group(cls=StarlingGroup)
@click.version_option(package_name="starling")
def cli() -> None:
    """Starling: a multi-stage movie recommender."""


# --------------------------------------------------------------------------------------------------- data
@cli.group(cls=StarlingGroup)
def data() -> None:
    """MovieLens ingestion."""


@data.command("ingest")
@click.argument("source")
@click.option("--out", "out", type=click.Path(path_type=Path), required=True, help="Working directory.")
@click.option(
    "--on-bad",
    type=click.Choice(["error", "skip"]),
    default="error",
    show_default=True,
    help="Stop at the first bad row, or drop bad rows and report how many of each kind.",
)
def data_ingest(source: str, out: Path, on_bad: str) -> None:
    """Ingest SOURCE (a MovieLens directory, a dataset name, or synthetic[:N]) into canonical parquet."""
    from starling.data.ingest import ingest

    report = ingest(source, out, on_bad=on_bad)
    click.echo(report.summary())


# ----------------------------------------------------------------------------------------------- features
@cli.group(cls=StarlingGroup)
def features() -> None:
    """Point-in-time features and the Feast online store."""


@features.command("build")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option(
    "--valid-frac", type=float, default=0.1, show_default=True, help="Share of ratings (by time) for valid."
)
@click.option(
    "--test-frac", type=float, default=0.1, show_default=True, help="Share of ratings (by time) for test."
)
@click.option(
    "--split",
    "split_kind",
    type=click.Choice(["time", "leave-last-out"]),
    default="time",
    show_default=True,
    help="Global time cut-offs, or each user's last rating(s) held out.",
)
@click.option(
    "--engine",
    type=click.Choice(["polars", "spark"]),
    default=None,
    help="polars (one process) or spark (the same files, computed by PySpark). "
    "Default: STARLING_FEATURES_ENGINE, else polars.",
)
@click.option(
    "--master",
    default=None,
    help="Spark master of --engine spark: local[N], local[*], spark://HOST:PORT, k8s://https://HOST:PORT. "
    "Default: STARLING_SPARK_MASTER, else local[2].",
)
@click.option(
    "--spark-application",
    "spark_application",
    metavar="NAME",
    default=None,
    help="With --engine spark: do not compute here; ask the chart's SparkApplication NAME, which shares "
    "WORKDIR, to build and wait for its answer.",
)
@click.option(
    "--wait-timeout",
    type=float,
    default=4 * 3600.0,
    show_default=True,
    help="Seconds to wait for the SparkApplication's answer.",
)
def features_build(
    workdir: Path,
    valid_frac: float,
    test_frac: float,
    split_kind: str,
    engine: str | None,
    master: str | None,
    spark_application: str | None,
    wait_timeout: float,
) -> None:
    """Build point-in-time samples, latest per-entity features and the feature spec in WORKDIR/features."""
    from starling.config import get_settings
    from starling.features.build import SplitConfig, build_features

    split = SplitConfig(kind=split_kind, valid_frac=valid_frac, test_frac=test_frac)
    engine = engine or get_settings().features_engine
    if engine not in ("polars", "spark"):
        raise StarlingError(
            f"features engine {engine!r} (STARLING_FEATURES_ENGINE): expected polars or spark"
        )
    if engine == "polars":
        if master is not None or spark_application is not None:
            raise StarlingError("--master and --spark-application apply to --engine spark only")
        report = build_features(workdir, split)
        click.echo(report.summary())
        return
    from starling.features import spark_engine

    if spark_application is not None:
        if master is not None:
            raise StarlingError(
                "--master and --spark-application exclude each other (the application has its own)"
            )
        click.echo(spark_engine.request_build(workdir, spark_application, split, wait_timeout))
        return
    report = spark_engine.build_features_spark(
        workdir, split, master=spark_engine.check_master(master or get_settings().spark_master)
    )
    click.echo(report.summary())


@features.command("materialize")
@click.argument("workdir", type=click.Path(path_type=Path))
def features_materialize(workdir: Path) -> None:
    """Apply the Feast repo and materialize the latest features into the online store."""
    from starling.featurestore import materialize

    report = materialize(workdir)
    click.echo(report.summary())


@features.command("wait")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option(
    "--since",
    type=click.FloatRange(0),
    default=0.0,
    show_default=True,
    help="Only features written after this time (seconds since the epoch) count.",
)
@click.option("--timeout", "timeout_s", type=click.FloatRange(0), default=3600.0, show_default=True)
def features_wait(workdir: Path, since: float, timeout_s: float) -> None:
    """Wait until WORKDIR holds built features (written after --since): a training pod started beside the
    pipeline that builds them (the chart's PyTorchJob) starts once they are there."""
    from starling.features.build import wait_for_features

    spec = wait_for_features(workdir, since, timeout_s)
    click.echo(f"features ready: {spec}")


@features.command("online")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option("--user", "user_ids", type=int, multiple=True, help="User id to read (repeatable).")
@click.option("--movie", "movie_ids", type=int, multiple=True, help="Movie id to read (repeatable).")
def features_online(workdir: Path, user_ids: tuple[int, ...], movie_ids: tuple[int, ...]) -> None:
    """Print users' and movies' features as read back from the online store (JSON)."""
    from starling.featurestore import read_online_features

    result = read_online_features(workdir, user_ids=list(user_ids), movie_ids=list(movie_ids))
    click.echo(json.dumps(result, indent=2, default=str))


# ----------------------------------------------------------------------------------------------- training
@cli.command("train")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option(
    "--model",
    "model_name",
    default="rank_mlp",
    show_default=True,
    help="rank_mlp, embedding_mlp, wide_deep, neural_cf, deepfm, din, or `all` (every model); the best on "
    "the served pipeline's validation NDCG@10 serves.",
)
@click.option("--epochs", type=int, default=None, help="Maximum epochs (early stopping may end sooner).")
@click.option(
    "--windows",
    type=click.IntRange(1, 1000),
    default=40,
    show_default=True,
    help="Training windows before the valid cut-off (each: a snapshot, its users' recalled candidates).",
)
@click.option(
    "--horizon-days",
    type=click.FloatRange(1, 3650),
    default=180.0,
    show_default=True,
    help="Length of each training window: a candidate's label is whether the user liked it within it.",
)
@click.option(
    "--step-days",
    type=click.FloatRange(1, 3650),
    default=45.0,
    show_default=True,
    help="Days between the cut-offs of consecutive training windows.",
)
@click.option(
    "--refit/--no-refit",
    default=True,
    show_default=True,
    help="Retrain the selected model on the windows up to the test cut-off before publishing it.",
)
@click.option(
    "--publish/--no-publish",
    default=True,
    show_default=True,
    help="Point `current` at the new version if it passes the quality gate.",
)
@click.option(
    "--content-vectors/--no-content-vectors",
    default=None,
    help="Write the catalog's language-model vectors into the version (default: STARLING_CONTENT_VECTORS, on).",
)
@click.option(
    "--nproc",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Training processes: more than 1 runs distributed data parallel through torchrun (gloo on CPU, NCCL "
    "on CUDA); rank 0 writes the version.",
)
def train(
    workdir: Path,
    model_name: str,
    epochs: int | None,
    windows: int,
    horizon_days: float,
    step_days: float,
    refit: bool,
    publish: bool,
    content_vectors: bool | None,
    nproc: int,
) -> None:
    """Train ranking model(s) on recalled candidates and write a versioned artifact under WORKDIR/models.

    Every model learns from what recall returns at past cut-offs, labelled by what each user liked next; the
    best on the served pipeline's validation NDCG@10 serves, if it beats popularity and the same pipeline
    without a ranker (else exit 2).
    """
    from training.distributed import (
        launched_by_torchrun,
        relaunch_with_torchrun,
        training_process_group,
        without_option,
    )
    from training.ltr import WindowConfig
    from training.train import train_command

    if nproc > 1 and not launched_by_torchrun():
        sys.exit(
            relaunch_with_torchrun(nproc, ["-m", "starling.cli", *without_option(sys.argv[1:], "--nproc")])
        )
    config = WindowConfig(horizon_days=horizon_days, step_days=step_days, windows=windows)
    with training_process_group() as rank:
        report = train_command(
            workdir,
            model_name,
            epochs=epochs,
            publish=publish,
            windows=config,
            refit_serving=refit,
            content_vectors=content_vectors,
        )
    if rank == 0:
        click.echo(report.summary())


@cli.command("evaluate")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the metrics object as JSON instead of a table.")
@click.option(
    "--replay",
    is_flag=True,
    help="Replay experiment arms over the test period's likes instead (the check before going live).",
)
@click.option(
    "--experiment", default=None, help="--replay: the experiment whose arms to replay (default: the first)."
)
@click.option("--arms", default=None, help="--replay: arm names, comma-separated, from the experiments file.")
@click.option(
    "--k", "k", type=click.IntRange(1, 500), default=10, show_default=True, help="--replay: list length."
)
@click.option(
    "--max-events",
    type=click.IntRange(1),
    default=2000,
    show_default=True,
    help="--replay: likes replayed at most.",
)
@click.option(
    "--held-out-movies",
    is_flag=True,
    help="Instead: hide a sample of movies from training, bring them back as new (text only) and compare how "
    "the text and the genres place them (recall@50 for the users who liked them).",
)
@click.option(
    "--share",
    type=click.FloatRange(0.0, 1.0, min_open=True),
    default=0.1,
    show_default=True,
    help="--held-out-movies: the share of movies with 10+ likes to hide.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="--held-out-movies: the sample's seed.")
def evaluate(
    workdir: Path,
    as_json: bool,
    replay: bool,
    experiment: str | None,
    arms: str | None,
    k: int,
    max_events: int,
    held_out_movies: bool,
    share: float,
    seed: int,
) -> None:
    """The served pipeline (replayed offline) against tuned baselines on the test period: all, warm and cold
    users, bootstrap intervals, recall coverage, per-stage quality, the goals, and leave-last-out. With
    --replay: each experiment arm's hit rate over the test period's likes, each asked as of its moment. With
    --held-out-movies: the cold-start placement of new movies by their text against their genres alone."""
    if held_out_movies:
        from training.cold_movies import format_held_out
        from training.cold_movies import held_out_movies as run_held_out

        result = run_held_out(workdir, share=share, seed=seed)
        click.echo(json.dumps(result, indent=2) if as_json else format_held_out(result))
        return
    if replay:
        from training.replay_experiment import format_replay, replay_arms

        names = [name.strip() for name in arms.split(",") if name.strip()] if arms else None
        result = replay_arms(workdir, experiment, names, k=k, max_events=max_events)
        click.echo(json.dumps(result, indent=2) if as_json else format_replay(result))
        return
    if experiment or arms:
        raise click.UsageError("--experiment and --arms go with --replay")
    from training.evaluate import evaluate as run
    from training.evaluate import format_table

    metrics = run(workdir)
    click.echo(json.dumps(metrics, indent=2) if as_json else format_table(metrics))
    if not as_json:
        click.echo(
            f"written: {workdir / 'reports' / 'metrics.json'}, {workdir / 'reports' / 'evaluation.png'}"
        )


# ------------------------------------------------------------------------------------------------- events
@cli.group(cls=StarlingGroup)
def events() -> None:
    """The durable event log of feedback and catalog changes (WORKDIR/events)."""


@events.command("compact")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option(
    "--min-age", "min_age_s", type=float, default=60.0, show_default=True, help="Seconds a file must be old."
)
def events_compact(workdir: Path, min_age_s: float) -> None:
    """Fold each stream's older files into one segment (safe while services run)."""
    from starling.events import MOVIE_STREAM, RATING_STREAM, compact

    for stream in (RATING_STREAM, MOVIE_STREAM):
        segment = compact(workdir, stream, min_age_s=min_age_s)
        click.echo(f"{stream}: {segment.name if segment else 'nothing to compact'}")


@events.command("verify")
@click.argument("workdir", type=click.Path(path_type=Path))
def events_verify(workdir: Path) -> None:
    """Check every file of the log against its stream's schema; print counts (JSON); exit 2 on a problem."""
    from starling.events import MOVIE_STREAM, RATING_STREAM, verify

    reports = [verify(workdir, stream) for stream in (RATING_STREAM, MOVIE_STREAM)]
    click.echo(json.dumps(reports, indent=2))
    if any(report["problems"] for report in reports):
        raise StarlingError("the event log has problems (above)")


# --------------------------------------------------------------------------------------------------- auth
@cli.group(cls=StarlingGroup)
def auth() -> None:
    """API keys for writes (RecordFeedback, UpsertMovie, the web gateway's ratings)."""


@auth.command("create-key")
@click.argument("workdir", type=click.Path(path_type=Path))
@click.option("--name", required=True, help="A name for the key (shown in refusals and logs).")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    required=True,
    type=click.Choice(["feedback:write", "catalog:write", "read"]),
    help="What the key may do; repeat for several.",
)
def auth_create_key(workdir: Path, name: str, scopes: tuple[str, ...]) -> None:
    """Add a key to WORKDIR's keys file (or STARLING_API_KEYS_FILE) and print its token, once.

    The file keeps only the token's sha256; running services pick the key up without a restart. Clients
    send it as gRPC metadata `authorization: Bearer <token>` (or set STARLING_API_TOKEN for the CLI)."""
    from starling.auth import add_key, keys_file
    from starling.config import get_settings

    settings = get_settings().model_copy(update={"workdir": workdir})
    click.echo(add_key(keys_file(settings), name, list(scopes)))


# -------------------------------------------------------------------------------------------------- bench
@cli.group(cls=StarlingGroup)
def bench() -> None:
    """Benchmarks; each prints one JSON object."""


@bench.command("features")
@click.option(
    "--ratings", "n_ratings", type=int, default=100_000, show_default=True, help="Synthetic ratings."
)
@click.option("--source", default=None, help="Benchmark this source instead of synthetic data.")
@click.option("--engine", type=click.Choice(["polars", "spark"]), default="polars", show_default=True)
@click.option("--master", default="local[2]", show_default=True, help="Spark master (with --engine spark).")
@click.option("--json", "as_json", is_flag=True, default=True, help="Print JSON (the default).")
def bench_features(n_ratings: int, source: str | None, engine: str, master: str, as_json: bool) -> None:
    """Time `features build` on N synthetic ratings (or SOURCE) with an engine: ratings, seconds, peak_rss_mb,
    peak_tree_rss_mb (with Spark's JVM)."""
    from starling.features.bench import bench_features as run

    click.echo(json.dumps(run(n_ratings=n_ratings, source=source, engine=engine, master=master)))


@bench.command("events")
@click.option("--redis", "redis_url", default="redis://127.0.0.1:6379/0", show_default=True)
@click.option("--appends", type=click.IntRange(10), default=1000, show_default=True)
@click.option("--visibility-events", type=click.IntRange(1), default=200, show_default=True)
@click.option("--json", "as_json", is_flag=True, default=True, help="Print JSON (the default).")
def bench_events(redis_url: str, appends: int, visibility_events: int, as_json: bool) -> None:
    """The file event log against the Redis Streams bus: events/s appended (one and 100 per append) and the
    time until a follower in another process sees an event (p50/p95/p99/max ms)."""
    from starling.eventbus_bench import bench_events as run

    click.echo(json.dumps(run(redis_url, appends, visibility_events)))


@bench.command("train")
@click.option("--batch-size", type=int, default=4096, show_default=True)
@click.option("--json", "as_json", is_flag=True, default=True, help="Print JSON (the default).")
def bench_train(batch_size: int, as_json: bool) -> None:
    """Training throughput of embedding_mlp: samples_per_second on CPU (and CUDA when present)."""
    from training.bench import bench_train as run

    click.echo(json.dumps(run(batch_size=batch_size)))


# ------------------------------------------------------------------------------------------------ serving
@cli.command("up")
@click.argument("workdir", type=click.Path(path_type=Path), default=Path("work"))
@click.option("--timeout", "timeout_s", type=float, default=180.0, show_default=True, help="Seconds to wait.")
def up(workdir: Path, timeout_s: float) -> None:
    """Start every service as a local process, wait until all are healthy, print their addresses."""
    from starling.local import up as start

    for process in start(workdir, timeout_s=timeout_s):
        click.echo(
            f"{process.name:<11} 127.0.0.1:{process.port:<6} metrics :{process.metrics_port:<6} "
            f"pid {process.pid:<7} log {process.log}"
        )
    click.echo("Stop them with `starling down " + str(workdir) + "`.")


@cli.command("down")
@click.argument("workdir", type=click.Path(path_type=Path), required=False)
def down(workdir: Path | None) -> None:
    """Stop the services started by `starling up WORKDIR` (no WORKDIR: every stack this user started)."""
    from starling.local import down as stop
    from starling.local import running_stacks

    workdirs = [workdir] if workdir is not None else running_stacks()
    if not workdirs:
        click.echo("no services were running")
    for each in workdirs:
        stopped = stop(each)
        click.echo(
            f"{each}: stopped {', '.join(stopped)}" if stopped else f"{each}: no services were running"
        )


@cli.command("status")
@click.argument("workdir", type=click.Path(path_type=Path), required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(workdir: Path | None, as_json: bool) -> None:
    """The services of `starling up WORKDIR` (no WORKDIR: this user's running stack): pid, running,
    healthy, restarts by the supervisor, last exit."""
    from starling.local import running_stacks
    from starling.local import status as service_status

    workdir = workdir or next(iter(running_stacks()), Path("work"))
    rows = service_status(workdir)
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no services started from {workdir}")
        return
    click.echo(f"{'service':<11} {'pid':>7} {'running':>8} {'healthy':>8} {'restarts':>9} {'last exit':>10}")
    for row in rows:
        last_exit = "" if row["last_exit"] is None else str(row["last_exit"])
        click.echo(
            f"{row['name']:<11} {row['pid']:>7} {str(row['running']).lower():>8} "
            f"{str(row['healthy']).lower():>8} {row['restarts']:>9} {last_exit:>10}"
        )


def _target(target: str | None) -> str:
    from starling.config import get_settings

    return target or f"127.0.0.1:{get_settings().recommend_port}"


@cli.command("recommend")
@click.argument("user_id", type=int)
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--genre", "genres", multiple=True, help="Only these genres (repeatable).")
@click.option("--exclude", "exclude", type=int, multiple=True, help="Never these movie ids (repeatable).")
@click.option("--target", default=None, help="RecommendService address (default 127.0.0.1:50051).")
@click.option("--json", "as_json", is_flag=True, help="Print the RecommendResponse as JSON.")
def recommend(
    user_id: int,
    k: int,
    genres: tuple[str, ...],
    exclude: tuple[int, ...],
    target: str | None,
    as_json: bool,
) -> None:
    """Ask the recommend service for USER_ID's top K: titles, scores and recall channels."""
    from starling.client import as_json_text, format_items
    from starling.client import recommend as call

    response = call(_target(target), user_id, k, list(genres), list(exclude))
    if as_json:
        click.echo(as_json_text(response))
        return
    click.echo(f"user {user_id}  model {response.model_version or '-'}  request {response.request_id}")
    click.echo(format_items(response.items))
    for degradation in response.degraded:
        click.secho(f"degraded: {degradation.stage}: {degradation.reason}", fg="yellow")


@cli.command("similar")
@click.argument("movie_id", type=int)
@click.option("--k", type=int, default=10, show_default=True)
@click.option("--target", default=None, help="RecommendService address (default 127.0.0.1:50051).")
@click.option("--json", "as_json", is_flag=True, help="Print the SimilarItemsResponse as JSON.")
def similar(movie_id: int, k: int, target: str | None, as_json: bool) -> None:
    """Movies similar to MOVIE_ID."""
    from starling.client import as_json_text, format_items
    from starling.client import similar as call

    response = call(_target(target), movie_id, k)
    click.echo(as_json_text(response) if as_json else format_items(response.items))


@bench.command("serve")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option(
    "--duration", "duration_s", type=float, default=10.0, show_default=True, help="Seconds per level."
)
@click.option("--concurrency", default="1,8", show_default=True, help="Comma-separated concurrency levels.")
@click.option("--k", type=int, default=20, show_default=True)
@click.option("--target", default=None, help="RecommendService address (default 127.0.0.1:50051).")
@click.option("--json", "as_json", is_flag=True, default=True, help="Print JSON (the default).")
@click.option(
    "--compare",
    "baseline_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="An earlier `bench serve` JSON: adds each figure's ratio to it (`compared`).",
)
@click.option(
    "--profile",
    "profile_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Record py-spy flamegraphs (SVG) of every service at each level into this folder; the report "
    "names each service's heaviest functions.",
)
def bench_serve(
    workdir: Path,
    duration_s: float,
    concurrency: str,
    k: int,
    target: str | None,
    as_json: bool,
    baseline_path: Path | None,
    profile_dir: Path | None,
) -> None:
    """End-to-end and per-stage latency (p50/p95/p99 ms), requests/s and server CPU per request (per service
    process) of Recommend over gRPC; --compare prints the ratios to an earlier run; --profile records
    flamegraphs."""
    from services.bench import bench_serve as run

    baseline = None
    if baseline_path is not None:
        try:
            baseline = json.loads(baseline_path.read_text().strip().splitlines()[-1])
        except (ValueError, IndexError) as exc:
            raise StarlingError(
                f"--compare {baseline_path}: not a `bench serve` JSON report ({exc})"
            ) from exc

    levels = _concurrency_levels(concurrency)
    report = run(workdir, duration_s, levels, k=k, target=target, baseline=baseline, profile_dir=profile_dir)
    click.echo(json.dumps(report))


def _concurrency_levels(concurrency: str) -> list[int]:
    try:
        return [int(level) for level in concurrency.split(",") if level.strip()]
    except ValueError as exc:
        raise StarlingError(f"--concurrency {concurrency!r}: expected integers like 1,8") from exc


@bench.command("ranker")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option(
    "--concurrency", default="1,8,32", show_default=True, help="Comma-separated concurrency levels."
)
@click.option("--rounds", type=int, default=6, show_default=True, help="Bursts per level and process.")
@click.option("--burst", "burst_s", type=float, default=2.0, show_default=True, help="Seconds per burst.")
@click.option("--candidates", type=int, default=500, show_default=True, help="Movies per request.")
@click.option("--json", "as_json", is_flag=True, default=True, help="Print JSON (the default).")
def bench_ranker(
    workdir: Path, concurrency: str, rounds: int, burst_s: float, candidates: int, as_json: bool
) -> None:
    """The KServe ranker alone: every request scored alone vs batching under load vs the user-feature cache,
    three processes side by side with the load alternated in short bursts; req/s, p50/p99 and CPU per request,
    and the ratios to scoring alone."""
    from services.bench import bench_ranker as run

    levels = _concurrency_levels(concurrency)
    click.echo(json.dumps(run(workdir, levels, rounds=rounds, burst_s=burst_s, candidates=candidates)))


@bench.command("floor")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option("--concurrency", default="1,8", show_default=True, help="Comma-separated concurrency levels.")
@click.option(
    "--rounds", type=click.IntRange(1), default=4, show_default=True, help="Bursts per level and stack."
)
@click.option(
    "--burst", "burst_s", type=click.FloatRange(0, min_open=True), default=3.0, show_default=True,
    help="Seconds per burst.",
)  # fmt: skip
@click.option("--k", type=click.IntRange(1), default=20, show_default=True)
def bench_floor(workdir: Path, concurrency: str, rounds: int, burst_s: float, k: int) -> None:
    """The served path's hops with no work behind them (the same servers, interceptors and KServe ranker,
    answering messages captured from WORKDIR's running stack) against the real stack, the load alternated in
    bursts: req/s, p50/p99 and server CPU per request of each, and real over floor."""
    from services.bench_floor import bench_floor as run

    click.echo(json.dumps(run(workdir, _concurrency_levels(concurrency), rounds, burst_s, k)))


@bench.command("upsert")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option("--n", "n", type=click.IntRange(1), default=200, show_default=True, help="Upserts measured.")
@click.option(
    "--visible-sample",
    type=click.IntRange(0),
    default=20,
    show_default=True,
    help="Upserts whose time until recall places the movie is measured too.",
)
@click.option(
    "--rate",
    type=click.FloatRange(0),
    default=4.0,
    show_default=True,
    help="Upserts started per second (0: back to back).",
)
def bench_upsert(workdir: Path, n: int, visible_sample: int, rate: float) -> None:
    """UpsertMovie latency with the text encoder on the write path (p50/p95/p99 ms, JSON), on a private copy
    of WORKDIR and its own stack."""
    from services.bench import bench_upsert as run

    click.echo(json.dumps(run(workdir, n, visible_sample, rate)))


@bench.command("history")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option(
    "--ratings",
    type=click.IntRange(1),
    default=20_000,
    show_default=True,
    help="Distinct movies the heavy user rates (at most 80% of the catalog).",
)
@click.option(
    "--duration", "duration_s", type=click.FloatRange(0, min_open=True), default=10.0, show_default=True
)
@click.option("--k", type=click.IntRange(1), default=20, show_default=True)
def bench_history(workdir: Path, ratings: int, duration_s: float, k: int) -> None:
    """Recommend latency (p50/p99 ms, per stage) of a user with a long history against light users, at
    concurrency 1, alternated in one run, on a private copy of WORKDIR and its own stack."""
    from services.bench import bench_history as run

    click.echo(json.dumps(run(workdir, ratings, duration_s, k)))


# --------------------------------------------------------------------------------------------------- demo
@cli.command("demo")
@click.option("--workdir", type=click.Path(path_type=Path), default=Path("work"), show_default=True)
@click.option(
    "--dataset", default="ml-latest-small", show_default=True, help="Dataset name, path or synthetic[:N]."
)
def demo(workdir: Path, dataset: str) -> None:
    """Run the whole pipeline on a laptop and show what it produced."""
    from starling.demo import run_demo

    run_demo(workdir, dataset)


def _register_subcommands() -> None:
    """Command groups that live in their own modules."""
    from starling.experiment_cli import experiment
    from starling.simulate import simulate

    cli.add_command(experiment)
    cli.add_command(simulate)


_register_subcommands()


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
