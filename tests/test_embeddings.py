"""Item embeddings (item2vec, two-tower), mean-of-liked user embeddings, and the ALS / LightGBM baselines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
import scipy.sparse as sp
import torch

from starling.errors import StarlingError
from training.als_baseline import ALSConfig, fit_als
from training.embeddings.item2vec import Item2VecConfig, skipgram_pairs, train_item2vec
from training.embeddings.two_tower import TwoTowerConfig, item_tower_vectors, train_two_tower
from training.embeddings.user_embedding import (
    update_mean,
    user_embedding_from_liked,
    user_embeddings_from_liked,
)
from training.lightgbm_baseline import LightGBMConfig, predict_lightgbm, train_lightgbm
from training.ranking_metrics import auc


def test_skipgram_pairs_stay_inside_each_sequence() -> None:
    users = np.array([1, 1, 1, 2, 2])
    items = np.array([10, 11, 12, 20, 21])
    centers, contexts = skipgram_pairs(users, items, window=2)
    pairs = set(zip(centers.tolist(), contexts.tolist(), strict=True))
    assert pairs == {(10, 11), (11, 10), (11, 12), (12, 11), (10, 12), (12, 10), (20, 21), (21, 20)}


def test_item2vec_puts_co_liked_movies_closer_than_random_pairs() -> None:
    # Two taste clusters: users like a shuffled subset of items 1..8 or of items 9..16; item 17 is never liked.
    rng = np.random.default_rng(0)
    sequences = [rng.permutation(np.arange(1, 9) + 8 * (user % 2))[:6] for user in range(300)]
    users = np.repeat(np.arange(300), 6)
    vectors = train_item2vec(
        users, np.concatenate(sequences), n_items=18, config=Item2VecConfig(dim=16, epochs=10, batch_size=256)
    )
    assert vectors.shape == (18, 16) and vectors.dtype == np.float32
    cosine = vectors @ vectors.T
    cluster = (np.arange(18) - 1) // 8
    same = (cluster[:, None] == cluster[None, :]) & ~np.eye(18, dtype=bool)
    known = (np.arange(18) >= 1) & (np.arange(18) <= 16)
    pair_known = known[:, None] & known[None, :]
    assert cosine[same & pair_known].mean() > cosine[~same & pair_known].mean() + 0.5
    assert not vectors[0].any() and not vectors[17].any()  # unknown index and never-liked movie: zero vector


def test_item2vec_refuses_out_of_range_items_and_empty_data() -> None:
    with pytest.raises(StarlingError, match="item indices"):
        train_item2vec(np.array([1, 1]), np.array([1, 5]), n_items=3)
    with pytest.raises(StarlingError, match="nothing to learn"):
        train_item2vec(np.array([1, 2]), np.array([1, 2]), n_items=3)


def _tower_batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    movie = rng.integers(1, 30, n)
    return {
        "user": rng.integers(1, 20, n),
        "liked_movies": rng.integers(0, 30, (n, 5)),
        "user_genres": rng.integers(0, 6, (n, 5)),
        "movie": movie,
        "movie_genres": np.stack([movie % 5 + 1, np.zeros(n, np.int64), np.zeros(n, np.int64)], axis=1),
        "year_bucket": movie % 4 + 1,
    }


def test_two_tower_vectors_are_normalized_and_cold_movies_get_one() -> None:
    rng = np.random.default_rng(0)
    sizes = {"user": 20, "movie": 30, "genre": 6, "year_bucket": 6}
    model = train_two_tower(_tower_batch(600, rng), sizes, TwoTowerConfig(dim=8, epochs=2, batch_size=128))
    catalog = {
        "movie": np.array([1, 2, 0]),  # the last one is cold: unknown id, known genre and year
        "movie_genres": np.array([[2, 0, 0], [3, 0, 0], [4, 1, 0]]),
        "year_bucket": np.array([2, 3, 1]),
    }
    vectors = item_tower_vectors(model, catalog)
    assert vectors.shape == (3, 8) and vectors.dtype == np.float32
    assert np.linalg.norm(vectors, axis=1) == pytest.approx(np.ones(3), abs=1e-5)
    users = model.user_vectors({k: torch.from_numpy(v[:4]) for k, v in _tower_batch(4, rng).items()})
    assert users.shape == (4, 8)
    assert torch.linalg.norm(users, dim=1).detach().numpy() == pytest.approx(np.ones(4), abs=1e-5)


def test_two_tower_refuses_incomplete_inputs() -> None:
    batch = _tower_batch(10, np.random.default_rng(0))
    del batch["year_bucket"]
    with pytest.raises(StarlingError, match="year_bucket"):
        train_two_tower(batch, {"user": 20, "movie": 30, "genre": 6, "year_bucket": 6})


ITEMS = pl.DataFrame(
    {"movie_id": [10, 20, 30], "embedding": np.array([[1, 0], [0, 1], [1, 1]], dtype=np.float32)}
)


def test_user_embedding_is_the_mean_of_liked_movies_and_ignores_unknown_ones() -> None:
    assert user_embedding_from_liked(np.array([10, 30, 99]), ITEMS).tolist() == [1.0, 0.5]
    assert user_embedding_from_liked(np.array([99]), ITEMS).tolist() == [0.0, 0.0]
    users, means, counts = user_embeddings_from_liked(
        np.array([7, 5, 7, 5]), np.array([10, 20, 20, 99]), ITEMS
    )
    assert users.tolist() == [5, 7]
    assert means.tolist() == [[0.0, 1.0], [0.5, 0.5]]
    assert counts.tolist() == [1, 2]


def test_incremental_update_equals_the_batch_mean() -> None:
    rng = np.random.default_rng(1)
    vectors = rng.normal(size=(7, 4)).astype(np.float32)
    mean, count = np.zeros(4, np.float32), 0
    for vector in vectors:
        mean, count = update_mean(mean, count, vector)
    assert count == 7
    assert mean == pytest.approx(vectors.mean(axis=0), abs=1e-5)


def test_als_recovers_two_blocks_of_taste() -> None:
    # Users 0-9 like items 0-4, users 10-19 like items 5-9 (each user misses one item of their block).
    users = np.repeat(np.arange(20), 4)
    items = np.concatenate([np.delete(np.arange(5) + 5 * (u // 10), u % 5) for u in range(20)])
    matrix = sp.csr_matrix((np.ones(users.size, np.float32), (users, items)), shape=(20, 10))
    factors = fit_als(matrix, ALSConfig(factors=4, iterations=10))
    scores = factors.score(np.arange(20))
    assert scores.shape == (20, 10)
    own_block = (np.arange(10)[None, :] // 5) == (np.arange(20)[:, None] // 10)
    assert scores[own_block].mean() > scores[~own_block].mean() + 0.3
    with pytest.raises(StarlingError, match="no positive interactions"):
        fit_als(sp.csr_matrix((3, 3), dtype=np.float32))


def _encoded(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    numeric = rng.normal(size=(n, 9)).astype(np.float32)
    missing = (rng.random((n, 9)) < 0.1).astype(np.float32)
    label = ((numeric[:, 0] + 0.3 * rng.normal(size=n)) > 0).astype(np.float32)
    return {
        "user": rng.integers(0, 10, n),
        "movie": rng.integers(0, 20, n),
        "user_genres": rng.integers(0, 5, (n, 5)),
        "movie_genres": rng.integers(0, 5, (n, 3)),
        "numeric": np.where(missing > 0, 0.0, numeric).astype(np.float32),
        "numeric_missing": missing,
        "label": label,
    }


def test_lightgbm_baseline_learns_a_simple_signal() -> None:
    rng = np.random.default_rng(0)
    train, valid, test = _encoded(2000, rng), _encoded(500, rng), _encoded(500, rng)
    booster = train_lightgbm(train, valid, LightGBMConfig(max_rounds=100, num_leaves=7))
    probabilities = predict_lightgbm(booster, test)
    assert probabilities.shape == (500,) and ((probabilities >= 0) & (probabilities <= 1)).all()
    assert auc(test["label"], probabilities) > 0.85
    del valid["label"]
    with pytest.raises(StarlingError, match="valid batch has no label"):
        train_lightgbm(train, valid)


@pytest.mark.slow
@pytest.mark.parametrize("method", ["item2vec", "two_tower"])
def test_train_item_embeddings_covers_the_whole_catalog(ml_small_features: Path, method: str) -> None:
    from starling.features.spec import FeatureSpec
    from training.embeddings import train_item_embeddings

    spec = FeatureSpec.load(ml_small_features / "features" / "feature_spec.json")
    table = train_item_embeddings(ml_small_features, spec, method, dim=16)
    assert table.schema == pl.Schema({"movie_id": pl.Int64, "embedding": pl.Array(pl.Float32, 16)})
    catalog = pl.read_parquet(ml_small_features / "movies.parquet")["movie_id"].sort()
    assert table["movie_id"].sort().to_list() == catalog.to_list()
    norms = np.linalg.norm(table["embedding"].to_numpy(), axis=1)
    if method == "two_tower":
        assert norms == pytest.approx(np.ones(catalog.len()), abs=1e-4)  # cold movies included
    else:
        in_vocabulary = table["movie_id"].is_in(spec.vocabularies["movie"]).to_numpy()
        assert (norms[~in_vocabulary] == 0).all() and (norms[in_vocabulary] > 0).mean() > 0.5
    with pytest.raises(StarlingError, match="unknown item embedding method"):
        train_item_embeddings(ml_small_features, spec, "word2vec")
