"""Serving-side use of the one transform (starling.features.transform).

A request scores one user against N recalled movies. Movie features change only when features are
materialized, so the movie half of every row is encoded once per cache refresh; per request only the user's
single row (from plain values, no DataFrame) and the candidates' features from recall are encoded, then the
parts are combined column by column. Because the transform encodes each column independently, the result is
identical to transforming the fully joined rows (tests/test_ranker.py checks). Training encodes its candidate
sets with this same encoder (training/ltr.py), so training and serving share one encoding path.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import polars as pl

from services.common.id_index import IdIndex
from starling.features.spec import (
    CANDIDATE_FEATURES,
    MOVIE_FEATURE_COLUMNS,
    NUMERIC_FIELDS,
    USER_FEATURE_COLUMNS,
    FeatureSpec,
)
from starling.features.transform import (
    GENRE_COLUMNS,
    ID_COLUMNS,
    NULL_ID,
    FeatureColumns,
    columns_from_frame,
    encode_numeric,
    transform_columns,
)
from training.models.base import FEATURE_KEYS

USER_KEYS = ("user", "user_genres", "liked_movies")
MOVIE_KEYS = ("movie", "movie_genres")
MIXED_KEYS = ("numeric", "numeric_missing", "numeric_buckets")
MOVIE_NUMERIC_COLUMNS = np.array([name.startswith("movie_") for name in NUMERIC_FIELDS])


def _null_of(column: str) -> object:
    if column in ID_COLUMNS:
        return NULL_ID
    return "" if column in GENRE_COLUMNS else np.nan


def user_columns(user_id: int, features: Mapping[str, object]) -> FeatureColumns:
    """One user's row as transform input, from plain values (e.g. a Feast online read); None = null.

    The movie half and the candidate features are null: :meth:`ServingEncoder.encode` takes movie columns
    from its own cache and candidate features from the request.
    """
    columns: FeatureColumns = {"user_id": np.array([user_id], dtype=np.int64)}
    for column in (*USER_FEATURE_COLUMNS, "movie_id", *MOVIE_FEATURE_COLUMNS):  # ~20 columns, one row
        value = features.get(column)
        columns[column] = np.array([_null_of(column) if value is None else value])
    for column in CANDIDATE_FEATURES:
        columns[column] = np.array([np.nan])
    return columns


def blank_user(user_id: int) -> FeatureColumns:
    """A user with every feature null (an unknown user: the transform maps it to defaults)."""
    return user_columns(user_id, {})


class ServingEncoder:
    def __init__(self, spec: FeatureSpec, movie_features: pl.DataFrame) -> None:
        """``movie_features``: movie_id plus MOVIE_FEATURE_COLUMNS for every catalog movie."""
        movies = movie_features.select("movie_id", *MOVIE_FEATURE_COLUMNS).sort("movie_id")
        self.spec = spec
        self.movie_ids = movies["movie_id"].to_numpy().astype(np.int64)
        self.id_index = IdIndex(self.movie_ids)
        # A last all-null row stands for any movie missing from the cache.
        nulls = [pl.lit(None).alias(column) for column in ("user_id", *USER_FEATURE_COLUMNS)]
        nulls += [pl.lit(None, dtype=pl.Float64).alias(column) for column in spec.candidate_stats]
        movies = pl.concat(
            [movies, pl.DataFrame({"movie_id": [None]}, schema={"movie_id": pl.Int64})],
            how="diagonal_relaxed",
        ).with_columns(nulls)
        self.movie_encoded = transform_columns(columns_from_frame(movies, spec.numeric_fields), spec)

    def movie_rows(self, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Encoded-row index for each movie id (the null row for unknown ids) and a found mask."""
        pos = self.id_index.positions(movie_ids)
        found = pos >= 0
        return np.where(found, pos, len(self.movie_ids)), found

    def encode(
        self,
        user: FeatureColumns,
        movie_ids: np.ndarray,
        candidate_features: np.ndarray | None = None,
        keys: Collection[str] = FEATURE_KEYS,
    ) -> dict[str, np.ndarray]:
        """Encoded batch for one user (see :func:`user_columns`) and N movies.

        ``candidate_features`` [N, len(CANDIDATE_FEATURES)] (recall's, NaN = missing) is required when the
        spec carries candidate statistics (a ranker trained on recalled candidates) and ignored otherwise.
        ``keys``: the batch keys to encode (the model's, ``training.models.base.model_inputs``); the others
        are not computed.
        """
        n = len(movie_ids)
        buckets = "numeric_buckets" in keys
        user_encoded = transform_columns(user, self.spec, buckets=buckets)
        rows, _ = self.movie_rows(np.asarray(movie_ids, dtype=np.int64))
        out = {key: np.repeat(user_encoded[key], n, axis=0) for key in USER_KEYS if key in keys}
        out.update({key: self.movie_encoded[key][rows] for key in MOVIE_KEYS if key in keys})
        mixed = [key for key in MIXED_KEYS if key in keys]
        n_entity = len(NUMERIC_FIELDS)
        for key in mixed:
            out[key] = np.where(
                MOVIE_NUMERIC_COLUMNS,
                self.movie_encoded[key][rows, :n_entity],
                user_encoded[key][:, :n_entity],
            )
        if self.spec.candidate_stats:
            if candidate_features is None or candidate_features.shape != (n, len(CANDIDATE_FEATURES)):
                got = None if candidate_features is None else list(candidate_features.shape)
                raise ValueError(
                    f"candidate_features must be [{n}, {len(CANDIDATE_FEATURES)}] (one row per movie, "
                    f"columns {', '.join(CANDIDATE_FEATURES)}), got {got}"
                )
            encoded = encode_numeric(
                candidate_features.astype(np.float64), self.spec, first=n_entity, buckets=buckets
            )
            for key in mixed:
                out[key] = np.concatenate([out[key], encoded[key]], axis=1)
        return out
