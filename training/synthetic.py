"""Synthetic samples in the samples.parquet layout, with a learnable signal, for tests and the train bench.

A user likes a movie when the dot product of hidden user and movie factors plus a movie bias is high; the
movie's genres follow its factors, and the user's genre/liked-movie features follow the user's factors, so
both id embeddings and side features can learn the signal. Popularity (how often a movie is sampled) is
drawn independently, so the popularity baseline is weak and a working model clearly beats it.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl

from starling.features.spec import LIKED_MOVIE_FIELDS, MOVIE_GENRE_FIELDS, USER_GENRE_FIELDS, fit_feature_spec

SPLIT_SHARES = (0.8, 0.1, 0.1)


def synthetic_samples(
    n_rows: int = 20_000,
    n_users: int = 300,
    n_movies: int = 500,
    n_genres: int = 12,
    seed: int = 0,
    null_share: float = 0.05,
) -> pl.DataFrame:
    """``n_rows`` samples sorted by time and split 80/10/10 by time, columns as samples.parquet."""
    rng = np.random.default_rng(seed)
    factors = 4
    user_factors = rng.normal(size=(n_users, factors))
    movie_factors = rng.normal(size=(n_movies, factors))
    movie_bias = rng.normal(scale=0.5, size=n_movies)
    genre_names = np.array([f"genre{g:02d}" for g in range(n_genres)])
    genre_factors = rng.normal(size=(n_genres, factors))

    users = rng.integers(0, n_users, n_rows)
    popularity = rng.zipf(1.3, n_movies).astype(np.float64)
    movies = rng.choice(n_movies, size=n_rows, p=popularity / popularity.sum())
    affinity = (user_factors[users] * movie_factors[movies]).sum(1) + movie_bias[movies]
    label = (affinity + rng.normal(scale=0.5, size=n_rows) > 0).astype(np.int8)
    rating = np.where(
        label == 1, rng.choice([3.5, 4.0, 4.5, 5.0], n_rows), rng.choice([1.0, 2.0, 3.0], n_rows)
    )

    def top_genres(entity_factors: np.ndarray, count: int) -> np.ndarray:
        return np.argsort(-(entity_factors @ genre_factors.T), axis=1)[:, :count]

    movie_genres = genre_names[top_genres(movie_factors, 3)][movies]  # [n, 3]
    user_genres = genre_names[top_genres(user_factors, 5)][users]  # [n, 5]
    liked_pool = np.argsort(-(user_factors @ movie_factors.T), axis=1)[:, :20]  # each user's 20 best movies
    liked = liked_pool[users[:, None], rng.integers(0, 20, (n_rows, 5))] + 1  # movie ids start at 1

    def with_nulls(values: np.ndarray) -> pl.Series:
        series = pl.Series(values)
        return series.scatter(np.flatnonzero(rng.random(len(values)) < null_share), None)

    start = int(datetime(2020, 1, 1, tzinfo=UTC).timestamp() * 1_000_000)
    timestamps = start + np.sort(rng.integers(0, 10**13, n_rows))
    cut_train, cut_valid = int(n_rows * SPLIT_SHARES[0]), int(n_rows * sum(SPLIT_SHARES[:2]))
    split = np.where(
        np.arange(n_rows) < cut_train, "train", np.where(np.arange(n_rows) < cut_valid, "valid", "test")
    )

    columns: dict[str, pl.Series | np.ndarray] = {
        "user_id": (users + 1).astype(np.int64),
        "movie_id": (movies + 1).astype(np.int64),
        "event_timestamp": pl.Series(timestamps).cast(pl.Datetime("us", "UTC")),
        "rating": rating.astype(np.float32),
        "label": label,
        "movie_release_year": with_nulls(rng.integers(1930, 2020, n_movies)[movies].astype(np.int32)),
    }
    columns |= {name: with_nulls(movie_genres[:, i]) for i, name in enumerate(MOVIE_GENRE_FIELDS)}
    columns |= {
        "movie_rating_count": rng.poisson(popularity[movies] * 3).astype(np.int64),
        "movie_avg_rating": with_nulls(3.0 + movie_bias[movies] + rng.normal(scale=0.2, size=n_rows)),
        "movie_rating_stddev": with_nulls(rng.uniform(0.5, 1.5, n_rows)),
        "user_rating_count": rng.integers(0, 500, n_rows).astype(np.int64),
        "user_avg_rating": with_nulls(rng.uniform(2.5, 4.5, n_rows)),
        "user_rating_stddev": with_nulls(rng.uniform(0.5, 1.5, n_rows)),
        "user_avg_release_year": with_nulls(rng.uniform(1980, 2010, n_rows)),
        "user_release_year_stddev": with_nulls(rng.uniform(2, 20, n_rows)),
    }
    columns |= {name: with_nulls(user_genres[:, i]) for i, name in enumerate(USER_GENRE_FIELDS)}
    columns |= {name: with_nulls(liked[:, i].astype(np.int64)) for i, name in enumerate(LIKED_MOVIE_FIELDS)}
    columns["split"] = split
    return pl.DataFrame(columns)


def write_synthetic_features(workdir: Path, samples: pl.DataFrame | None = None) -> Path:
    """WORKDIR/features/{samples.parquet, feature_spec.json} as `features build` writes them, from
    ``samples`` (default: :func:`synthetic_samples`), the spec fitted on the train split. Returns WORKDIR."""
    samples = synthetic_samples() if samples is None else samples
    features_dir = Path(workdir) / "features"
    features_dir.mkdir(parents=True, exist_ok=True)
    samples.write_parquet(features_dir / "samples.parquet")
    fit_feature_spec(samples.filter(pl.col("split") == "train")).save(features_dir / "feature_spec.json")
    return Path(workdir)
