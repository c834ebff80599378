"""Retrieval tasks and the baselines the served pipeline is measured against, each tuned on validation.

A :class:`RetrievalTask` is one cut-off: every user who liked, in the window after it, a movie they had not
rated before it; "seen" (excluded from every list) is what they rated before it. Users without any rating
before the cut-off are *cold*, the others *warm*.

Baselines score the whole catalog: popularity (ratings before the cut-off), recent popularity (likes with a
half-life), EASE, implicit ALS and item-kNN (all on likes). The personalised ones fall back to the tuned
recent popularity for cold users (they have nothing else to go on). :func:`tune` picks each baseline's
hyperparameters from a small stated grid by NDCG@10 over all users of the validation task.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from services.recall.state import SECONDS_PER_DAY, sorted_positions
from training.ltr import window_targets
from training.recall_fit import fit_ease, likes_matrix
from training.retrieval_metrics import exclude_seen, interaction_matrix, metrics_from_top_k, top_k

KS = (10, 50)
USER_CHUNK = 256
Scorer = Callable[[np.ndarray], np.ndarray]  # task rows -> float scores [len(rows), catalog]

#: The stated grids (small on purpose: a handful of validation users must not pick noise).
GRIDS: dict[str, list[dict[str, Any]]] = {
    "popularity": [{}],
    "recent_popularity": [{"half_life_days": h} for h in (7, 30, 90, 180, 365, 730)],
    "ease": [{"lam": lam} for lam in (50, 200, 500, 1000)],
    "implicit_als": [
        {"factors": f, "regularization": r, "alpha": a}
        for f in (32, 64)
        for r in (0.05, 1.0)
        for a in (1.0, 10.0)
    ],
    "item_knn": [{"k": k, "shrink": s} for k in (20, 100) for s in (0.0, 20.0)],
}
EASE_MAX_ITEMS = 5000  # EASE inverts an items x items matrix: the most liked movies only


@dataclass
class RetrievalTask:
    name: str
    cutoff: datetime
    catalog_ids: np.ndarray  # sorted: the columns
    user_ids: np.ndarray  # sorted: the rows (users with a relevant movie)
    history: pl.DataFrame  # every rating before the cut-off
    seen: sp.csr_matrix  # [users x catalog]
    relevant: sp.csr_matrix  # [users x catalog]
    warm: np.ndarray  # bool [users]
    like_threshold: float

    @property
    def shape(self) -> tuple[int, int]:
        return len(self.user_ids), len(self.catalog_ids)

    @property
    def reference_s(self) -> float:
        """The time of the newest rating before the cut-off (what recall's state is as of)."""
        return float(self.history["event_timestamp"].max().timestamp()) if self.history.height else 0.0

    def likes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(all history users, their row per like, catalog column per like) for fitting on likes."""
        liked = self.history.filter(pl.col("rating") >= self.like_threshold)
        users, rows = np.unique(liked["user_id"].to_numpy(), return_inverse=True)
        cols = sorted_positions(self.catalog_ids, liked["movie_id"].to_numpy())
        keep = cols >= 0
        return users, rows[keep], cols[keep]

    def rows_in(self, users: np.ndarray) -> np.ndarray:
        """For each task user: the row of ``users`` (sorted) holding them, -1 when absent."""
        return sorted_positions(users, self.user_ids)


def retrieval_task(
    name: str,
    ratings: pl.DataFrame,
    catalog_ids: np.ndarray,
    cutoff: datetime,
    end: datetime | None,
    like_threshold: float,
) -> RetrievalTask:
    """The task of a cut-off: history = ratings before it; relevant = liked in [cutoff, end), not rated before."""
    history = ratings.filter(pl.col("event_timestamp") < cutoff)
    targets = window_targets(ratings, cutoff, end, like_threshold)
    return task_from_frames(name, history, targets, catalog_ids, like_threshold, cutoff)


def task_from_frames(
    name: str,
    history: pl.DataFrame,
    targets: pl.DataFrame,
    catalog_ids: np.ndarray,
    like_threshold: float,
    cutoff: datetime,
) -> RetrievalTask:
    """A task from a history and the (user_id, movie_id) pairs to find; pairs already in the user's history
    or outside the catalog are dropped, and so are users left without any."""
    catalog_ids = np.unique(np.asarray(catalog_ids, dtype=np.int64))
    targets = targets.select("user_id", "movie_id").unique()
    targets = targets.join(
        history.select("user_id", "movie_id").unique(), on=["user_id", "movie_id"], how="anti"
    )
    targets = targets.filter(pl.col("movie_id").is_in(pl.Series(catalog_ids).implode()))
    user_ids = np.unique(targets["user_id"].to_numpy())
    shape = (len(user_ids), len(catalog_ids))
    seen_rows = history.filter(pl.col("user_id").is_in(pl.Series(user_ids).implode()))
    seen_cols = sorted_positions(catalog_ids, seen_rows["movie_id"].to_numpy())
    known = seen_cols >= 0
    seen = interaction_matrix(
        np.searchsorted(user_ids, seen_rows["user_id"].to_numpy())[known], seen_cols[known], shape
    )
    relevant = interaction_matrix(
        np.searchsorted(user_ids, targets["user_id"].to_numpy()),
        sorted_positions(catalog_ids, targets["movie_id"].to_numpy()),
        shape,
    )
    warm = np.isin(user_ids, history["user_id"].unique().to_numpy())
    return RetrievalTask(name, cutoff, catalog_ids, user_ids, history, seen, relevant, warm, like_threshold)


# ------------------------------------------------------------------------------------------------ metrics
def per_user_metrics(task: RetrievalTask, scorer: Scorer) -> dict[str, np.ndarray]:
    """Recall@10/50, NDCG@10/50, HitRate@10/50 of every task user (seen movies excluded), by chunks."""
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(task.user_ids), USER_CHUNK):
        rows = np.arange(start, min(start + USER_CHUNK, len(task.user_ids)))
        scores = np.array(scorer(rows), dtype=np.float64)
        scores[np.isnan(scores)] = -np.inf
        exclude_seen(scores, task.seen[rows])
        items, values = top_k(scores, max(KS))
        for name, value in metrics_from_top_k(items, values, task.relevant[rows], KS).items():
            out.setdefault(name, []).append(value)
    return {name: np.concatenate(chunks) for name, chunks in out.items()}


def list_metrics(task: RetrievalTask, lists: Mapping[int, Sequence[np.ndarray]]) -> dict[str, np.ndarray]:
    """The same metrics for served lists: ``lists[k]`` holds each task user's answer to a request for k movies
    (best first); the @k metrics read the k-list (a re-ranking rule may depend on k)."""
    out: dict[str, np.ndarray] = {}
    for k in KS:
        answers = lists[k]
        items = np.zeros((len(answers), k), dtype=np.int64)
        valid = np.zeros((len(answers), k), dtype=bool)
        for row, movie_ids in enumerate(answers):  # one list per user
            cols = sorted_positions(task.catalog_ids, np.asarray(movie_ids[:k], dtype=np.int64))
            items[row, : len(cols)] = np.maximum(cols, 0)
            valid[row, : len(cols)] = cols >= 0
        out.update(metrics_from_top_k(items, np.where(valid, 1.0, -np.inf), task.relevant, (k,)))
    return out


# ---------------------------------------------------------------------------------------------- baselines
def popularity_vector(task: RetrievalTask) -> np.ndarray:
    cols = sorted_positions(task.catalog_ids, task.history["movie_id"].to_numpy())
    return np.bincount(cols[cols >= 0], minlength=len(task.catalog_ids)).astype(np.float64)


def recent_popularity_vector(task: RetrievalTask, half_life_days: float) -> np.ndarray:
    """Likes before the cut-off, each weighing 2^(-age / half-life), age measured to the newest rating."""
    liked = task.history.filter(pl.col("rating") >= task.like_threshold)
    cols = sorted_positions(task.catalog_ids, liked["movie_id"].to_numpy())
    seconds = liked["event_timestamp"].dt.epoch("us").to_numpy() / 1e6
    weights = np.exp2(-(task.reference_s - seconds) / (half_life_days * SECONDS_PER_DAY))
    return np.bincount(cols[cols >= 0], weights=weights[cols >= 0], minlength=len(task.catalog_ids))


def broadcast(vector: np.ndarray) -> Scorer:
    return lambda rows: np.broadcast_to(vector, (len(rows), len(vector)))


def with_fallback(task: RetrievalTask, personal: Scorer, fallback: np.ndarray) -> Scorer:
    """``personal`` for warm users, ``fallback`` (a popularity vector) for cold ones."""

    def score(rows: np.ndarray) -> np.ndarray:
        scores = np.array(personal(rows), dtype=np.float64)
        cold = ~task.warm[rows]
        scores[cold] = fallback
        return scores

    return score


def _task_likes(task: RetrievalTask) -> tuple[sp.csr_matrix, np.ndarray]:
    """Likes matrix [history users x catalog] and each task user's row in it (-1: no likes)."""
    users, rows, cols = task.likes()
    return likes_matrix(rows, cols, (len(users), len(task.catalog_ids))), task.rows_in(users)


def _rows_of(matrix: sp.csr_matrix, user_rows: np.ndarray) -> sp.csr_matrix:
    safe = np.maximum(user_rows, 0)
    picked = matrix[safe]
    return sp.diags((user_rows >= 0).astype(np.float32)) @ picked


def ease_scorer(task: RetrievalTask, lam: float) -> Scorer:
    likes, user_rows = _task_likes(task)
    counts = np.asarray(likes.sum(axis=0)).ravel()
    items = np.flatnonzero(counts > 0)
    items = np.sort(items[np.lexsort((items, -counts[items]))][:EASE_MAX_ITEMS])
    weights = fit_ease(likes[:, items], lam)

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), len(task.catalog_ids)), dtype=np.float64)
        out[:, items] = _rows_of(likes[:, items], user_rows[rows]) @ weights
        return out

    return score


