"""Top-k retrieval metrics over the whole catalog: Recall@k, NDCG@k, HitRate@k.

Everything is vectorized with numpy over a ``[users x items]`` score matrix, computed in chunks of users so the
full matrix never has to exist at once. Already-seen items are excluded by setting their score to ``-inf``;
items scored ``-inf`` (seen, or not among a pipeline's candidates) never count as retrieved.

Definitions, per user with at least one relevant item (users without any are not evaluated):

- Recall@k   = |top-k ∩ relevant| / |relevant|
- NDCG@k     = DCG@k / IDCG@k, DCG@k = Σ_{hits at rank r (1-based)} 1 / log2(r + 1),
               IDCG@k = Σ_{r=1..min(k, |relevant|)} 1 / log2(r + 1)   (binary relevance)
- HitRate@k  = 1 if top-k ∩ relevant is non-empty else 0

Each metric is the mean over evaluated users.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import scipy.sparse as sp

from starling.errors import StarlingError

ScoreChunk = Callable[[np.ndarray], np.ndarray]
"""Given row indices of users, return their float scores over all items: shape [len(rows), n_items]."""


def top_k(scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and scores of the k best items per row, best first.

    Ties are broken by the lower item index, also at the k-th place, so results are deterministic.
    """
    n_items = scores.shape[1]
    k = min(k, n_items)
    if k < n_items:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        kth = np.take_along_axis(scores, part, axis=1).min(axis=1, keepdims=True)
        better = scores > kth
        tied = scores == kth
        still_needed = k - better.sum(axis=1, keepdims=True)
        chosen = better | (tied & (np.cumsum(tied, axis=1) <= still_needed))
        part = np.nonzero(chosen)[1].reshape(scores.shape[0], k)
    else:
        part = np.broadcast_to(np.arange(n_items), scores.shape).copy()
    part_scores = np.take_along_axis(scores, part, axis=1)
    order = np.lexsort((part, -part_scores), axis=1)
    indices = np.take_along_axis(part, order, axis=1)
    return indices, np.take_along_axis(part_scores, order, axis=1)


def exclude_seen(scores: np.ndarray, seen_rows: sp.csr_matrix) -> np.ndarray:
    """Set the scores of seen items (non-zeros of ``seen_rows``, same shape as ``scores``) to -inf, in place."""
    rows, cols = seen_rows.nonzero()
    scores[rows, cols] = -np.inf
    return scores


def metrics_from_top_k(
    top_items: np.ndarray, top_scores: np.ndarray, relevant_rows: sp.csr_matrix, ks: Sequence[int]
) -> dict[str, np.ndarray]:
    """Per-user Recall/NDCG/HitRate at each k from ranked item lists ``top_items`` [users x max(ks)].

    ``relevant_rows`` is a boolean CSR [users x items]; positions whose score is -inf are never hits.
    """
    depth = top_items.shape[1]
    hits = np.take_along_axis(relevant_rows.toarray(), top_items, axis=1) & np.isfinite(top_scores)
    n_relevant = np.diff(relevant_rows.indptr).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(2, depth + 2, dtype=np.float64))
    ideal_cumulative = np.concatenate([[0.0], np.cumsum(discounts)])
    out: dict[str, np.ndarray] = {}
    for k in ks:
        k_eff = min(k, depth)
        hit_count = hits[:, :k_eff].sum(axis=1)
        dcg = (hits[:, :k_eff] * discounts[:k_eff]).sum(axis=1)
        idcg = ideal_cumulative[np.minimum(n_relevant, k_eff).astype(np.int64)]
        with np.errstate(invalid="ignore", divide="ignore"):
            out[f"recall@{k}"] = hit_count / n_relevant
            out[f"ndcg@{k}"] = dcg / idcg
        out[f"hit_rate@{k}"] = (hit_count > 0).astype(np.float64)
    return out


def evaluate_retrieval(
    score_chunk: ScoreChunk,
    relevant: sp.csr_matrix,
    seen: sp.csr_matrix,
    ks: Sequence[int] = (10, 50),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Mean Recall@k / NDCG@k / HitRate@k over users with at least one relevant item.

    ``relevant`` and ``seen`` are [users x items] sparse matrices (non-zero = relevant / already seen);
    ``score_chunk(rows)`` scores users ``rows`` over every item. Seen items are set to -inf before top-k.
    """
    if relevant.shape != seen.shape:
        raise StarlingError(f"relevant {relevant.shape} and seen {seen.shape} matrices differ in shape")
    relevant = sp.csr_matrix(relevant, dtype=bool)
    seen = sp.csr_matrix(seen, dtype=bool)
    users = np.flatnonzero(np.diff(relevant.indptr) > 0)
    if users.size == 0:
        raise StarlingError("no user has a relevant (held-out liked) item: nothing to evaluate")
    depth = max(ks)
    per_user: dict[str, list[np.ndarray]] = {}
    for start in range(0, users.size, chunk_size):
        rows = users[start : start + chunk_size]
        scores = np.array(score_chunk(rows), dtype=np.float64)
        if scores.shape != (rows.size, relevant.shape[1]):
            raise StarlingError(
                f"scorer returned shape {scores.shape}, expected {(rows.size, relevant.shape[1])}"
            )
        scores[np.isnan(scores)] = -np.inf
        exclude_seen(scores, seen[rows])
        top_items, top_scores = top_k(scores, depth)
        for name, values in metrics_from_top_k(top_items, top_scores, relevant[rows], ks).items():
            per_user.setdefault(name, []).append(values)
    return {name: float(np.concatenate(chunks).mean()) for name, chunks in per_user.items()}


def interaction_matrix(user_rows: np.ndarray, item_cols: np.ndarray, shape: tuple[int, int]) -> sp.csr_matrix:
    """Boolean CSR [users x items] with a True at each (user_row, item_col); duplicates collapse."""
    data = np.ones(user_rows.size, dtype=bool)
    matrix = sp.csr_matrix((data, (user_rows, item_cols)), shape=shape, dtype=bool)
    matrix.sum_duplicates()
    matrix.data[:] = True
    return matrix
