"""Fitting the recall state (services/recall/state.py) on a ratings frame: item statistics, EASE, co-like
neighbours and ALS item factors. `starling train` fits it on every rating for serving, and on the ratings
before each cut-off for its training windows and for evaluation, so both see the same definitions."""

from __future__ import annotations

import numpy as np
import polars as pl
import scipy.sparse as sp

from services.recall.state import SECONDS_PER_DAY, RecallParams, RecallState, sorted_positions
from training.als_baseline import ALSConfig, fit_als

NEIGHBOUR_BLOCK = 1024  # items per block of the co-like product (bounds memory for large catalogs)


def likes_matrix(
    user_rows: np.ndarray, item_cols: np.ndarray, shape: tuple[int, int], weights: np.ndarray | None = None
) -> sp.csr_matrix:
    """float32 CSR [users x items]; duplicates collapse to one (with ``weights``: their weights add up)."""
    data = np.ones(len(user_rows), np.float32) if weights is None else weights.astype(np.float32)
    matrix = sp.csr_matrix((data, (user_rows, item_cols)), shape=shape, dtype=np.float32)
    matrix.sum_duplicates()
    if weights is None:
        matrix.data[:] = 1.0
    return matrix


def fit_ease(likes: sp.csr_matrix, lam: float) -> np.ndarray:
    """EASE's closed form: B = I - P / diag(P) with P = (X^T X + lam I)^-1 (zero diagonal), float32.

    The Gram matrix plus lam I is symmetric positive definite: inverted through its Cholesky factor.
    """
    from scipy.linalg import lapack

    gram = (likes.T @ likes).toarray().astype(np.float32)
    gram[np.diag_indices_from(gram)] += lam
    if len(gram) == 0:
        return gram
    factor, info = lapack.spotrf(gram)
    if info == 0:
        inverse, info = lapack.spotri(factor)
    if info != 0:  # not positive definite in float32 (not expected with lam > 0): the general inverse
        inverse = np.linalg.inv(gram.astype(np.float64)).astype(np.float32)
    else:
        inverse = np.triu(inverse) + np.triu(inverse, 1).T  # potri fills the upper triangle
    weights = inverse / (-np.diag(inverse))
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def fit_neighbours(likes: sp.csc_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Each item's ``k`` most co-liked items by cosine (column indices, -1 padded) and their similarities."""
    n_items = likes.shape[1]
    norms = np.sqrt(np.asarray(likes.multiply(likes).sum(axis=0)).ravel())
    ids = np.full((n_items, k), -1, dtype=np.int64)
    scores = np.zeros((n_items, k), dtype=np.float32)
    if n_items < 2 or k == 0:
        return ids, scores
    k_eff = min(k, n_items - 1)
    likes_t = likes.T.tocsr()
    for start in range(0, n_items, NEIGHBOUR_BLOCK):  # one sparse product per block of items
        stop = min(start + NEIGHBOUR_BLOCK, n_items)
        block = (likes_t[start:stop] @ likes).toarray()
        block /= np.maximum(np.outer(norms[start:stop], norms), 1e-12)
        block[np.arange(stop - start), np.arange(start, stop)] = -np.inf
        top = np.argpartition(-block, k_eff - 1, axis=1)[:, :k_eff]
        top_scores = np.take_along_axis(block, top, axis=1)
        order = np.lexsort((top, -top_scores), axis=1)
        top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
        keep = top_scores > 0
        ids[start:stop, :k_eff] = np.where(keep, top, -1)
        scores[start:stop, :k_eff] = np.where(keep, top_scores, 0.0)
    return ids, scores


def fit_recall_state(
    ratings: pl.DataFrame, movie_ids: np.ndarray, params: RecallParams, like_threshold: float
) -> RecallState:
    """The recall state of ``ratings`` (user_id, movie_id, rating, event_timestamp) over the catalog
    ``movie_ids``; ratings of movies outside the catalog are ignored. As of the newest rating."""
    movie_ids = np.unique(np.asarray(movie_ids, dtype=np.int64))
    n_movies = len(movie_ids)
    cols = sorted_positions(movie_ids, ratings["movie_id"].to_numpy())
    known = cols >= 0
    cols = cols[known]
    rating = ratings["rating"].to_numpy().astype(np.float64)[known]
    seconds = ratings["event_timestamp"].dt.epoch("us").to_numpy()[known].astype(np.float64) / 1e6
    user_ids = ratings["user_id"].to_numpy()[known]
    liked = rating >= like_threshold
    reference_s = float(seconds.max()) if len(seconds) else 0.0
    age_days = (reference_s - seconds) / SECONDS_PER_DAY

    def decayed(half_life_days: float) -> np.ndarray:
        return np.bincount(cols, weights=liked * np.exp2(-age_days / half_life_days), minlength=n_movies)

    like_count = np.bincount(cols, weights=liked, minlength=n_movies).astype(np.int64)
    first_rated = np.full(n_movies, np.inf)
    np.minimum.at(first_rated, cols, seconds)

    users, user_rows = np.unique(user_ids[liked], return_inverse=True)
    eligible_items = np.flatnonzero(like_count >= params.min_likes)
    all_likes = likes_matrix(user_rows, cols[liked], (len(users), n_movies))

    # EASE over the most liked eligible movies.
    by_likes = eligible_items[np.lexsort((movie_ids[eligible_items], -like_count[eligible_items]))]
    ease_items = np.sort(by_likes[: params.ease_max_items])
    ease_weights = (
        fit_ease(all_likes[:, ease_items], params.ease_lambda)
        if len(ease_items)
        else np.zeros((0, 0), np.float32)
    )

    # Co-like neighbours among the most liked eligible movies.
    neighbour_items = np.sort(by_likes[: params.neighbour_max_items])
    neighbour_ids = np.full((n_movies, params.neighbours), -1, dtype=np.int64)
    neighbour_scores = np.zeros((n_movies, params.neighbours), dtype=np.float32)
    if len(neighbour_items) > 1:
        local_ids, local_scores = fit_neighbours(all_likes[:, neighbour_items].tocsc(), params.neighbours)
        neighbour_ids[neighbour_items] = np.where(
            local_ids >= 0, movie_ids[neighbour_items][np.maximum(local_ids, 0)], -1
        )
        neighbour_scores[neighbour_items] = local_scores

    # ALS vectors for every eligible movie.
    factors = np.zeros((n_movies, params.als_factors), dtype=np.float32)
    if len(eligible_items) > params.als_factors and len(users) > 1:
        als = ALSConfig(
            factors=params.als_factors,
            regularization=params.als_regularization,
            alpha=params.als_alpha,
            iterations=params.als_iterations,
            seed=0,
        )
        factors[eligible_items] = fit_als(all_likes[:, eligible_items].tocsr(), als).item_factors
    vectors = factors[eligible_items].astype(np.float64)
    gram = vectors.T @ vectors + params.als_regularization * np.eye(params.als_factors)

    return RecallState(
        params=params,
        reference_s=reference_s,
        mean_rating=float(rating.mean()) if len(rating) else 0.0,
        like_rate=float(liked.mean()) if len(liked) else 0.0,
        movie_ids=movie_ids,
        like_popularity=np.stack([decayed(h) for h in params.half_lives_days], axis=1),
        popular_score=decayed(params.popular_half_life_days),
        rating_count=np.bincount(cols, minlength=n_movies).astype(np.int64),
        like_count=like_count,
        rating_sum=np.bincount(cols, weights=rating, minlength=n_movies),
        first_rated_s=np.where(np.isfinite(first_rated), first_rated, np.nan),
        ease_movie_ids=movie_ids[ease_items],
        ease_weights=ease_weights,
        neighbour_ids=neighbour_ids,
        neighbour_scores=neighbour_scores,
        als_factors=factors,
        als_gram=gram,
    )
