"""Retrieval metrics on a tiny example whose numbers are worked out by hand below."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from starling.errors import StarlingError
from training.retrieval_metrics import evaluate_retrieval, interaction_matrix, top_k

# 3 users x 6 items.
SCORES = np.array(
    [
        [0.9, 0.8, 0.7, 0.6, 0.5, 0.4],  # user 0
        [0.1, 0.1, 0.1, 0.1, 0.1, 0.1],  # user 1: no relevant item -> not evaluated
        [0.1, 0.2, 0.3, 0.4, 0.5, 0.6],  # user 2
    ]
)
RELEVANT = interaction_matrix(np.array([0, 0, 2]), np.array([2, 5, 3]), (3, 6))
SEEN = interaction_matrix(np.array([0, 2, 2]), np.array([0, 5, 4]), (3, 6))


def _score(rows: np.ndarray) -> np.ndarray:
    return SCORES[rows]


def test_hand_checked_example_with_seen_items_excluded() -> None:
    metrics = evaluate_retrieval(_score, RELEVANT, SEEN, ks=(2, 3))
    # user 0: item 0 is seen -> ranking 1,2,3,4,5; relevant {2,5}; top-2 = [1,2]: one hit at rank 2.
    #   recall@2 = 1/2, ndcg@2 = (1/log2(3)) / (1 + 1/log2(3)) = 0.6309/1.6309 = 0.38685, hit@2 = 1
    #   top-3 = [1,2,3]: same single hit -> recall@3 = 1/2, ndcg@3 = 0.38685 (ideal: min(3, 2) = 2 hits)
    # user 2: items 5 and 4 are seen -> ranking 3,2,1,0; relevant {3}: hit at rank 1.
    #   recall = 1, ndcg = 1, hit = 1 at both k
    ndcg_user0 = (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    assert metrics["recall@2"] == pytest.approx((0.5 + 1.0) / 2)
    assert metrics["ndcg@2"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert metrics["hit_rate@2"] == pytest.approx(1.0)
    assert metrics["recall@3"] == pytest.approx(0.75)
    assert metrics["ndcg@3"] == pytest.approx((ndcg_user0 + 1.0) / 2)
    assert ndcg_user0 == pytest.approx(0.38685, abs=1e-5)


def test_without_exclusion_seen_items_crowd_out_the_hit() -> None:
    nothing_seen = sp.csr_matrix((3, 6), dtype=bool)
    metrics = evaluate_retrieval(_score, RELEVANT, nothing_seen, ks=(2,))
    # user 0: top-2 = [0,1], no hit; user 2: top-2 = [5,4], no hit.
    assert metrics == {"recall@2": 0.0, "ndcg@2": 0.0, "hit_rate@2": 0.0}


def test_items_scored_minus_infinity_never_count() -> None:
    # Only item 0 is a candidate; relevant item 1 sits in the top-2 by tie order but at -inf.
    scores = np.full((1, 4), -np.inf)
    scores[0, 0] = 1.0
    relevant = interaction_matrix(np.array([0]), np.array([1]), (1, 4))
    metrics = evaluate_retrieval(
        lambda rows: scores[rows], relevant, sp.csr_matrix((1, 4), dtype=bool), ks=(2,)
    )
    assert metrics["hit_rate@2"] == 0.0


def test_chunking_does_not_change_the_result() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(50, 30))
    relevant = interaction_matrix(rng.integers(0, 50, 120), rng.integers(0, 30, 120), (50, 30))
    seen = interaction_matrix(rng.integers(0, 50, 200), rng.integers(0, 30, 200), (50, 30))
    seen = sp.csr_matrix(seen.astype(np.int8) - seen.multiply(relevant).astype(np.int8), dtype=bool)
    whole = evaluate_retrieval(lambda rows: scores[rows], relevant, seen, chunk_size=1000)
    chunked = evaluate_retrieval(lambda rows: scores[rows], relevant, seen, chunk_size=7)
    assert whole == pytest.approx(chunked)


def test_top_k_is_sorted_with_ties_broken_by_index() -> None:
    items, values = top_k(np.array([[0.5, 1.0, 1.0, 0.2]]), 3)
    assert items.tolist() == [[1, 2, 0]]
    assert values.tolist() == [[1.0, 1.0, 0.5]]


def test_bad_shapes_and_empty_relevance_are_errors() -> None:
    with pytest.raises(StarlingError, match="differ in shape"):
        evaluate_retrieval(_score, RELEVANT, sp.csr_matrix((3, 5), dtype=bool))
    with pytest.raises(StarlingError, match="no user has a relevant"):
        evaluate_retrieval(_score, sp.csr_matrix((3, 6), dtype=bool), SEEN)
    with pytest.raises(StarlingError, match="scorer returned shape"):
        evaluate_retrieval(lambda rows: SCORES[rows, :4], RELEVANT, SEEN)
