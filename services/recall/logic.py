"""Multi-channel recall as plain functions over catalog arrays (one user per call, as a request is served).

Channels (each returns catalog rows, best first, already restricted to the eligible pool):
- ease: EASE scores of the user's likes (services/recall/state.py);
- item2item: co-liked neighbours of the user's recent likes, weighted by how recent each like is;
- embedding: nearest ALS item vectors to the user's folded-in vector (found in memory by exact search, or by
  Milvus for large catalogs and wherever a Milvus server serves; re-scored here, so both give the same rows);
- new: the most popular recent releases;
- genre: the most popular movies of the genres of the user's recent likes;
- popular: like popularity with a tuned half-life; the whole list for users without history (cold start).
:func:`merge_channels` applies per-channel quotas, removes duplicates (the first channel in priority order
keeps a movie), fills what is left from the popular channel, and interleaves channels in proportion.
:func:`recall` runs it all and computes every candidate's features for the ranker (features.py). The recall
service and the offline evaluation (training/replay.py) both call :func:`recall`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from services.recall.features import ChannelScores, UserProfile, candidate_features, top_genres
from services.recall.reasons import because_liked
from services.recall.state import RecallModel

CHANNEL_PRIORITY = ("ease", "item2item", "embedding", "new", "genre", "popular")


@dataclass(frozen=True)
class ChannelResult:
    name: str
    positions: np.ndarray  # catalog rows, best first
    scores: np.ndarray  # float32, same length

    @classmethod
    def empty(cls, name: str) -> ChannelResult:
        return cls(name, np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32))


def keep_eligible(
    positions: np.ndarray, scores: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Drop unknown (-1) and ineligible rows, and repeated rows (first occurrence wins), keeping order."""
    valid = positions >= 0
    positions, scores = positions[valid], scores[valid]
    keep = eligible[positions]
    positions, scores = positions[keep], scores[keep]
    _, first = np.unique(positions, return_index=True)
    first.sort()
    return positions[first], scores[first]


def nearest_channel(
    name: str, positions: np.ndarray, scores: np.ndarray, eligible: np.ndarray, n: int
) -> ChannelResult:
    """Turn raw nearest-neighbour hits (may include ineligible or repeated rows) into a channel result.

    ``positions``/``scores`` may be 2-D (one row of hits per query vector); hits are merged by best score.
    """
    positions, scores = np.asarray(positions).ravel(), np.asarray(scores, dtype=np.float32).ravel()
    order = np.argsort(-scores, kind="stable")
    positions, scores = keep_eligible(positions[order], scores[order], eligible)
    return ChannelResult(name, positions[:n], scores[:n])


