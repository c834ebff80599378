"""User embeddings as the mean of the embeddings of the movies a user liked.

No user parameters are learned, so a user's vector can be updated online the moment they like a movie
(:func:`update_mean`) without retraining, and new users get a vector after their first like.
"""

from __future__ import annotations

import numpy as np
import polars as pl

from starling.errors import StarlingError


def item_matrix(item_table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(sorted movie ids int64 [n], embeddings float32 [n, dim]) from a movie_id/embedding frame."""
    missing = {"movie_id", "embedding"} - set(item_table.columns)
    if missing:
        raise StarlingError(f"item embedding table lacks column(s) {sorted(missing)}")
    table = item_table.sort("movie_id")
    ids = table["movie_id"].to_numpy().astype(np.int64)
    vectors = table["embedding"].to_numpy()
    if vectors.dtype == object:  # a List column: stack the rows (fixed size is checked by the reshape)
        vectors = np.stack(vectors)
    return ids, np.ascontiguousarray(vectors, dtype=np.float32)


def lookup_rows(ids: np.ndarray, movie_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row positions of ``movie_ids`` in the sorted ``ids``, and a mask of the ones found."""
    positions = np.clip(np.searchsorted(ids, movie_ids), 0, max(ids.size - 1, 0))
    found = ids[positions] == movie_ids if ids.size else np.zeros(movie_ids.shape, dtype=bool)
    return positions, found


def user_embedding_from_liked(liked_movie_ids: np.ndarray, item_table: pl.DataFrame) -> np.ndarray:
    """One user's embedding: the mean of the vectors of ``liked_movie_ids`` (zeros when none are known)."""
    ids, vectors = item_matrix(item_table)
    positions, found = lookup_rows(ids, np.asarray(liked_movie_ids, dtype=np.int64))
    if not found.any():
        return np.zeros(vectors.shape[1], dtype=np.float32)
    return vectors[positions[found]].mean(axis=0).astype(np.float32)


def user_embeddings_from_liked(
    user_ids: np.ndarray, movie_ids: np.ndarray, item_table: pl.DataFrame
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Many users at once from (user_id, movie_id) like pairs: (user ids, embeddings [users x dim], counts).

    Group-by mean with ``np.add.at``; likes of movies missing from ``item_table`` are ignored (counted 0),
    users whose likes are all unknown get a zero vector.
    """
    ids, vectors = item_matrix(item_table)
    user_ids = np.asarray(user_ids, dtype=np.int64)
    positions, found = lookup_rows(ids, np.asarray(movie_ids, dtype=np.int64))
    unique_users, user_rows = np.unique(user_ids, return_inverse=True)
    sums = np.zeros((unique_users.size, vectors.shape[1]), dtype=np.float64)
    np.add.at(sums, user_rows[found], vectors[positions[found]])
    counts = np.bincount(user_rows[found], minlength=unique_users.size)
    means = sums / np.maximum(counts, 1)[:, None]
    return unique_users, means.astype(np.float32), counts.astype(np.int64)


def update_mean(mean: np.ndarray, count: int, new_vector: np.ndarray) -> tuple[np.ndarray, int]:
    """Fold one more liked movie's vector into a running mean: returns (new mean, new count)."""
    new_count = count + 1
    new_mean = mean + (np.asarray(new_vector, dtype=np.float64) - mean) / new_count
    return new_mean.astype(np.float32), new_count
