"""Item embeddings for recall: item2vec and a two-tower model, trained on the train split of a workdir.

:func:`train_item_embeddings` returns one vector per catalog movie (every movie of
``WORKDIR/features/movie_features.parquet``) so recall lookups never miss; see each method's module for how
cold movies are handled. User vectors are means of liked-movie vectors (:mod:`.user_embedding`).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch

from starling.errors import StarlingError
from training.embeddings.item2vec import Item2VecConfig, train_item2vec
from training.embeddings.two_tower import TwoTowerConfig, item_tower_vectors, train_two_tower
from training.embeddings.user_embedding import (
    update_mean,
    user_embedding_from_liked,
    user_embeddings_from_liked,
)

METHODS = ("item2vec", "two_tower")
YEAR_FIELD = "movie_release_year"

__all__ = [
    "METHODS",
    "encode_movie_rows",
    "train_item_embeddings",
    "update_mean",
    "user_embedding_from_liked",
    "user_embeddings_from_liked",
]


def _features_file(workdir: Path, name: str) -> Path:
    path = Path(workdir) / "features" / name
    if not path.is_file():
        raise StarlingError(f"{path} not found: run `starling features build {workdir}` first")
    return path


def with_null_columns(frame: pl.DataFrame, schema: pl.Schema) -> pl.DataFrame:
    """Add every column of ``schema`` missing from ``frame`` as nulls of its dtype (for the one transform)."""
    missing = [
        pl.lit(None, dtype=dtype).alias(name) for name, dtype in schema.items() if name not in frame.columns
    ]
    return frame.with_columns(missing) if missing else frame


def year_bucket_column(encoded: dict[str, np.ndarray]) -> np.ndarray:
    """The release-year quantile bucket (0 = unknown) out of the transform's numeric buckets."""
    from starling.features.spec import NUMERIC_FIELDS

    return encoded["numeric_buckets"][:, list(NUMERIC_FIELDS).index(YEAR_FIELD)]


def encode_movie_rows(
    movie_features: pl.DataFrame, spec: Any, samples_schema: pl.Schema
) -> dict[str, np.ndarray]:
    """Encode catalog rows (movie features only; user columns null) with the one transform."""
    from starling.features.transform import transform

    rows = with_null_columns(movie_features, samples_schema).drop("label", strict=False)
    encoded = transform(rows, spec)
    encoded["year_bucket"] = year_bucket_column(encoded)
    return encoded


def _train_liked(workdir: Path) -> tuple[pl.DataFrame, pl.Schema]:
    """Liked train-split samples in (user, time) order, and the samples schema."""
    scan = pl.scan_parquet(_features_file(workdir, "samples.parquet"))
    schema = scan.collect_schema()
    liked = (
        scan.filter((pl.col("split") == "train") & (pl.col("label") == 1))
        .sort("user_id", "event_timestamp", "movie_id")
        .collect()
    )
    if liked.height == 0:
        raise StarlingError(f"{workdir}/features/samples.parquet has no liked (label=1) train samples")
    return liked, schema


@contextmanager
def one_torch_thread() -> Iterator[None]:
    """Run torch on one intra-op thread, then restore the setting.

    These trainings are many small kernels (a few ms each), so they are bound by per-op overhead: a second
    thread gains little, and on a busy machine thread hand-offs made them about 3x slower (measured).
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_item_embeddings(
    workdir: Path, spec: Any, method: str, dim: int = 32, seed: int = 0
) -> pl.DataFrame:
    """Train ``method`` ("item2vec" or "two_tower") on the train split of WORKDIR.

    Returns a frame with movie_id int64 and embedding Array(Float32, dim), one row per catalog movie.
    """
    from starling.features.transform import transform

    if method not in METHODS:
        raise StarlingError(f"unknown item embedding method {method!r}; choose one of {', '.join(METHODS)}")
    workdir = Path(workdir)
    liked, schema = _train_liked(workdir)
    catalog = pl.read_parquet(_features_file(workdir, "movie_features.parquet")).sort("movie_id")
    catalog_encoded = encode_movie_rows(catalog, spec, schema)
    encoded = transform(liked.drop("label"), spec)
    with one_torch_thread():
        vectors = _train_vectors(method, liked, encoded, catalog_encoded, spec, dim, seed)
    frame = pl.DataFrame(
        {
            "movie_id": catalog["movie_id"].cast(pl.Int64),
            "embedding": np.ascontiguousarray(vectors, np.float32),
        }
    )
    return frame.with_columns(pl.col("embedding").cast(pl.Array(pl.Float32, dim)))


def _train_vectors(
    method: str,
    liked: pl.DataFrame,
    encoded: dict[str, np.ndarray],
    catalog_encoded: dict[str, np.ndarray],
    spec: Any,
    dim: int,
    seed: int,
) -> np.ndarray:
    """Vectors [catalog rows, dim] of ``method`` trained on the encoded liked train samples."""
    if method == "item2vec":
        item_vectors = train_item2vec(
            liked["user_id"].to_numpy(),
            encoded["movie"],
            spec.vocab_size("movie"),
            Item2VecConfig(dim=dim, seed=seed),
        )
        return item_vectors[catalog_encoded["movie"]]
    else:
        encoded["year_bucket"] = year_bucket_column(encoded)
        n_year_buckets = len(spec.numeric_stats[YEAR_FIELD]["quantiles"]) + 2
        n_year_buckets = max(
            n_year_buckets,
            int(encoded["year_bucket"].max()) + 1,
            int(catalog_encoded["year_bucket"].max()) + 1,
        )
        sizes = {
            "user": spec.vocab_size("user"),
            "movie": spec.vocab_size("movie"),
            "genre": spec.vocab_size("genre"),
            "year_bucket": n_year_buckets,
        }
        model = train_two_tower(encoded, sizes, TwoTowerConfig(dim=dim, seed=seed))
        return item_tower_vectors(model, catalog_encoded)
