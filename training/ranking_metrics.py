"""Ranking metrics on numpy arrays, vectorized: ROC AUC (ties via average ranks), PR-AUC, log loss."""

from __future__ import annotations

import numpy as np

from starling.errors import StarlingError


def _validated(labels: np.ndarray, scores: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    scores = np.asarray(scores, dtype=np.float64)
    if labels.ndim != 1 or scores.ndim != 1 or labels.shape != scores.shape:
        raise StarlingError(
            f"{what}: labels and scores must be 1-D arrays of the same length "
            f"(got shapes {labels.shape} and {scores.shape})"
        )
    if labels.size == 0:
        raise StarlingError(f"{what}: no rows to score")
    not_binary = ~np.isin(labels, (0, 1))
    if not_binary.any():
        row = int(np.flatnonzero(not_binary)[0])
        raise StarlingError(f"{what}: labels must be 0 or 1 (row {row} has {labels[row].item()!r})")
    not_finite = ~np.isfinite(scores)
    if not_finite.any():
        row = int(np.flatnonzero(not_finite)[0])
        raise StarlingError(
            f"{what}: scores must be finite ({int(not_finite.sum())} are not; first at row {row}: {scores[row]})"
        )
    return labels.astype(np.int64), scores


def _class_counts(labels: np.ndarray, what: str) -> tuple[int, int]:
    positives = int(labels.sum())
    negatives = labels.size - positives
    if positives == 0 or negatives == 0:
        raise StarlingError(
            f"{what} needs both classes (got {positives} positive and {negatives} negative labels)"
        )
    return positives, negatives


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as the Mann-Whitney statistic; tied scores share their average rank (a tie counts 0.5)."""
    labels, scores = _validated(labels, scores, "AUC")
    positives, negatives = _class_counts(labels, "AUC")
    unique_scores, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    del unique_scores
    # 1-based average rank of each distinct score: last rank of the group minus half the group's extent.
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    positive_rank_sum = float(average_rank[inverse][labels == 1].sum())
    return (positive_rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def pr_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Average precision: sum over distinct score thresholds of (recall gained) x (precision there)."""
    labels, scores = _validated(labels, scores, "PR-AUC")
    positives, _ = _class_counts(labels, "PR-AUC")
    order = np.argsort(-scores, kind="stable")
    sorted_scores = scores[order]
    true_positives = np.cumsum(labels[order])
    # A threshold sits at the last row of each group of tied scores.
    threshold_rows = np.flatnonzero(np.r_[sorted_scores[1:] != sorted_scores[:-1], True])
    tp = true_positives[threshold_rows]
    precision = tp / (threshold_rows + 1)
    recall = tp / positives
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def logloss(labels: np.ndarray, probabilities: np.ndarray, eps: float = 1e-7) -> float:
    """Mean binary cross-entropy; probabilities are clipped to [eps, 1 - eps]."""
    labels, probabilities = _validated(labels, probabilities, "log loss")
    outside = (probabilities < 0) | (probabilities > 1)
    if outside.any():
        row = int(np.flatnonzero(outside)[0])
        raise StarlingError(
            f"log loss: probabilities must lie in [0, 1] (row {row} has {probabilities[row]})"
        )
    clipped = np.clip(probabilities, eps, 1.0 - eps)
    return float(-np.mean(labels * np.log(clipped) + (1 - labels) * np.log1p(-clipped)))


def grouped_ndcg(
    scores: np.ndarray, labels: np.ndarray, offsets: np.ndarray, n_relevant: np.ndarray, k: int = 10
) -> np.ndarray:
    """NDCG@k of each group (rows offsets[g]:offsets[g+1]) ranked by score (ties: earlier row first).

    Binary relevance; the ideal DCG counts ``n_relevant[g]`` relevant items, so relevant items that are not
    among the group's rows (not recalled) count as misses. Groups without relevant items get NaN.
    """
    scores = np.asarray(scores, dtype=np.float64)
    sizes = np.diff(offsets)
    group = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((np.arange(len(scores)), -scores, group))
    rank = np.arange(len(order)) - offsets[group[order]]
    hit = (np.asarray(labels)[order] > 0) & (rank < k)
    dcg = np.bincount(group[order][hit], weights=1.0 / np.log2(rank[hit] + 2.0), minlength=len(sizes))
    ideal = np.concatenate([[0.0], np.cumsum(1.0 / np.log2(np.arange(k) + 2.0))])
    idcg = ideal[np.minimum(np.asarray(n_relevant), k)]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(idcg > 0, dcg / idcg, np.nan)


def grouped_auc(scores: np.ndarray, labels: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """ROC AUC within each group (average ranks for ties); NaN for groups lacking a class."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels) > 0
    sizes = np.diff(offsets)
    group = np.repeat(np.arange(len(sizes)), sizes)
    order = np.lexsort((scores, group))
    sorted_group, sorted_scores = group[order], scores[order]
    # average rank within the group for tied scores: the middle of each (group, score) run, 1-based
    key_change = np.r_[
        True, (sorted_group[1:] != sorted_group[:-1]) | (sorted_scores[1:] != sorted_scores[:-1])
    ]
    run = np.cumsum(key_change) - 1
    run_start = np.flatnonzero(key_change)
    run_end = np.r_[run_start[1:], len(order)]
    ranks = (run_start[run] + run_end[run] - 1) / 2.0 - offsets[sorted_group] + 1.0
    positives = np.bincount(group, weights=labels, minlength=len(sizes))
    negatives = sizes - positives
    rank_sum = np.bincount(group[order], weights=np.where(labels[order], ranks, 0.0), minlength=len(sizes))
    with np.errstate(invalid="ignore", divide="ignore"):
        auc = (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)
    return np.where((positives > 0) & (negatives > 0), auc, np.nan)
