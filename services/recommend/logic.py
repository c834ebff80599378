"""The recommend orchestrator's pure parts: request checks, fallbacks and response assembly."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument, check_id, check_ids, check_k, check_time
from starling.v1 import common_pb2, recommend_pb2

MAX_EXCLUDED = 10_000
MAX_GENRES = 32


@dataclass(frozen=True)
class ValidRequest:
    user_id: int
    k: int
    genres: tuple[str, ...]
    excluded: np.ndarray


def validate_recommend(request: recommend_pb2.RecommendRequest, catalog: Catalog) -> ValidRequest:
    """Raise InvalidArgument with what is wrong; return the checked fields."""
    user_id = check_id(request.user_id, "user_id")
    k = check_k(request.k)
    genres = tuple(request.context.genres)
    if len(genres) > MAX_GENRES:
        raise InvalidArgument(f"context.genres holds {len(genres)} genres; at most {MAX_GENRES} are accepted")
    try:
        catalog.genre_mask(genres)
    except ValueError as exc:
        raise InvalidArgument(f"context.genres: {exc}") from exc
    excluded = check_ids(request.context.exclude_movie_ids, "context.exclude_movie_ids", limit=MAX_EXCLUDED)
    if request.context.HasField("time"):
        check_time(request.context.time, "context.time")
    return ValidRequest(user_id, k, genres, excluded)


@dataclass
class Ranked:
    """Candidates as columns; what each stage hands to the next."""

    movie_ids: np.ndarray
    scores: np.ndarray
    channels: np.ndarray
    # recall's evidence per candidate (the liked movie behind it), 0 = none; and whether it is text similarity
    because_ids: np.ndarray = field(default_factory=lambda: np.empty(0, np.int64))
    because_by_text: np.ndarray = field(default_factory=lambda: np.empty(0, bool))


def popular_fallback(
    catalog: Catalog, popularity_order: np.ndarray, excluded: np.ndarray, genres: tuple[str, ...], n: int
) -> tuple[np.ndarray, np.ndarray]:
    """The most rated eligible movies (used when recall is down): (movie ids, scores)."""
    eligible = catalog.genre_mask(genres)
    pos = catalog.positions(excluded)
    eligible[pos[pos >= 0]] = False
    rows = popularity_order[eligible[popularity_order]][:n]
    return catalog.movie_ids[rows], catalog.rating_counts[rows].astype(np.float32)


def uses_ranker(known_user: bool) -> bool:
    """The cold path: a user without any rating gets recall's list as it is (recent popularity, shaped by the
    request's genres); the ranker, trained on users with history, ranks everyone else."""
    return known_user


def cold_start_channels(channels: np.ndarray, known_user: bool) -> np.ndarray:
    """Name the popular list ``cold_start`` for users without history."""
    return channels if known_user else np.where(channels == "popular", "cold_start", channels).astype(object)


def candidate_feature_matrix(raw: bytes, names: list[str], n: int) -> np.ndarray | None:
    """Recall's candidate features (row-major float32 bytes) as [n, len(names)]; None when absent or not
    the expected shape (the ranker then answers without them, as an older recall would leave it)."""
    from starling.features.spec import CANDIDATE_FEATURES

    if not raw or tuple(names) != CANDIDATE_FEATURES or len(raw) != 4 * n * len(names):
        return None
    return np.frombuffer(raw, dtype="<f4").reshape(n, len(names))


def recall_order_scores(n: int) -> np.ndarray:
    """Scores that keep recall's order when the ranker is down: 1.0 for the first, falling linearly."""
    return (1.0 - np.arange(n, dtype=np.float32) / max(n, 1)).astype(np.float32)


