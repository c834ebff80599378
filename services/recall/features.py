"""A user's profile and the per-candidate features recall hands to the ranker, as plain functions over arrays.

The features (``CANDIDATE_FEATURES`` in starling/features/spec.py, in that order) are what matters for top-N
beyond the stored entity features: how popular a movie is *now* and was over several horizons, its shrunk
average rating, its age, the user's activity and tenure, the user's affinity for its genres, and each
collaborative channel's score and rank. Every duration is measured to the recall state's reference time
(the newest rating of its snapshot), so the same snapshot gives the same features online and offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.recall.state import MOVIE_BLOCK, MOVIE_FEATURES, SECONDS_PER_DAY, RecallModel, fold_in
from starling.features.spec import CANDIDATE_FEATURES

SECONDS_PER_YEAR = 365.2425 * SECONDS_PER_DAY
TASTE_LIKES = 10  # the user's current taste: genres of their 10 most recent likes
_COLUMN = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
_RELEASE_YEAR, _FIRST_DAYS, _MOVIE_AGE = (
    MOVIE_BLOCK.index(name) for name in ("release_year", "days_since_first_rating_raw", "movie_age_years")
)


@dataclass(frozen=True)
class UserProfile:
    """A user's ratings (each movie once, latest rating) as catalog rows, most recent first."""

    rated_rows: np.ndarray  # int64
    ratings: np.ndarray  # float32
    times_s: np.ndarray  # float64 seconds since the epoch
    liked_rows: np.ndarray  # int64, most recent first
    liked_times_s: np.ndarray

    @property
    def is_known(self) -> bool:
        return len(self.rated_rows) > 0

    @classmethod
    def empty(cls) -> UserProfile:
        none = np.empty(0, dtype=np.int64)
        return cls(none, np.empty(0, np.float32), np.empty(0), none, np.empty(0))


def user_profile(
    model: RecallModel,
    movie_ids: np.ndarray,
    ratings: np.ndarray,
    timestamps_us: np.ndarray,
    like_threshold: float,
) -> UserProfile:
    """From a user's latest ratings, most recent first (``UserHistory.latest``); unknown movies dropped."""
    rows = model.positions(movie_ids)
    known = rows >= 0
    rows, ratings = rows[known], np.asarray(ratings, dtype=np.float32)[known]
    times = np.asarray(timestamps_us, dtype=np.int64)[known].astype(np.float64) / 1e6
    liked = ratings >= like_threshold
    return UserProfile(rows, ratings, times, rows[liked], times[liked])


@dataclass(frozen=True)
class ChannelScores:
    """Dense per-catalog-row scores of the collaborative channels for one user (None: the user has none)."""

    ease: np.ndarray | None
    item2item: np.ndarray | None
    user_vector: np.ndarray | None


def ease_scores(model: RecallModel, profile: UserProfile) -> np.ndarray | None:
    """EASE: the sum of the weight rows of the user's most recent liked movies, over catalog rows."""
    liked = profile.liked_rows[: model.params.max_profile_likes]
    index = model.ease_index[liked]
    index = index[index >= 0]
    if len(index) == 0:
        return None
    scores = np.zeros(len(model.movie_ids), dtype=np.float32)
    scores[model.ease_rows] = model.state.ease_weights[index].sum(axis=0)
    return scores


def item2item_scores(model: RecallModel, profile: UserProfile) -> np.ndarray | None:
    """Neighbours of the recent likes, each weighted by how recent the like is in the user's own timeline."""
    params = model.params
    sources = profile.liked_rows[: params.recent_likes]
    if len(sources) == 0:
        return None
    times = profile.liked_times_s[: params.recent_likes]
    weights = np.exp2(-(times.max() - times) / (params.taste_half_life_days * SECONDS_PER_DAY))
    neighbours = model.neighbour_rows[sources]
    contributions = model.neighbour_scores[sources] * weights[:, None]
    valid = neighbours >= 0
    if not valid.any():
        return None
    return np.bincount(
        neighbours[valid], weights=contributions[valid], minlength=len(model.movie_ids)
    ).astype(np.float32)


def user_vector(model: RecallModel, profile: UserProfile) -> np.ndarray | None:
    """The user's ALS vector folded in from their most recent liked movies that have a vector."""
    liked = profile.liked_rows[: model.params.max_profile_likes]
    vectors = model.vectors[liked]
    vectors = vectors[np.any(vectors != 0, axis=1)]
    return fold_in(vectors, model.state.als_gram, model.params.als_alpha)


def channel_scores(model: RecallModel, profile: UserProfile) -> ChannelScores:
    return ChannelScores(
        ease_scores(model, profile), item2item_scores(model, profile), user_vector(model, profile)
    )


