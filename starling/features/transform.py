"""The one transform from feature rows to model inputs, shared by training and serving.

Input rows are samples.parquet rows, or serving rows joining user_features and movie_features (no label, no
split). Output arrays (n = number of rows):

- ``user``, ``movie`` int64[n]: vocabulary indices (0 = unknown or null);
- ``user_genres`` int64[n, 5], ``movie_genres`` int64[n, 3]: genre vocabulary indices (0 = none/unknown);
- ``liked_movies`` int64[n, 5]: movie vocabulary indices of the user's liked movies (0 = none/unknown);
- ``numeric`` float32[n, F]: ``spec.numeric_fields`` (the 9 NUMERIC_FIELDS, then the recalled candidates'
  CANDIDATE_FEATURES when the spec carries their statistics) z-scored with the fitted mean/std (null -> 0.0);
- ``numeric_missing`` float32[n, F]: 1.0 where the field is null;
- ``numeric_buckets`` int64[n, F]: fitted-quantile bucket 1..spec.num_buckets (0 = null);
- ``label`` float32[n]: only when the rows have a ``label`` column.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from starling.errors import StarlingError
from starling.features.spec import (
    LIKED_MOVIE_FIELDS,
    MOVIE_GENRE_FIELDS,
    NUMERIC_FIELDS,
    USER_GENRE_FIELDS,
    FeatureSpec,
)

REQUIRED_COLUMNS: tuple[str, ...] = (
    "user_id",
    "movie_id",
    *USER_GENRE_FIELDS,
    *MOVIE_GENRE_FIELDS,
    *LIKED_MOVIE_FIELDS,
    *NUMERIC_FIELDS,
)


NULL_ID = np.iinfo(np.int64).min  # id columns: null marker (ids are >= 0)
ID_COLUMNS: tuple[str, ...] = ("user_id", "movie_id", *LIKED_MOVIE_FIELDS)
GENRE_COLUMNS: tuple[str, ...] = (*USER_GENRE_FIELDS, *MOVIE_GENRE_FIELDS)

FeatureColumns = dict[str, np.ndarray]
"""Feature rows as plain arrays, the transform's real input: id columns int64 with NULL_ID for null, genre
columns str with "" for null, numeric columns float64 with NaN for null, ``label`` (optional) float."""


def columns_from_frame(df: pl.DataFrame, numeric_fields: tuple[str, ...] = NUMERIC_FIELDS) -> FeatureColumns:
    """Convert polars rows into :data:`FeatureColumns` with one query (no per-row Python)."""
    missing = [name for name in (*REQUIRED_COLUMNS, *numeric_fields) if name not in df.columns]
    if missing:
        raise StarlingError(f"transform: rows lack feature columns {missing}")
    exprs = [
        *(pl.col(name).cast(pl.Int64).fill_null(NULL_ID) for name in ID_COLUMNS),
        *(pl.col(name).cast(pl.String).fill_null("") for name in GENRE_COLUMNS),
        *(pl.col(name).cast(pl.Float64).fill_null(np.nan) for name in numeric_fields),
    ]
    if "label" in df.columns:
        exprs.append(pl.col("label").cast(pl.Float32))
    converted = df.select(exprs)
    return {name: converted[name].to_numpy() for name in converted.columns}


def _vocab_indices(values: np.ndarray, lookup: tuple[np.ndarray, np.ndarray], null: object) -> np.ndarray:
    """Vocabulary index + 1 of each value (any shape); 0 where the value is ``null`` or not in the vocabulary.

    ``lookup`` is (sorted vocabulary values, their vocabulary positions), from :meth:`FeatureSpec.lookup`.
    """
    sorted_values, positions = lookup
    if sorted_values.size == 0:
        return np.zeros(values.shape, dtype=np.int64)
    clipped = np.minimum(np.searchsorted(sorted_values, values), sorted_values.size - 1)
    found = (sorted_values[clipped] == values) & (values != null)
    return np.where(found, positions[clipped] + 1, 0).astype(np.int64)


def _stack(columns: FeatureColumns, names: tuple[str, ...], dtype: type) -> np.ndarray:
    return np.stack([np.asarray(columns[name], dtype=dtype) for name in names], axis=1)


def encode_numeric(
    values: np.ndarray, spec: FeatureSpec, first: int = 0, buckets: bool = True
) -> dict[str, np.ndarray]:
    """``numeric`` / ``numeric_missing`` / ``numeric_buckets`` of float64 ``values`` [n, m] (NaN = null), whose
    columns are ``spec.numeric_fields[first:first + m]``; ``buckets=False`` leaves ``numeric_buckets`` out (a
    model that does not read them)."""
    means, stds, boundaries = spec.numeric_arrays()
    columns = slice(first, first + values.shape[1])
    absent = np.isnan(values)
    out = {
        "numeric": np.where(absent, 0.0, (values - means[columns]) / stds[columns]).astype(np.float32),
        "numeric_missing": absent.astype(np.float32),
    }
    if buckets:
        bucket = np.empty(values.shape, dtype=np.int64)
        for j, bounds in enumerate(boundaries[columns]):  # one searchsorted per field, vectorized over rows
            bucket[:, j] = np.searchsorted(bounds, values[:, j], side="right") + 1
        out["numeric_buckets"] = np.where(absent, 0, bucket)
    return out


def transform_columns(
    columns: FeatureColumns, spec: FeatureSpec, buckets: bool = True
) -> dict[str, np.ndarray]:
    """Encode :data:`FeatureColumns` with a fitted spec (see the module docstring for the output arrays;
    ``buckets``: see :func:`encode_numeric`)."""
    missing = [name for name in (*REQUIRED_COLUMNS, *spec.numeric_fields) if name not in columns]
    if missing:
        raise StarlingError(f"transform: rows lack feature columns {missing} (spec version {spec.version})")
    users, movies, genres = spec.lookup("user"), spec.lookup("movie"), spec.lookup("genre")
    out: dict[str, np.ndarray] = {
        "user": _vocab_indices(np.asarray(columns["user_id"], dtype=np.int64), users, NULL_ID),
        "movie": _vocab_indices(np.asarray(columns["movie_id"], dtype=np.int64), movies, NULL_ID),
        "user_genres": _vocab_indices(_stack(columns, USER_GENRE_FIELDS, str), genres, ""),
        "movie_genres": _vocab_indices(_stack(columns, MOVIE_GENRE_FIELDS, str), genres, ""),
        "liked_movies": _vocab_indices(_stack(columns, LIKED_MOVIE_FIELDS, np.int64), movies, NULL_ID),
    }
    out.update(encode_numeric(_stack(columns, spec.numeric_fields, np.float64), spec, buckets=buckets))
    if "label" in columns:
        label = np.asarray(columns["label"], dtype=np.float32)
        bad = np.flatnonzero(~np.isin(label, (0.0, 1.0)))
        if bad.size:
            what = "null" if np.isnan(label[bad[0]]) else f"{label[bad[0]]!r}, not 0 or 1"
            raise StarlingError(f"transform: row {bad[0]}: label is {what} ({bad.size} such rows)")
        out["label"] = label
    return out


def transform(df: pl.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Encode polars feature rows with a fitted spec: :func:`columns_from_frame` then :func:`transform_columns`."""
    return transform_columns(columns_from_frame(df, spec.numeric_fields), spec)