def als_scorer(task: RetrievalTask, factors: int, regularization: float, alpha: float) -> Scorer:
    from training.als_baseline import ALSConfig, fit_als

    likes, user_rows = _task_likes(task)
    fitted = fit_als(likes, ALSConfig(factors=factors, regularization=regularization, alpha=alpha))

    def score(rows: np.ndarray) -> np.ndarray:
        picked = user_rows[rows]
        out = fitted.user_factors[np.maximum(picked, 0)] @ fitted.item_factors.T
        out[picked < 0] = 0.0
        return out

    return score


def item_knn_scorer(task: RetrievalTask, k: int, shrink: float) -> Scorer:
    """Cosine item-kNN on likes (each item keeps its k most similar), a user's score = sum over likes."""
    likes, user_rows = _task_likes(task)
    counts = np.asarray(likes.sum(axis=0)).ravel()
    items = np.flatnonzero(counts > 0)
    items = np.sort(items[np.lexsort((items, -counts[items]))][:EASE_MAX_ITEMS])
    sub = likes[:, items]
    similarity = (sub.T @ sub).toarray().astype(np.float64)
    np.fill_diagonal(similarity, 0.0)
    norms = np.sqrt(counts[items])
    similarity /= np.outer(norms, norms) + shrink
    if k < len(items):
        threshold = -np.partition(-similarity, k - 1, axis=1)[:, k - 1 : k]
        similarity = np.where(similarity >= threshold, similarity, 0.0)

    def score(rows: np.ndarray) -> np.ndarray:
        out = np.zeros((len(rows), len(task.catalog_ids)), dtype=np.float64)
        out[:, items] = _rows_of(sub, user_rows[rows]) @ similarity
        return out

    return score


