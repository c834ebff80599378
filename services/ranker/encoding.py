"""Serving-side use of the one transform (starling.features.transform).

A request scores one user against N movies. Movie features change only when features are materialized,
so the movie half of every row is encoded once per cache refresh; per request only the user's single row
is encoded, then both halves are combined column by column. Because ``transform`` encodes each column
independently, the result is identical to transforming the fully joined rows (tests/test_ranker.py checks).
"""

from __future__ import annotations

import numpy as np
import polars as pl

from starling.features.spec import (
    LIKED_MOVIE_FIELDS,
    MOVIE_FEATURE_COLUMNS,
    MOVIE_GENRE_FIELDS,
    NUMERIC_FIELDS,
    USER_FEATURE_COLUMNS,
    USER_GENRE_FIELDS,
    FeatureSpec,
)
from starling.features.transform import transform

USER_KEYS = ("user", "user_genres", "liked_movies")
MOVIE_KEYS = ("movie", "movie_genres")
MIXED_KEYS = ("numeric", "numeric_missing", "numeric_buckets")
MOVIE_NUMERIC_COLUMNS = np.array([name.startswith("movie_") for name in NUMERIC_FIELDS])


def _dtype(column: str) -> pl.DataType:
    if column in USER_GENRE_FIELDS or column in MOVIE_GENRE_FIELDS:
        return pl.String()
    if column in LIKED_MOVIE_FIELDS or column.endswith("_count") or column.endswith("_id"):
        return pl.Int64()
    return pl.Float64()


def _with_nulls(frame: pl.DataFrame, columns: tuple[str, ...]) -> pl.DataFrame:
    return frame.with_columns([pl.lit(None, dtype=_dtype(c)).alias(c) for c in columns])


def blank_user(user_id: int) -> pl.DataFrame:
    """A user row with every feature null (an unknown user: the transform maps it to defaults)."""
    return _with_nulls(
        pl.DataFrame({"user_id": [user_id]}, schema={"user_id": pl.Int64}), USER_FEATURE_COLUMNS
    )


class ServingEncoder:
    def __init__(self, spec: FeatureSpec, movie_features: pl.DataFrame) -> None:
        """``movie_features``: movie_id plus MOVIE_FEATURE_COLUMNS for every catalog movie."""
        movies = movie_features.select("movie_id", *MOVIE_FEATURE_COLUMNS).sort("movie_id")
        self.spec = spec
        self.movie_ids = movies["movie_id"].to_numpy().astype(np.int64)
        # A last all-null row stands for any movie missing from the cache.
        unknown = _with_nulls(
            pl.DataFrame({"movie_id": [None]}, schema={"movie_id": pl.Int64}), MOVIE_FEATURE_COLUMNS
        )
        movies = pl.concat([movies, unknown.select(movies.columns)], how="vertical_relaxed")
        self.movie_encoded = transform(_with_nulls(movies, ("user_id", *USER_FEATURE_COLUMNS)), spec)

    def movie_rows(self, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoded-row index for each movie id (the null row for unknown ids) and a found mask."""
        pos = np.searchsorted(self.movie_ids, movie_ids)
        pos = np.minimum(pos, max(len(self.movie_ids) - 1, 0))
        found = (self.movie_ids[pos] == movie_ids) if len(self.movie_ids) else np.zeros(len(movie_ids), bool)
        return np.where(found, pos, len(self.movie_ids)), found

    def encode(self, user_row: pl.DataFrame, movie_ids: np.ndarray) -> dict[str, np.ndarray]:
        """Encoded batch for one user (a one-row frame: user_id + USER_FEATURE_COLUMNS) and N movies."""
        n = len(movie_ids)
        user = transform(
            _with_nulls(
                user_row.select("user_id", *USER_FEATURE_COLUMNS), ("movie_id", *MOVIE_FEATURE_COLUMNS)
            ),
            self.spec,
        )
        rows, _ = self.movie_rows(np.asarray(movie_ids, dtype=np.int64))
        out = {key: np.repeat(user[key], n, axis=0) for key in USER_KEYS}
        out.update({key: self.movie_encoded[key][rows] for key in MOVIE_KEYS})
        for key in MIXED_KEYS:
            out[key] = np.where(MOVIE_NUMERIC_COLUMNS, self.movie_encoded[key][rows], user[key])
        return out