def merge_channels(
    channels: list[ChannelResult], quotas: dict[str, int], n: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Merge channel results into at most ``n`` distinct rows: (positions, scores, channel names).

    Pass 1 gives each channel (in CHANNEL_PRIORITY order) up to its quota of rows not yet taken; pass 2 fills
    what is left of ``n`` from the leftovers in the same order. The output interleaves channels: rows are
    ordered by their rank within their channel divided by the channel's share, ties by priority.
    """
    by_name = {c.name: c for c in channels}
    ordered = [by_name[name] for name in CHANNEL_PRIORITY if name in by_name]
    taken = np.zeros(max((int(c.positions.max(initial=-1)) for c in ordered), default=-1) + 1, dtype=bool)
    picks: list[tuple[int, np.ndarray, np.ndarray]] = []  # (channel index, rows, scores)
    count = 0

    def take(channel_index: int, rows: np.ndarray, scores: np.ndarray, budget: int) -> None:
        nonlocal count
        fresh = ~taken[rows]
        rows, scores = rows[fresh][:budget], scores[fresh][:budget]
        if len(rows):
            picks.append((channel_index, rows, scores))
            taken[rows] = True
            count += len(rows)

    for i, channel in enumerate(ordered):
        take(i, channel.positions, channel.scores, min(quotas.get(channel.name, 0), n - count))
    for i, channel in enumerate(ordered):
        if count >= n:
            break
        take(i, channel.positions, channel.scores, n - count)
    if not picks:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.float32), np.empty(0, dtype=object)

    rows = np.concatenate([p[1] for p in picks])
    scores = np.concatenate([p[2] for p in picks]).astype(np.float32)
    channel_index = np.concatenate([np.full(len(p[1]), p[0]) for p in picks])
    shares = np.array([max(quotas.get(c.name, 1), 1) for c in ordered], dtype=np.float64)
    rank_in_channel = np.zeros(len(rows))
    for i in range(len(ordered)):  # few channels; vectorized within each
        members = channel_index == i
        rank_in_channel[members] = np.arange(members.sum())
    order = np.lexsort((channel_index, rank_in_channel / shares[channel_index]))
    names = np.asarray([c.name for c in ordered], dtype=object)
    return rows[order], scores[order], names[channel_index[order]]


def ordered_channel(
    name: str, order: np.ndarray, scores: np.ndarray, eligible: np.ndarray, n: int
) -> ChannelResult:
    """The first ``n`` eligible rows of a precomputed ``order`` (catalog rows), with ``scores[row]``."""
    rows = order[eligible[order]][:n]
    return ChannelResult(name, rows, scores[rows].astype(np.float32))


def scored_channel(name: str, scores: np.ndarray | None, eligible: np.ndarray, n: int) -> ChannelResult:
    """The ``n`` eligible rows with the highest positive ``scores`` (dense over catalog rows); ties by row."""
    if scores is None or n <= 0:
        return ChannelResult.empty(name)
    candidates = np.flatnonzero(eligible & (scores > 0))
    if len(candidates) > n:
        candidates = candidates[np.argpartition(-scores[candidates], n - 1)[:n]]
    candidates = candidates[np.lexsort((candidates, -scores[candidates]))]
    return ChannelResult(name, candidates, scores[candidates].astype(np.float32))


ANN_MARGIN = 16  # extra nearest hits, so that float ties at the search's cut-off never change the channel


def ann_limit(model: RecallModel, eligible: np.ndarray, quotas: Mapping[str, int] | None = None) -> int:
    """How many nearest vectors to ask the index for: the quota plus every ineligible movie with a vector."""
    quotas = model.params.quotas if quotas is None else quotas
    return quotas.get("embedding", 0) + int((model.has_vector & ~eligible).sum())


def exact_nearest(
    model: RecallModel, query: np.ndarray, limit: int, eligible: np.ndarray | None = None
) -> np.ndarray:
    """The ``limit`` catalog rows whose vectors have the largest inner product with ``query`` (exact search,
    what the vector index answers online; ties by row). With ``eligible``, among the eligible rows only: an
    index must be asked for :func:`ann_limit` hits to be sure of the quota, a search in memory need not (for a
    user who rated 20,000 movies, that is 20,000 fewer rows to sort)."""
    rows = np.flatnonzero(model.has_vector if eligible is None else model.has_vector & eligible)
    scores = model.vectors[rows] @ query
    if len(rows) > limit:
        top = np.argpartition(-scores, limit - 1)[:limit]
        rows, scores = rows[top], scores[top]
    return rows[np.lexsort((rows, -scores))]


def embedding_channel(
    model: RecallModel, query: np.ndarray | None, hit_rows: np.ndarray, eligible: np.ndarray, quota: int
) -> ChannelResult:
    """Nearest-neighbour hits (catalog rows; -1 = unknown) re-scored exactly here, so that the index's float
    arithmetic never decides the order: online and offline give the same channel."""
    if query is None or len(hit_rows) == 0:
        return ChannelResult.empty("embedding")
    rows = np.unique(hit_rows[hit_rows >= 0])
    rows = rows[eligible[rows] & model.has_vector[rows]]
    scores = model.vectors[rows] @ query
    order = np.lexsort((rows, -scores))[:quota]
    return ChannelResult("embedding", rows[order], scores[order].astype(np.float32))


@dataclass(frozen=True)
class RecallResult:
    rows: np.ndarray  # catalog rows of the candidates, in merged order
    scores: np.ndarray  # float32: each candidate's score in the channel that found it
    channels: np.ndarray  # object: that channel's name
    features: np.ndarray  # float32 [candidates, len(CANDIDATE_FEATURES)]
    user_vector: np.ndarray | None  # the user's ALS vector (None without likes with a vector)
    top_genres: np.ndarray  # genre columns of the user's recent likes, most frequent first
    because_rows: np.ndarray  # int64: per candidate, the recent like that is its evidence (-1: none)
    because_by_text: np.ndarray  # bool: per candidate, that evidence is text similarity


def recall(
    model: RecallModel,
    profile: UserProfile,
    eligible: np.ndarray,
    n: int,
    scores: ChannelScores,
    ann_rows: np.ndarray,
    quotas: Mapping[str, int] | None = None,
) -> RecallResult:
    """Candidates for one user: every channel, merged with quotas to at most ``n`` rows, with features.

    ``scores`` come from :func:`channel_scores`; ``ann_rows`` are the vector index's hits for
    ``scores.user_vector`` (ask for :func:`ann_limit` of them). Users without history get the popular list
    only (the cold-start list, shaped by the request's genres through ``eligible``). ``quotas`` replace the
    recall state's per-channel quotas (an experiment's arm).
    """
    quotas = model.params.quotas if quotas is None else quotas
    channels = [ordered_channel("popular", model.popularity_order, model.popular_score, eligible, n)]
    if profile.is_known:
        genres = top_genres(model, profile)
        if len(genres):
            in_genres = eligible & model.genre_matrix[:, genres].any(axis=1)
            channels.append(
                ordered_channel(
                    "genre", model.popularity_order, model.popular_score, in_genres, quotas.get("genre", 0)
                )
            )
        channels += [
            scored_channel("ease", scores.ease, eligible, quotas.get("ease", 0)),
            scored_channel("item2item", scores.item2item, eligible, quotas.get("item2item", 0)),
            embedding_channel(model, scores.user_vector, ann_rows, eligible, quotas.get("embedding", 0)),
            ordered_channel(
                "new",
                model.new_release_order,
                model.like_popularity[:, 0],
                eligible,
                quotas.get("new", 0),
            ),
        ]
    else:
        genres = np.empty(0, dtype=np.int64)
    rows, channel_score, names = merge_channels(channels, quotas, n)
    features = candidate_features(model, profile, rows, scores, eligible)
    because, by_text = because_liked(model, profile, rows, names)
    return RecallResult(rows, channel_score, names, features, scores.user_vector, genres, because, by_text)
