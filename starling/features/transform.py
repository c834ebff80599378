"""The one transform from feature rows to model inputs, shared by training and serving.

Input rows are samples.parquet rows, or serving rows joining user_features and movie_features (no label, no
split). Output arrays (n = number of rows):

- ``user``, ``movie`` int64[n]: vocabulary indices (0 = unknown or null);
- ``user_genres`` int64[n, 5], ``movie_genres`` int64[n, 3]: genre vocabulary indices (0 = none/unknown);
- ``liked_movies`` int64[n, 5]: movie vocabulary indices of the user's liked movies (0 = none/unknown);
- ``numeric`` float32[n, 9]: NUMERIC_FIELDS z-scored with the train mean/std (null -> 0.0);
- ``numeric_missing`` float32[n, 9]: 1.0 where the field is null;
- ``numeric_buckets`` int64[n, 9]: train-quantile bucket 1..spec.num_buckets (0 = null);
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


def _int_vocab_indices(values: pl.Series, vocabulary: np.ndarray) -> np.ndarray:
    """Index in ``vocabulary`` (sorted int64) + 1 for each value; 0 where null or not in the vocabulary."""
    raw = values.cast(pl.Int64).fill_null(np.iinfo(np.int64).min).to_numpy()
    if vocabulary.size == 0:
        return np.zeros(len(raw), dtype=np.int64)
    position = np.searchsorted(vocabulary, raw)
    clipped = np.minimum(position, vocabulary.size - 1)
    found = (vocabulary[clipped] == raw) & values.is_not_null().to_numpy()
    return np.where(found, clipped + 1, 0).astype(np.int64)


def _genre_indices(df: pl.DataFrame, columns: tuple[str, ...], genres: list[str]) -> np.ndarray:
    index_of = {name: index for index, name in enumerate(genres, start=1)}
    encoded = df.select(
        pl.col(name).cast(pl.String).replace_strict(index_of, default=0, return_dtype=pl.Int64).fill_null(0)
        for name in columns
    )
    return encoded.to_numpy().astype(np.int64).reshape(df.height, len(columns))


def transform(df: pl.DataFrame, spec: FeatureSpec) -> dict[str, np.ndarray]:
    """Encode feature rows with a fitted spec (see the module docstring for the output arrays)."""
    missing = [name for name in REQUIRED_COLUMNS if name not in df.columns]
    if missing:
        raise StarlingError(f"transform: rows lack feature columns {missing} (spec version {spec.version})")
    user_vocab = np.asarray(spec.vocabularies["user"], dtype=np.int64)
    movie_vocab = np.asarray(spec.vocabularies["movie"], dtype=np.int64)
    out: dict[str, np.ndarray] = {
        "user": _int_vocab_indices(df["user_id"], user_vocab),
        "movie": _int_vocab_indices(df["movie_id"], movie_vocab),
        "user_genres": _genre_indices(df, USER_GENRE_FIELDS, spec.vocabularies["genre"]),
        "movie_genres": _genre_indices(df, MOVIE_GENRE_FIELDS, spec.vocabularies["genre"]),
        "liked_movies": np.stack(
            [_int_vocab_indices(df[name], movie_vocab) for name in LIKED_MOVIE_FIELDS], axis=1
        ).reshape(df.height, len(LIKED_MOVIE_FIELDS)),
    }
    numeric = np.zeros((df.height, len(NUMERIC_FIELDS)), dtype=np.float32)
    missing_flags = np.zeros((df.height, len(NUMERIC_FIELDS)), dtype=np.float32)
    buckets = np.zeros((df.height, len(NUMERIC_FIELDS)), dtype=np.int64)
    for j, name in enumerate(NUMERIC_FIELDS):
        values = df[name].cast(pl.Float64).fill_null(np.nan).to_numpy()
        absent = np.isnan(values)
        stats = spec.numeric_stats[name]
        std = stats["std"] if np.isfinite(stats["std"]) and stats["std"] > 0 else 1.0
        numeric[:, j] = np.where(absent, 0.0, (values - stats["mean"]) / std)
        missing_flags[:, j] = absent
        bucket = np.searchsorted(np.asarray(stats["quantiles"], dtype=np.float64), values, side="right") + 1
        buckets[:, j] = np.where(absent, 0, bucket)
    out["numeric"] = numeric
    out["numeric_missing"] = missing_flags
    out["numeric_buckets"] = buckets
    if "label" in df.columns:
        null_labels = df["label"].is_null()
        if null_labels.any():
            row = int(null_labels.arg_true()[0])
            raise StarlingError(f"transform: row {row}: label is null ({int(null_labels.sum())} null labels)")
        out["label"] = df["label"].cast(pl.Float32).to_numpy()
    return out