def top_k_by_score(movie_ids: np.ndarray, scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the top k by score (ties by movie id), used when re-ranking is down."""
    return np.lexsort((movie_ids, -scores.astype(np.float64)))[:k]


@dataclass
class ServedList:
    """One arm's answer after re-ranking, with what the response needs beside the ids."""

    movie_ids: np.ndarray
    scores: np.ndarray
    channels: np.ndarray
    because_ids: np.ndarray  # recall's evidence per item (0: none)
    because_by_text: np.ndarray  # bool: that evidence is text similarity
    candidate_scores: np.ndarray  # every ranked candidate's score (the match scale)
    user_genres: list[str]
    recall_answered: bool
    model_version: str


def request_rng(request_id: str) -> np.random.Generator:
    """A generator seeded by the request id (a hex uuid): the same request draws the same way (the random
    arm's order, team-draft interleaving's coins)."""
    return np.random.default_rng(int(request_id[:16], 16))


def random_order_scores(n: int, request_id: str) -> np.ndarray:
    """Scores that put the candidates in a random order, fixed by the request id (the deliberately worse
    ``ranker: random`` arm of an experiment)."""
    rng = request_rng(request_id)
    return (1.0 - rng.permutation(n) / max(n, 1)).astype(np.float32)


PIPELINE_STAGES = ("candidates", "recall", "features", "ranker", "rerank")


def unique_degradations(degraded: list[common_pb2.Degradation]) -> list[common_pb2.Degradation]:
    """Each (stage, reason) once (two arms of an interleaving experiment may fall back alike), in pipeline
    order: candidates and recall are asked in parallel, so the order they fail in says nothing."""
    seen: set[tuple[str, str]] = set()
    unique = []
    for entry in degraded:
        if (entry.stage, entry.reason) not in seen:
            seen.add((entry.stage, entry.reason))
            unique.append(entry)
    order = {stage: position for position, stage in enumerate(PIPELINE_STAGES)}
    return sorted(unique, key=lambda entry: order.get(entry.stage, len(order)))


def exposure_record(
    request_id: str, req: ValidRequest, response: recommend_pb2.RecommendResponse, arms: np.ndarray
) -> dict[str, Any]:
    """The exposure log's record of a served list (starling/exposures.py)."""
    return {
        "request_id": request_id,
        "time_us": time.time_ns() // 1000,
        "user_id": req.user_id,
        "k": req.k,
        "model_version": response.model_version,
        "experiments": [{"experiment": e.experiment, "arm": e.arm} for e in response.experiments],
        "items": [item.movie_id for item in response.items],
        "item_arms": arms.tolist(),
    }


def because_of_recall(
    because_movie_ids: list[int] | np.ndarray, by_text: list[bool] | np.ndarray, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Recall's evidence per candidate and whether it is text similarity; zeros / False when absent or of
    another length (an older recall)."""
    because = np.asarray(because_movie_ids, dtype=np.int64)
    text = np.asarray(by_text, dtype=bool)
    if len(because) != n:
        return np.zeros(n, dtype=np.int64), np.zeros(n, dtype=bool)
    return because, text if len(text) == n else np.zeros(n, dtype=bool)


def lookup(ids: np.ndarray, source_ids: np.ndarray, values: np.ndarray, missing: int = 0) -> np.ndarray:
    """``values`` of each of ``ids`` by its place in ``source_ids`` (distinct); ``missing`` when absent."""
    order = np.argsort(source_ids, kind="stable")
    sorted_ids = source_ids[order]
    if len(sorted_ids) == 0:
        return np.full(len(ids), missing, dtype=values.dtype)
    pos = np.minimum(np.searchsorted(sorted_ids, ids), len(sorted_ids) - 1)
    found = sorted_ids[pos] == ids
    return np.where(found, values[order[pos]], missing)


def build_items(
    catalog: Catalog,
    movie_ids: np.ndarray,
    scores: np.ndarray,
    channels: np.ndarray,
    reasons: list[recommend_pb2.Reason],
    matches: np.ndarray | None = None,
    arms: np.ndarray | None = None,
) -> list[recommend_pb2.RecommendedItem]:
    """Response items with titles, genres and years from the catalog (one message per returned movie)."""
    pos = catalog.positions(movie_ids)
    matches = np.zeros(len(movie_ids), np.float32) if matches is None else matches
    arms = np.full(len(movie_ids), "", dtype=object) if arms is None else arms
    return [
        recommend_pb2.RecommendedItem(
            movie_id=int(movie_id),
            title=str(catalog.titles[p]) if p >= 0 else "",
            score=float(score),
            channel=str(channel),
            genres=catalog.genres_of(p) if p >= 0 else [],
            release_year=int(catalog.release_years[p]) if p >= 0 else 0,
            reason=reason,
            match=float(match),
            arm=str(arm),
        )
        for movie_id, p, score, channel, reason, match, arm in zip(
            movie_ids.tolist(),
            pos.tolist(),
            scores.tolist(),
            channels.tolist(),
            reasons,
            matches.tolist(),
            arms.tolist(),
            strict=True,
        )
    ]
