"""`starling demo` / `make demo`: the whole offline pipeline on a laptop, skipping steps whose outputs exist."""

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
        click.echo(f"{workdir}/ratings.parquet exists; skipping ingestion (delete {workdir} to start over)")
        return
    try:
        report = ingest(dataset, workdir, on_bad="skip")  # dropped rows are reported below
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


def run_demo(workdir: Path, dataset: str) -> None:
    from starling.features.build import SplitConfig, build_features
    from starling.featurestore import materialize, read_online_features

    workdir.mkdir(parents=True, exist_ok=True)
    _step(f"Ingest {dataset} into {workdir}")
    _ingest(workdir, dataset)

    _step("Build point-in-time features")
    if (workdir / "features" / "feature_spec.json").is_file():
        click.echo("features exist; skipping (delete WORKDIR/features to rebuild)")
    else:
        click.echo(build_features(workdir, SplitConfig()).summary())

    _step("Materialize features into the Feast online store")
    click.echo(materialize(workdir).summary())

    _step("Read back from the online store")
    import polars as pl

    users = pl.read_parquet(workdir / "features" / "user_features.parquet", columns=["user_id"])
    movies = pl.read_parquet(
        workdir / "features" / "movie_features.parquet", columns=["movie_id", "movie_rating_count"]
    )
    sample_user = int(users["user_id"].min())
    sample_movie = int(movies.sort("movie_rating_count", descending=True)["movie_id"][0])
    online = read_online_features(workdir, user_ids=[sample_user], movie_ids=[sample_movie])
    click.echo(f"user {sample_user}:\n{json.dumps(online['users'][0], indent=2, default=str)}")
    click.echo(f"movie {sample_movie}:\n{json.dumps(online['movies'][0], indent=2, default=str)}")