def genre_shares(model: RecallModel, liked_rows: np.ndarray) -> np.ndarray:
    """Share of each genre among the genres of the liked movies (zeros without likes)."""
    counts = model.genre_matrix[liked_rows].sum(axis=0).astype(np.float64)
    total = counts.sum()
    return counts / total if total else counts


def top_genres(model: RecallModel, profile: UserProfile, top: int = 3) -> np.ndarray:
    """Genre columns of the user's most recent likes, most frequent first (ties: lower column first)."""
    counts = model.genre_matrix[profile.liked_rows[:TASTE_LIKES]].sum(axis=0)
    order = np.lexsort((np.arange(len(counts)), -counts))
    return order[counts[order] > 0][:top]


def _log_rank_among_positive(
    scores: np.ndarray | None, rows: np.ndarray, eligible: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """(score, log1p rank among the eligible movies' positive scores) of ``rows``; NaN where there is no
    positive score. Eligible only: a heavy user's rated movies, which score high, must not push ranks down."""
    if scores is None:
        nan = np.full(len(rows), np.nan)
        return nan, nan
    positive = np.sort(scores[(scores > 0) & eligible])
    values = scores[rows].astype(np.float64)
    rank = len(positive) - np.searchsorted(positive, values, side="right")
    return values, np.where(values > 0, np.log1p(rank), np.nan)


def _year_of(seconds: np.ndarray | float) -> np.ndarray | float:
    return 1970.0 + np.asarray(seconds) / SECONDS_PER_YEAR


def _signed_log(values: np.ndarray) -> np.ndarray:
    return np.sign(values) * np.log1p(np.abs(values))


def candidate_features(
    model: RecallModel, profile: UserProfile, rows: np.ndarray, scores: ChannelScores, eligible: np.ndarray
) -> np.ndarray:
    """float32 [len(rows), len(CANDIDATE_FEATURES)]; NaN = missing (the transform flags it). ``eligible``:
    the movies this request may recommend (the ranks of channel scores are among them)."""
    reference = model.reference_s
    n = len(rows)
    out = np.full((n, len(CANDIDATE_FEATURES)), np.nan, dtype=np.float64)

    def put(name: str, values: np.ndarray | float) -> None:
        out[:, _COLUMN[name]] = values

    # The movie: one gathered row per candidate (RecallModel.movie_block), then the derived columns.
    block = model.movie_block[rows]
    out[:, :MOVIE_FEATURES] = block[:, :MOVIE_FEATURES]
    years, first_days, movie_age = block[:, _RELEASE_YEAR], block[:, _FIRST_DAYS], block[:, _MOVIE_AGE]

    # The user.
    if profile.is_known:
        known_years = model.release_years[profile.rated_rows].astype(np.float64)
        has_year = known_years > 0
        mean_year = known_years[has_year].mean() if has_year.any() else np.nan
        age_at_rating = _year_of(profile.times_s[has_year]) - known_years[has_year]
        mean_age = age_at_rating.mean() if has_year.any() else np.nan
        last = profile.times_s.max()
        recency_days = max(reference - last, 0.0) / SECONDS_PER_DAY
        window = model.params.recent_window_days * SECONDS_PER_DAY
        put("user_rating_count_log", np.log1p(len(profile.rated_rows)))
        put("user_like_count_log", np.log1p(len(profile.liked_rows)))
        put("user_mean_rating", float(profile.ratings.mean()))
        put("user_tenure_days", np.log1p(max(reference - profile.times_s.min(), 0.0) / SECONDS_PER_DAY))
        put("user_recency_days", np.log1p(recency_days))
        put("user_recent_ratings_log", np.log1p(np.count_nonzero(profile.times_s > reference - window)))
        put("user_mean_year", mean_year)
        put("user_mean_age_at_rating", mean_age)
        put("year_gap", years - mean_year)
        put("age_gap", movie_age - mean_age)
        put("released_after_last_activity", years - _year_of(min(last, reference)))
        put("entered_after_last_activity", _signed_log(recency_days - first_days))

    # The user and the movie.
    if len(profile.liked_rows):
        shares = genre_shares(model, profile.liked_rows)
        movie_genres = model.genre_matrix[rows].astype(np.float64)
        put("genre_affinity", (movie_genres @ shares) / np.maximum(movie_genres.sum(axis=1), 1.0))
    ease, ease_rank = _log_rank_among_positive(scores.ease, rows, eligible)
    put("ease_score", ease)
    put("ease_rank", ease_rank)
    item2item, item2item_rank = _log_rank_among_positive(scores.item2item, rows, eligible)
    put("item2item_score", item2item)
    put("item2item_rank", item2item_rank)
    if scores.user_vector is not None:
        vectors = model.vectors[rows]
        has_vector = np.any(vectors != 0, axis=1)
        put("embedding_score", np.where(has_vector, vectors @ scores.user_vector, np.nan))
    return out.astype(np.float32)
