"""Retrieval tasks, the tuned baselines and the evaluation's statistics, on small frames with known answers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp

from starling.errors import StarlingError
from training.als_baseline import ALSConfig, fit_als
from training.baselines import (
    baseline_scorer,
    list_metrics,
    per_user_metrics,
    popularity_vector,
    recent_popularity_vector,
    retrieval_task,
    tune,
)
from training.evaluate import paired_bootstrap
from training.recall_fit import fit_ease

T0 = datetime(2020, 1, 1, tzinfo=UTC)
CUTOFF = T0 + timedelta(days=100)


def ratings_frame(rows: list[tuple[int, int, float, int]]) -> pl.DataFrame:
    """(user, movie, rating, day) rows."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "movie_id": [r[1] for r in rows],
            "rating": [r[2] for r in rows],
            "event_timestamp": [T0 + timedelta(days=r[3]) for r in rows],
        },
        schema_overrides={"rating": pl.Float32},
    )


def test_retrieval_task_holds_new_likes_seen_movies_and_warm_users() -> None:
    ratings = ratings_frame(
        [
            (1, 10, 5.0, 1), (1, 11, 2.0, 2),  # user 1: history before the cut-off
            (1, 10, 4.0, 120), (1, 12, 4.0, 130), (1, 13, 2.0, 140),  # re-rates 10; likes 12; 13 no like
            (2, 12, 4.5, 150),  # user 2: cold (no history)
            (3, 11, 5.0, 5),  # user 3: history, nothing after
        ]
    )  # fmt: skip
    task = retrieval_task("t", ratings, np.arange(10, 15), CUTOFF, None, 3.5)
    assert task.user_ids.tolist() == [1, 2]
    assert task.warm.tolist() == [True, False]
    assert task.relevant.toarray().astype(int).tolist() == [[0, 0, 1, 0, 0], [0, 0, 1, 0, 0]]
    assert task.seen.toarray().astype(int).tolist() == [[1, 1, 0, 0, 0], [0, 0, 0, 0, 0]]
    assert popularity_vector(task).tolist() == [1, 2, 0, 0, 0]


def test_recent_popularity_halves_per_half_life_of_age() -> None:
    ratings = ratings_frame([(1, 10, 5.0, 90), (2, 11, 5.0, 80), (3, 11, 1.0, 90), (4, 12, 5.0, 200)])
    task = retrieval_task("t", ratings, np.arange(10, 13), CUTOFF, None, 3.5)
    # newest rating before the cut-off: day 90; movie 11's like is 10 days older, its dislike does not count
    np.testing.assert_allclose(recent_popularity_vector(task, 10.0), [1.0, 0.5, 0.0])


def test_ease_scorer_is_the_closed_form_and_cold_users_get_the_fallback() -> None:
    rows = [(u, m, 5.0, u) for u in range(1, 9) for m in ((10, 11) if u % 2 else (12, 13))]
    rows += [(1, 12, 4.0, 150), (2, 10, 4.0, 150), (9, 10, 4.0, 150)]  # 9 is cold
    task = retrieval_task("t", ratings_frame(rows), np.arange(10, 14), CUTOFF, None, 3.5)
    fallback = np.array([0.1, 0.2, 0.3, 0.4])
    scores = baseline_scorer("ease", task, {"lam": 1.0}, fallback)(np.arange(len(task.user_ids)))
    likes = sp.csr_matrix(task.seen.astype(np.float32))
    weights = fit_ease(
        sp.csr_matrix(np.array([[1, 1, 0, 0] if u % 2 else [0, 0, 1, 1] for u in range(1, 9)], np.float32)),
        1.0,
    )
    np.testing.assert_allclose(scores[:2], (likes @ weights)[:2], rtol=1e-5)
    assert scores[2].tolist() == fallback.tolist() and not task.warm[2]


def test_tune_picks_the_best_grid_point_and_records_the_grid() -> None:
    # the movies liked after the cut-off are those liked most *recently* before it
    rows = [(u, 10, 5.0, 5) for u in range(1, 30)] + [(u, 11, 5.0, 95) for u in range(30, 36)]
    rows += [(u, 11, 5.0, 120) for u in range(40, 60)]
    task = retrieval_task("t", ratings_frame(rows), np.arange(10, 12), CUTOFF, None, 3.5)
    tuned = tune("recent_popularity", task, np.zeros(2))
    assert tuned.params["half_life_days"] == 7
    assert len(tuned.grid) == 6 and tuned.valid_ndcg == max(point["valid_ndcg@10"] for point in tuned.grid)


def test_list_metrics_equal_scored_metrics_for_the_same_order() -> None:
    rng = np.random.default_rng(0)
    rows = [
        (u, int(m), 5.0, int(d))
        for u in range(1, 20)
        for m, d in zip(rng.choice(60, 12, replace=False), rng.integers(0, 200, 12), strict=True)
    ]
    task = retrieval_task("t", ratings_frame(rows), np.arange(60), CUTOFF, None, 3.5)
    vector = popularity_vector(task)
    scored = per_user_metrics(task, lambda r: np.broadcast_to(vector, (len(r), len(vector))))
    seen = task.seen.toarray()
    order = np.lexsort((np.arange(60), -vector))
    lists = [task.catalog_ids[order[~seen[row][order]]] for row in range(len(task.user_ids))]
    listed = list_metrics(task, {10: lists, 50: lists})
    for name in ("ndcg@10", "recall@50", "hit_rate@10"):
        np.testing.assert_allclose(listed[name], scored[name], err_msg=name)


def test_paired_bootstrap_interval() -> None:
    assert paired_bootstrap(np.zeros(30)) == {"difference": 0.0, "low": 0.0, "high": 0.0}
    rng = np.random.default_rng(1)
    difference = rng.normal(0.05, 0.1, 400)
    interval = paired_bootstrap(difference)
    assert interval["low"] < interval["difference"] < interval["high"]
    assert interval["low"] > 0 and interval["high"] - interval["low"] == pytest.approx(
        2 * 1.96 * 0.1 / 20, rel=0.25
    )


def test_als_recovers_two_blocks_of_taste() -> None:
    # Users 0-9 like items 0-4, users 10-19 like items 5-9 (each user misses one item of their block).
    users = np.repeat(np.arange(20), 4)
    items = np.concatenate([np.delete(np.arange(5) + 5 * (u // 10), u % 5) for u in range(20)])
    matrix = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=(20, 10))
    factors = fit_als(matrix, ALSConfig(factors=4, iterations=10))
    scores = factors.score(np.arange(20))
    own_block = (np.arange(10)[None, :] // 5) == (np.arange(20)[:, None] // 10)
    assert scores[own_block].mean() > scores[~own_block].mean() + 0.3
    with pytest.raises(StarlingError, match="no positive interactions"):
        fit_als(sp.csr_matrix((3, 3), dtype=np.float32))
