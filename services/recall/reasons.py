"""The evidence behind each candidate: which of the user's recent likes it comes from (plain array functions).

RecommendService phrases it ("Because you liked Heat (1995)"); recall computes it because only recall holds
the co-liked neighbours, the EASE weights and the item vectors. Evidence, strongest kind first:
1. co-liked neighbours (any channel): the recent like whose neighbour list holds the candidate with the
   highest similarity;
2. EASE candidates: the recent like with the largest positive EASE weight towards the candidate;
3. embedding candidates: the recent like whose vector is closest (cosine) to the candidate's.
Other candidates (popular, genre, new releases) have none unless 1. applies.
"""

from __future__ import annotations

import numpy as np

from services.recall.features import UserProfile
from services.recall.state import RecallModel

NONE = -1


def neighbour_evidence(model: RecallModel, sources: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each candidate row: the source row whose co-liked neighbours hold it most strongly, else -1."""
    neighbours = model.neighbour_rows[sources]
    valid = neighbours >= 0
    hit_rows = neighbours[valid]
    hit_scores = model.neighbour_scores[sources][valid]
    hit_sources = np.broadcast_to(sources[:, None], neighbours.shape)[valid]
    out = np.full(len(rows), NONE, dtype=np.int64)
    if len(hit_rows) == 0:
        return out
    order = np.lexsort((-hit_scores, hit_rows))  # by candidate, strongest first (ties: most recent like)
    hit_rows, hit_sources = hit_rows[order], hit_sources[order]
    first = np.r_[True, hit_rows[1:] != hit_rows[:-1]]
    unique_rows, best_sources = hit_rows[first], hit_sources[first]
    pos = np.minimum(np.searchsorted(unique_rows, rows), len(unique_rows) - 1)
    found = unique_rows[pos] == rows
    out[found] = best_sources[pos[found]]
    return out


def ease_evidence(model: RecallModel, sources: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each candidate row: the source row with the largest positive EASE weight towards it, else -1."""
    out = np.full(len(rows), NONE, dtype=np.int64)
    source_index = model.ease_index[sources]
    sources = sources[source_index >= 0]
    source_index = source_index[source_index >= 0]
    candidate_index = model.ease_index[rows]
    covered = np.flatnonzero(candidate_index >= 0)
    if len(sources) == 0 or len(covered) == 0:
        return out
    weights = model.state.ease_weights[np.ix_(source_index, candidate_index[covered])]
    best = weights.argmax(axis=0)
    positive = weights[best, np.arange(len(covered))] > 0
    out[covered[positive]] = sources[best[positive]]
    return out


def vector_evidence(model: RecallModel, sources: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each candidate row: the source row whose item vector is closest (cosine, > 0) to it, else -1."""
    out = np.full(len(rows), NONE, dtype=np.int64)
    sources = sources[model.has_vector[sources]]
    with_vector = np.flatnonzero(model.has_vector[rows])
    if len(sources) == 0 or len(with_vector) == 0:
        return out

    def unit(vectors: np.ndarray) -> np.ndarray:
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    cosine = unit(model.vectors[sources]) @ unit(model.vectors[rows[with_vector]]).T
    best = cosine.argmax(axis=0)
    positive = cosine[best, np.arange(len(with_vector))] > 0
    out[with_vector[positive]] = sources[best[positive]]
    return out


def because_liked(
    model: RecallModel, profile: UserProfile, rows: np.ndarray, channels: np.ndarray
) -> np.ndarray:
    """Per candidate (catalog ``rows``, recall ``channels``): the catalog row of the recent like that is the
    evidence for it, -1 when there is none."""
    sources = profile.liked_rows[: model.params.recent_likes]
    out = np.full(len(rows), NONE, dtype=np.int64)
    if len(rows) == 0 or len(sources) == 0:
        return out
    out = neighbour_evidence(model, sources, rows)
    for channel, evidence in (("ease", ease_evidence), ("embedding", vector_evidence)):
        missing = np.flatnonzero((out < 0) & (channels == channel))
        if len(missing):
            out[missing] = evidence(model, sources, rows[missing])
    return out
