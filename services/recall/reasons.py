"""The evidence behind each candidate: which of the user's recent likes it comes from (plain array functions).

RecommendService phrases it ("Because you liked Heat (1995)"); recall computes it because only recall holds
the co-liked neighbours, the EASE weights and the item vectors. Evidence, strongest kind first:
1. co-liked neighbours (any channel): the recent like whose neighbour list holds the candidate with the
   highest similarity;
2. EASE candidates: the recent like with the largest positive EASE weight towards the candidate;
3. embedding candidates: the recent like whose vector is closest (cosine) to the candidate's;
4. any candidate still without evidence: the recent like closest to it in text (the language model's vectors
   of title, genres and tags), when their cosine is at least ``TEXT_MIN_COSINE``.
"""

from __future__ import annotations

import numpy as np

from services.recall.features import UserProfile
from services.recall.state import RecallModel

NONE = -1
# Cosine of two all-MiniLM-L6-v2 movie texts from which "similar" reads true (precision first): sequels and
# remakes are above it (Back to the Future and its Part II 0.94, Dredd and Judge Dredd 0.79); around 0.7 pairs
# share a word more than a film (Ghost and Ghostbusters 0.71), so it stays above them.
TEXT_MIN_COSINE = 0.75


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


def text_evidence(model: RecallModel, sources: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """For each candidate row: the source row closest to it in text (cosine >= TEXT_MIN_COSINE), else -1."""
    out = np.full(len(rows), NONE, dtype=np.int64)
    text = model.text_vectors
    if text is None or len(sources) == 0 or len(rows) == 0:
        return out
    cosine = text[sources] @ text[rows].T  # unit rows; zero rows (no text) give 0
    best = cosine.argmax(axis=0)
    close = cosine[best, np.arange(len(rows))] >= TEXT_MIN_COSINE
    out[close] = sources[best[close]]
    return out


def because_liked(
    model: RecallModel, profile: UserProfile, rows: np.ndarray, channels: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per candidate (catalog ``rows``, recall ``channels``): the catalog row of the recent like that is the
    evidence for it (-1 when there is none), and whether that evidence is text similarity."""
    sources = profile.liked_rows[: model.params.recent_likes]
    out = np.full(len(rows), NONE, dtype=np.int64)
    by_text = np.zeros(len(rows), dtype=bool)
    if len(rows) == 0 or len(sources) == 0:
        return out, by_text
    out = neighbour_evidence(model, sources, rows)
    for channel, evidence in (("ease", ease_evidence), ("embedding", vector_evidence)):
        missing = np.flatnonzero((out < 0) & (channels == channel))
        if len(missing):
            out[missing] = evidence(model, sources, rows[missing])
    missing = np.flatnonzero(out < 0)
    if len(missing):
        out[missing] = text_evidence(model, sources, rows[missing])
        by_text[missing] = out[missing] >= 0
    return out, by_text
