"""The encoded-batch contract: what the one transform (and the serving encoder) must produce for a model, and
a check that refuses anything else with the key, the row and the reason (training/ltr.py runs it on every
candidate set it encodes)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from starling.errors import StarlingError
from training.models.base import FEATURE_KEYS, SpecLike, bucket_table_sizes


class TrainingDataError(StarlingError):
    """Training inputs are missing or do not hold what training needs."""


def encoded_layout(spec: SpecLike) -> dict[str, tuple[np.dtype, tuple[int, ...]]]:
    """Encoded key -> (dtype, trailing shape) as the transform contract states for ``spec``."""
    n_numeric = len(spec.numeric_fields)
    return {
        "user": (np.dtype(np.int64), ()),
        "movie": (np.dtype(np.int64), ()),
        "user_genres": (np.dtype(np.int64), (5,)),
        "movie_genres": (np.dtype(np.int64), (3,)),
        "liked_movies": (np.dtype(np.int64), (5,)),
        "numeric": (np.dtype(np.float32), (n_numeric,)),
        "numeric_missing": (np.dtype(np.float32), (n_numeric,)),
        "numeric_buckets": (np.dtype(np.int64), (n_numeric,)),
    }


def check_encoded(encoded: Mapping[str, np.ndarray], spec: SpecLike, where: str) -> None:
    """Refuse encoded arrays whose keys, dtypes, shapes or index ranges differ from the contract."""
    missing = [key for key in FEATURE_KEYS if key not in encoded]
    if missing:
        raise TrainingDataError(f"{where}: encoded features lack {missing}")
    n_rows = len(encoded["user"])
    for key, (dtype, trailing) in encoded_layout(spec).items():
        array = encoded[key]
        if array.dtype != dtype or array.shape != (n_rows, *trailing):
            raise TrainingDataError(
                f"{where}: encoded {key!r} is {array.dtype}{list(array.shape)}, "
                f"expected {dtype}{[n_rows, *trailing]}"
            )
    vocab_of = {"user": "user", "movie": "movie", "liked_movies": "movie"}
    vocab_of |= {"user_genres": "genre", "movie_genres": "genre"}
    limits = {key: spec.vocab_size(vocab) for key, vocab in vocab_of.items()}
    limits["numeric_buckets"] = np.array(bucket_table_sizes(spec))
    for key, limit in limits.items():
        bad = (encoded[key] < 0) | (encoded[key] >= limit)
        if bad.any():
            row = int(np.flatnonzero(bad.reshape(n_rows, -1).any(axis=1))[0])
            raise TrainingDataError(
                f"{where}: encoded {key!r} has indices outside its table (row {row}: {encoded[key][row]}, "
                f"table size {limit})"
            )
    for key in ("numeric", "numeric_missing"):
        not_finite = ~np.isfinite(encoded[key])
        if not_finite.any():
            row = int(np.flatnonzero(not_finite.reshape(n_rows, -1).any(axis=1))[0])
            raise TrainingDataError(
                f"{where}: encoded {key!r} is not finite at row {row}: {encoded[key][row]}"
            )
