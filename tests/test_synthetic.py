"""The synthetic MovieLens generator: exact size, canonical output, determinism and a learnable planted signal."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow.parquet as pq
import pytest

from starling.data.canonical import MOVIES_SCHEMA, RATINGS_SCHEMA
from starling.data.ingest import ingest
from starling.data.synthetic import GENRES, generate_synthetic, parse_synthetic_source, world_size
from starling.errors import StarlingError


@pytest.fixture(scope="module")
def synthetic_50k(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("synthetic_50k")
    ingest("synthetic:50000", out)
    return out


def test_source_names() -> None:
    assert parse_synthetic_source("synthetic") == 100_000
    assert parse_synthetic_source("synthetic:2_500") == 2_500
    assert parse_synthetic_source("ml-1m") is None
    for bad in ("synthetic:", "synthetic:-3", "synthetic:0", "synthetic:lots"):
        with pytest.raises(StarlingError, match="synthetic"):
            parse_synthetic_source(bad)


def test_world_size_follows_ml_25m_proportions() -> None:
    assert world_size(25_000_000) == (162_000, 59_000)
    assert world_size(10) == (50, 100)
    users, movies = world_size(100_000)
    assert 600 <= users <= 700 and 3_000 <= movies <= 4_000  # ml-latest-small: 610 users, 9.7k movies


def test_output_is_canonical_and_exactly_n(synthetic_50k: Path) -> None:
    assert pq.read_schema(synthetic_50k / "ratings.parquet").remove_metadata() == RATINGS_SCHEMA
    assert pq.read_schema(synthetic_50k / "movies.parquet").remove_metadata() == MOVIES_SCHEMA
    ratings = pl.read_parquet(synthetic_50k / "ratings.parquet")
    movies = pl.read_parquet(synthetic_50k / "movies.parquet")
    n_users, n_movies = world_size(50_000)

    assert ratings.height == 50_000
    assert ratings.equals(ratings.sort("event_timestamp", "user_id", "movie_id"))
    assert ratings.select(pl.struct("user_id", "movie_id").is_duplicated().any()).item() is False
    assert set(ratings["rating"].unique().to_list()) <= {x / 2 for x in range(1, 11)}
    assert 3.2 < ratings["rating"].mean() < 3.8  # type: ignore[operator]
    assert ratings["user_id"].n_unique() == n_users
    assert ratings.group_by("user_id").len()["len"].min() >= 20  # type: ignore[operator]
    assert movies.height == n_movies and set(ratings["movie_id"]) <= set(movies["movie_id"])
    assert movies["genres"].list.len().is_between(1, 3).all()
    assert set(movies["genres"].explode().unique()) <= set(GENRES)
    assert movies["title"].str.contains(r"^Synthetic Movie \d+$").all()
    assert movies["release_year"].is_between(1915, 2018).all()
    # popularity is Zipf-like: the top 10% of movies get far more than 10% of the ratings
    counts = ratings.group_by("movie_id").len()["len"].sort(descending=True).to_numpy()
    assert counts[: n_movies // 10].sum() > 0.3 * ratings.height


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    generate_synthetic(3_000, tmp_path / "a", seed=7)
    generate_synthetic(3_000, tmp_path / "b", seed=7)
    generate_synthetic(3_000, tmp_path / "c", seed=8)
    for table in ("ratings", "movies"):
        a, b = (pl.read_parquet(tmp_path / run / f"{table}.parquet") for run in ("a", "b"))
        assert a.equals(b), table
    assert not pl.read_parquet(tmp_path / "a" / "ratings.parquet").equals(
        pl.read_parquet(tmp_path / "c" / "ratings.parquet")
    )


def test_planted_taste_is_learnable(synthetic_50k: Path) -> None:
    """A user's favourite genre, learnt from the first half of their ratings, predicts the second half."""
    ratings = pl.read_parquet(synthetic_50k / "ratings.parquet")
    movies = pl.read_parquet(synthetic_50k / "movies.parquet").select("movie_id", "genres")
    ranked = ratings.with_columns(
        (pl.col("event_timestamp").rank("ordinal").over("user_id") / pl.len().over("user_id")).alias(
            "position"
        )
    ).join(movies, on="movie_id")
    favourite = (
        ranked.filter(pl.col("position") <= 0.5)
        .explode("genres")
        .group_by("user_id", "genres")
        .agg(pl.col("rating").mean().alias("mean"), pl.len().alias("n"))
        .filter(pl.col("n") >= 5)
        .sort("mean", "genres", descending=[True, False])
        .group_by("user_id", maintain_order=True)
        .first()
        .select("user_id", pl.col("genres").alias("favourite"))
    )
    later = (
        ranked.filter(pl.col("position") > 0.5)
        .join(favourite, on="user_id")
        .with_columns(pl.col("genres").list.contains(pl.col("favourite")).alias("matches"))
    )
    by_match = dict(later.group_by("matches").agg(pl.col("rating").mean()).iter_rows())
    assert by_match[True] - by_match[False] > 0.2, by_match
    users_with_higher = (
        later.group_by("user_id", "matches")
        .agg(pl.col("rating").mean())
        .pivot("matches", index="user_id", values="rating")
        .drop_nulls()
        .select((pl.col("true") > pl.col("false")).mean())
        .item()
    )
    assert users_with_higher > 0.6
