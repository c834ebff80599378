"""Multi-channel recall as plain functions over catalog arrays.

Channels (each returns catalog row positions, best first, already restricted to the eligible pool):
- embedding: nearest movies to the user's embedding (mean of liked-movie embeddings), from the vector index;
- item2item: nearest movies to each recently liked movie;
- genre: the most popular movies of the user's top genres (by liked-movie genre counts);
- popular: the most rated movies.
:func:`merge_channels` applies per-channel quotas, removes duplicates (the first channel in priority order
keeps a movie), refills unused quota from the other channels, and interleaves channels in proportion.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.catalog import Catalog

CHANNEL_PRIORITY = ("embedding", "item2item", "genre", "popular")
DEFAULT_QUOTAS = {"embedding": 250, "item2item": 100, "genre": 75, "popular": 75}


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


def popular_channel(
    popularity_order: np.ndarray, rating_counts: np.ndarray, eligible: np.ndarray, n: int
) -> ChannelResult:
    """``popularity_order``: catalog rows sorted by rating count, most rated first (precomputed once)."""
    rows = popularity_order[eligible[popularity_order]][:n]
    return ChannelResult("popular", rows, rating_counts[rows].astype(np.float32))


def user_top_genres(catalog: Catalog, liked_positions: np.ndarray, top: int = 3) -> np.ndarray:
    """Genre columns of the user's liked movies, most frequent first (ties: lower column first)."""
    if len(liked_positions) == 0:
        return np.empty(0, dtype=np.int64)
    counts = catalog.genre_matrix[liked_positions].sum(axis=0)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[counts[order] > 0][:top]


def genre_channel(
    catalog: Catalog, popularity_order: np.ndarray, liked_positions: np.ndarray, eligible: np.ndarray, n: int
) -> ChannelResult:
    genres = user_top_genres(catalog, liked_positions)
    if len(genres) == 0:
        return ChannelResult.empty("genre")
    in_genres = catalog.genre_matrix[:, genres].any(axis=1)
    rows = popularity_order[(eligible & in_genres)[popularity_order]][:n]
    return ChannelResult("genre", rows, catalog.rating_counts[rows].astype(np.float32))


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
