"""`starling demo` / `make demo`: the whole pipeline on a laptop.

Offline steps run only when their outputs are missing (delete WORKDIR to start over); then the services
start as local processes, a sample user's recommendations and a similar-movies list are printed, and the
services are left running (`starling down WORKDIR` stops them).
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from starling.errors import StarlingError

SYNTHETIC_FALLBACK = "synthetic:200000"


def _step(title: str) -> None:
    click.secho(f"\n==> {title}", bold=True)


def _ingest(workdir: Path, dataset: str) -> None:
    from starling.data.ingest import ingest

    if (workdir / "ratings.parquet").is_file() and (workdir / "movies.parquet").is_file():
        click.echo(f"{workdir}/ratings.parquet exists; skipping ingestion")
        return
    try:
        report = ingest(dataset, workdir, on_bad="skip")  # dropped rows are reported in the summary
    except StarlingError as exc:
        if dataset.startswith("synthetic") or Path(dataset).exists():
            raise
        click.secho(
            f"NOTICE: dataset {dataset!r} is not available ({exc}).\n"
            f"        Falling back to generated MovieLens-shaped data ({SYNTHETIC_FALLBACK}).",
            fg="yellow",
        )
        report = ingest(SYNTHETIC_FALLBACK, workdir)
    click.echo(report.summary())


def _print_online_features(workdir: Path) -> tuple[int, int]:
    import polars as pl

    from starling.featurestore import read_online_features

    users = pl.read_parquet(workdir / "features" / "user_features.parquet", columns=["user_id"])
    movies = pl.read_parquet(
        workdir / "features" / "movie_features.parquet", columns=["movie_id", "movie_rating_count"]
    )
    sample_user = int(users["user_id"].min())
    sample_movie = int(movies.sort("movie_rating_count", descending=True, nulls_last=True)["movie_id"][0])
    online = read_online_features(workdir, user_ids=[sample_user], movie_ids=[sample_movie])
    click.echo(f"user {sample_user}:\n{json.dumps(online['users'][0], indent=2, default=str)}")
    click.echo(f"movie {sample_movie}:\n{json.dumps(online['movies'][0], indent=2, default=str)}")
    return sample_user, sample_movie


def run_demo(workdir: Path, dataset: str) -> None:
    from starling.client import format_items, recommend, similar
    from starling.config import get_settings
    from starling.features.build import SplitConfig, build_features
    from starling.featurestore import materialize
    from starling.local import down, read_state, up
    from training.evaluate import evaluate, format_table
    from training.train import train_command

    workdir.mkdir(parents=True, exist_ok=True)
    _step(f"Ingest {dataset} into {workdir}")
    _ingest(workdir, dataset)

    _step("Build point-in-time features")
    if (workdir / "features" / "feature_spec.json").is_file():
        click.echo("features exist; skipping")
    else:
        click.echo(build_features(workdir, SplitConfig()).summary())

    _step("Materialize features into the Feast online store")
    click.echo(materialize(workdir).summary())

    _step("Read back from the online store")
    sample_user, sample_movie = _print_online_features(workdir)

    _step("Train every ranking model on recalled candidates")
    current = workdir / "models" / "current"
    manifest = current / "manifest.json"
    if manifest.is_file() and json.loads(manifest.read_text()).get("recall_state"):
        click.echo(f"a published model exists ({current.resolve().name}); skipping")
    else:  # none yet, or one from before rank-for-top-N (no recall state)
        click.echo(train_command(workdir, "all").summary())

    _step("Evaluate the served pipeline against tuned baselines (test period)")
    metrics_path = workdir / "reports" / "metrics.json"
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    if metrics.get("artifact", {}).get("version") != current.resolve().name:
        metrics = evaluate(workdir)
    click.echo(format_table(metrics))
    written = [path for path in (metrics_path, workdir / "reports" / "evaluation.png") if path.is_file()]
    click.echo(f"written: {', '.join(str(path) for path in written)}")

    _step("Start the services")
    if read_state(workdir):
        down(workdir)
    for process in up(workdir):
        click.echo(
            f"{process.name:<11} 127.0.0.1:{process.port:<6} metrics :{process.metrics_port:<6} log {process.log}"
        )
    target = f"127.0.0.1:{get_settings().recommend_port}"

    _step(f"Recommendations for user {sample_user} (starling recommend {sample_user} --k 10)")
    response = recommend(target, sample_user, 10)
    click.echo(f"model {response.model_version}  request {response.request_id}")
    click.echo(format_items(response.items))
    for degradation in response.degraded:
        click.secho(f"degraded: {degradation.stage}: {degradation.reason}", fg="yellow")

    _step(f"Movies similar to movie {sample_movie} (starling similar {sample_movie} --k 5)")
    click.echo(format_items(similar(target, sample_movie, 5).items))

    click.secho(
        f"\nThe services keep running: RecommendService at {target}.\n"
        f"Try `.venv/bin/starling recommend {sample_user} --k 20 --genre Comedy`; "
        f"stop them with `.venv/bin/starling down {workdir}`.",
        fg="green",
    )
    click.echo(f"Open http://127.0.0.1:{get_settings().web_port}/users/{sample_user}")