def baseline_scorer(name: str, task: RetrievalTask, params: dict[str, Any], fallback: np.ndarray) -> Scorer:
    """The scorer of baseline ``name`` on ``task``; personalised ones fall back to ``fallback`` when cold."""
    if name == "popularity":
        return broadcast(popularity_vector(task))
    if name == "recent_popularity":
        return broadcast(recent_popularity_vector(task, params["half_life_days"]))
    personal = {"ease": ease_scorer, "implicit_als": als_scorer, "item_knn": item_knn_scorer}[name]
    return with_fallback(task, personal(task, **params), fallback)


@dataclass
class Tuned:
    params: dict[str, Any]
    valid_ndcg: float  # mean NDCG@10 over all validation users
    grid: list[dict[str, Any]]  # every tried point with its validation NDCG@10


def tune(name: str, valid: RetrievalTask, fallback: np.ndarray) -> Tuned:
    """The grid point of ``name`` with the best validation NDCG@10 (first one on ties)."""
    tried = []
    for params in GRIDS[name]:
        ndcg = float(
            per_user_metrics(valid, baseline_scorer(name, valid, params, fallback))["ndcg@10"].mean()
        )
        tried.append({**params, "valid_ndcg@10": ndcg})
    best = max(range(len(tried)), key=lambda i: (tried[i]["valid_ndcg@10"], -i))
    return Tuned(GRIDS[name][best], tried[best]["valid_ndcg@10"], tried)


def tune_recent_popularity(valid: RetrievalTask) -> Tuned:
    return tune("recent_popularity", valid, np.zeros(len(valid.catalog_ids)))
