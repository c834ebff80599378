"""The one definition of every feature, computed point-in-time and vectorised.

A row at time t sees only the *events* (ratings) strictly before t: ratings that share t's timestamp are not
visible, even those of the same user. Rows that are not events (``is_event`` False) are queries: they see the
same history but add nothing to it. Samples are event rows; the latest per-entity features are query rows
placed after (or at the as-of time of) the data, so both go through the same code.

How "strictly before" is made exact under timestamp ties: rows are sorted by (entity, timestamp); for every
row we know where its entity's run starts and where its (entity, timestamp) group starts; a running sum read at
the group start minus the running sum at the entity start is the sum over the entity's earlier timestamps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import polars as pl

from starling.errors import StarlingError

GENRE_SLOTS_USER = 5
GENRE_SLOTS_MOVIE = 3
LIKED_SLOTS = 5
# Centre of release years before summing squares, so the running sums stay small and exact.
YEAR_CENTRE = 2000.0
NO_USER = np.iinfo(np.int64).min  # user key of query rows that ask only for movie features
GENRE_CHUNK_HISTORIES = 200_000  # distinct like histories per chunk of the top-genre computation
_GENRE_BITS, _RECENCY_BITS = 8, 27  # bit layout of the top-genre rank key; the count takes the upper 28 bits


@dataclass(frozen=True)
class Column:
    """One feature column: values and a validity mask (None = all valid)."""

    values: np.ndarray
    valid: np.ndarray | None = None

    def take(self, rows: np.ndarray | slice) -> Column:
        return Column(self.values[rows], None if self.valid is None else self.valid[rows])


@dataclass(frozen=True)
class Catalog:
    """The movie catalog as arrays indexed by movie position; position ``n_movies`` is "no movie" (queries)."""

    movie_ids: np.ndarray  # int64 [n_movies], ascending
    release_year: np.ndarray  # int32 [n_movies + 1]
    release_year_known: np.ndarray  # bool [n_movies + 1]
    genre_names: list[str]  # ascending; genre code = position
    genre_matrix: np.ndarray  # bool [n_movies + 1, n_genres]: movie has genre
    first_genres: np.ndarray  # int16 [n_movies + 1, 3]: the movie's first genres in catalog order, -1 = none

    @property
    def no_movie(self) -> int:
        return len(self.movie_ids)

    @classmethod
    def from_movies(cls, movies: pl.DataFrame) -> Catalog:
        """Build from a checked movies frame (unique movie_id, genres list<string> without nulls)."""
        movies = movies.sort("movie_id")
        n_movies = movies.height
        genre_names = sorted(movies["genres"].explode().drop_nulls().unique().to_list())
        code_of = {name: code for code, name in enumerate(genre_names)}
        exploded = (
            movies.select(pl.int_range(pl.len()).alias("position"), "genres")
            .explode("genres")
            .drop_nulls("genres")
            .with_columns(
                pl.col("genres").replace_strict(code_of, return_dtype=pl.Int16).alias("code"),
                pl.int_range(pl.len()).over("position").alias("slot"),
            )
        )
        position = exploded["position"].to_numpy()
        code = exploded["code"].to_numpy()
        slot = exploded["slot"].to_numpy()
        genre_matrix = np.zeros((n_movies + 1, len(genre_names)), dtype=bool)
        genre_matrix[position, code] = True
        first_genres = np.full((n_movies + 1, GENRE_SLOTS_MOVIE), -1, dtype=np.int16)
        first = slot < GENRE_SLOTS_MOVIE
        first_genres[position[first], slot[first]] = code[first]
        year = movies["release_year"]
        return cls(
            movie_ids=movies["movie_id"].to_numpy().astype(np.int64),
            release_year=np.append(year.fill_null(0).to_numpy().astype(np.int32), np.int32(0)),
            release_year_known=np.append(year.is_not_null().to_numpy(), False),
            genre_names=genre_names,
            genre_matrix=genre_matrix,
            first_genres=first_genres,
        )

    def positions(self, movie_ids: np.ndarray) -> np.ndarray:
        """Catalog positions of movie ids that are known to be in the catalog."""
        return np.searchsorted(self.movie_ids, movie_ids)


@dataclass(frozen=True)
class _Timeline:
    """Rows sorted by (entity key, timestamp, tiebreak), with each row's entity and (entity, time) group start.

    ``order[i]`` is the input row at sorted position i; ``entity_start[i]`` / ``group_start[i]`` are sorted
    positions. Arrays produced by methods are in sorted order unless stated otherwise.
    """

    order: np.ndarray
    entity_start: np.ndarray
    group_start: np.ndarray
    new_group: np.ndarray

    @classmethod
    def build(cls, key: np.ndarray, timestamp: np.ndarray, tiebreak: np.ndarray) -> _Timeline:
        frame = pl.DataFrame({"key": key, "timestamp": timestamp, "tiebreak": tiebreak})
        order = frame.select(pl.arg_sort_by(["key", "timestamp", "tiebreak"])).to_series().to_numpy()
        key_sorted = key[order]
        ts_sorted = timestamp[order]
        positions = np.arange(len(order), dtype=np.int64)
        new_entity = np.ones(len(order), dtype=bool)
        new_entity[1:] = key_sorted[1:] != key_sorted[:-1]
        new_group = new_entity.copy()
        new_group[1:] |= ts_sorted[1:] != ts_sorted[:-1]
        entity_start = np.maximum.accumulate(np.where(new_entity, positions, 0))
        group_start = np.maximum.accumulate(np.where(new_group, positions, 0))
        return cls(order=order, entity_start=entity_start, group_start=group_start, new_group=new_group)

    def sorted(self, values: np.ndarray) -> np.ndarray:
        return values[self.order]

    def unsorted(self, sorted_values: np.ndarray) -> np.ndarray:
        """Back to input row order."""
        out = np.empty_like(sorted_values)
        out[self.order] = sorted_values
        return out

    def running_total(self, sorted_values: np.ndarray) -> np.ndarray:
        """``total[i]`` = sum of ``sorted_values[:i]`` (length n + 1)."""
        total = np.zeros(len(sorted_values) + 1, dtype=np.result_type(sorted_values.dtype, np.int64))
        np.cumsum(sorted_values, out=total[1:])
        return total

    def sum_before(self, sorted_values: np.ndarray) -> np.ndarray:
        """Per row: sum of the values of the same entity's rows with a strictly earlier timestamp."""
        total = self.running_total(sorted_values)
        return total[self.group_start] - total[self.entity_start]


def _count_mean_std(
    timeline: _Timeline, sorted_values: np.ndarray, sorted_present: np.ndarray, centre: float = 0.0
) -> tuple[np.ndarray, Column, Column]:
    """Count, mean and sample stddev (ddof=1) over the entity's earlier present values (sorted order).

    Mean is null when the count is 0, stddev when it is below 2. Values are centred before the running sums
    (and the centre added back), which keeps the sums of squares small.
    """
    count = timeline.sum_before(sorted_present.astype(np.int64))
    centred = np.where(sorted_present, sorted_values.astype(np.float64) - centre, 0.0)
    total = timeline.sum_before(centred)
    total_sq = timeline.sum_before(centred * centred)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean_centred = total / count
        variance = (total_sq - total * mean_centred) / (count - 1)
    std = np.sqrt(np.maximum(variance, 0.0))
    has_mean, has_std = count > 0, count > 1
    return (
        count,
        Column(np.where(has_mean, mean_centred + centre, 0.0), has_mean),
        Column(np.where(has_std, std, 0.0), has_std),
    )


@dataclass(frozen=True)
class _LikeHistory:
    """The likes in user timeline order, and for every (sorted) row how many likes precede it.

    Likes are numbered 0.. in timeline order; a row's user's earlier likes are numbers
    ``[before_user[i], before[i])``.
    """

    positions: np.ndarray  # sorted position of each like
    before: np.ndarray  # per row: likes (all users) before the row's (user, timestamp) group
    before_user: np.ndarray  # per row: likes (all users) before the row's user

    @classmethod
    def build(cls, timeline: _Timeline, liked_sorted: np.ndarray) -> _LikeHistory:
        like_total = timeline.running_total(liked_sorted.astype(np.int64))
        return cls(
            positions=np.flatnonzero(liked_sorted),
            before=like_total[timeline.group_start],
            before_user=like_total[timeline.entity_start],
        )


def _liked_movies(likes: _LikeHistory, movie_ids_sorted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The user's earlier liked movies, most recent first (same timestamp: higher movie_id first).

    Returns (slots [n, 5] int64 movie ids, valid [n, 5]) in sorted order. Relies on the timeline's tiebreak
    being the movie id, so that within one timestamp likes are ascending.
    """
    n = len(likes.before)
    slots = np.zeros((n, LIKED_SLOTS), dtype=np.int64)
    valid = np.zeros((n, LIKED_SLOTS), dtype=bool)
    if likes.positions.size:
        for slot in range(LIKED_SLOTS):
            like_number = likes.before - 1 - slot
            valid[:, slot] = like_number >= likes.before_user
            slots[:, slot] = movie_ids_sorted[likes.positions[np.where(valid[:, slot], like_number, 0)]]
    return slots, valid


def _top_liked_genres(
    timeline: _Timeline, likes: _LikeHistory, movie_pos_sorted: np.ndarray, genre_matrix: np.ndarray
) -> np.ndarray:
    """Genre codes [n, 5] (sorted order, -1 = none) of the user's earlier liked movies.

    Order: most liked movies with the genre first; ties by the most recent like of the genre (later first),
    then by genre name (ascending). A movie with several genres counts once for each.

    Computed once per distinct like history (consecutive rows of a user with no like between them share
    it), in chunks so memory stays bounded: per history and genre, one int64 rank key packs (count,
    recency of the genre's last like, reversed genre code), and the top five are taken by repeated argmax.
    """
    n_genres = genre_matrix.shape[1]
    if n_genres >= 1 << _GENRE_BITS:
        raise StarlingError(f"{n_genres} distinct genres: user top-genre features support at most 255")
    new_history = np.ones(len(likes.before), dtype=bool)
    new_history[1:] = (likes.before[1:] != likes.before[:-1]) | (
        likes.before_user[1:] != likes.before_user[:-1]
    )
    history_rows = np.flatnonzero(new_history)
    history_rows = history_rows[likes.before[history_rows] > likes.before_user[history_rows]]  # has likes
    history_codes = np.full((len(history_rows) + 1, GENRE_SLOTS_USER), -1, dtype=np.int16)  # last: none
    if len(history_rows) and n_genres:
        before = likes.before[history_rows]
        before_user = likes.before_user[history_rows]
        # recency of a like = number of the first like of its (user, timestamp) group: equal for tied likes
        like_group = timeline.group_start[likes.positions]
        new_like_group = np.ones(len(like_group), dtype=bool)
        new_like_group[1:] = like_group[1:] != like_group[:-1]
        like_recency = np.maximum.accumulate(np.where(new_like_group, np.arange(len(like_group)), 0))
        reversed_code = (n_genres - 1 - np.arange(n_genres, dtype=np.int64))[None, :]
        for start in range(0, len(history_rows), GENRE_CHUNK_HISTORIES):
            stop = min(start + GENRE_CHUNK_HISTORIES, len(history_rows))
            # likes this chunk needs: from its first user's first like to its last history's last like
            lo, hi = int(before_user[start]), int(before[stop - 1])
            if hi - lo >= 1 << _RECENCY_BITS:
                raise StarlingError(f"{hi - lo} likes in one chunk of users: more than the supported 2^27")
            chunk = genre_matrix[movie_pos_sorted[likes.positions[lo:hi]]]  # [likes, genres]
            counts_total = np.zeros((hi - lo + 1, n_genres), dtype=np.int32)
            np.cumsum(chunk, axis=0, out=counts_total[1:])
            last_like = np.where(chunk, np.arange(hi - lo, dtype=np.int32)[:, None], np.int32(0))
            np.maximum.accumulate(last_like, axis=0, out=last_like)
            end = before[start:stop] - lo  # >= 1: every history here has likes
            counts = (counts_total[end] - counts_total[before_user[start:stop] - lo]).astype(np.int64)
            recency = like_recency[lo + last_like[end - 1]] - lo
            key = (counts << (_RECENCY_BITS + _GENRE_BITS)) | (recency << _GENRE_BITS) | reversed_code
            key[counts == 0] = -1
            rows = np.arange(stop - start)
            for slot in range(min(GENRE_SLOTS_USER, n_genres)):
                best = key.argmax(axis=1)
                history_codes[start:stop, slot] = np.where(key[rows, best] >= 0, best, -1)
                key[rows, best] = -1
    # row -> its history's index among history_rows, or the trailing "none" entry when it has no likes
    history_index = np.cumsum(new_history) - 1
    distinct_rows = np.flatnonzero(new_history)
    slot_of_distinct = np.full(len(distinct_rows), len(history_rows), dtype=np.int64)
    slot_of_distinct[np.searchsorted(distinct_rows, history_rows)] = np.arange(len(history_rows))
    return history_codes[slot_of_distinct[history_index]]


def compute_point_in_time(
    user_key: np.ndarray,
    movie_pos: np.ndarray,
    timestamp_us: np.ndarray,
    rating: np.ndarray,
    is_event: np.ndarray,
    catalog: Catalog,
    like_threshold: float,
) -> dict[str, Column]:
    """All point-in-time features for rows given as arrays (input row order is kept in the result).

    ``user_key``: user id (``NO_USER`` for movie-only queries); ``movie_pos``: catalog position
    (``catalog.no_movie`` for user-only queries); ``rating``: ignored where ``is_event`` is False.

    User release-year features are over the release years of the movies the user rated earlier (liked or
    not), ignoring movies of unknown year.
    Genre and liked-movie columns are returned as codes (genre: position in ``catalog.genre_names``).
    """
    movie_ids = np.append(catalog.movie_ids, np.int64(np.iinfo(np.int64).max))[movie_pos]
    liked = is_event & (rating >= like_threshold)
    features: dict[str, Column] = {}

    # ---- movie: static catalog attributes and statistics of its earlier ratings
    known_year = catalog.release_year_known[movie_pos]
    features["movie_release_year"] = Column(catalog.release_year[movie_pos], known_year)
    first_genres = catalog.first_genres[movie_pos]
    for slot in range(GENRE_SLOTS_MOVIE):
        codes = first_genres[:, slot]
        features[f"movie_genre{slot + 1}"] = Column(codes, codes >= 0)
    movies = _Timeline.build(movie_pos, timestamp_us, user_key)
    count, mean, std = _count_mean_std(movies, movies.sorted(rating), movies.sorted(is_event))
    features["movie_rating_count"] = Column(movies.unsorted(count))
    features["movie_avg_rating"] = Column(movies.unsorted(mean.values), movies.unsorted(mean.valid))
    features["movie_rating_stddev"] = Column(movies.unsorted(std.values), movies.unsorted(std.valid))
    del movies

    # ---- user: statistics of earlier ratings and of the release years of earlier rated movies
    users = _Timeline.build(user_key, timestamp_us, movie_ids)
    is_event_sorted = users.sorted(is_event)
    count, mean, std = _count_mean_std(users, users.sorted(rating), is_event_sorted)
    features["user_rating_count"] = Column(users.unsorted(count))
    features["user_avg_rating"] = Column(users.unsorted(mean.values), users.unsorted(mean.valid))
    features["user_rating_stddev"] = Column(users.unsorted(std.values), users.unsorted(std.valid))
    year_sorted = users.sorted(catalog.release_year[movie_pos])
    year_present = is_event_sorted & users.sorted(known_year)
    _, mean, std = _count_mean_std(users, year_sorted, year_present, centre=YEAR_CENTRE)
    features["user_avg_release_year"] = Column(users.unsorted(mean.values), users.unsorted(mean.valid))
    features["user_release_year_stddev"] = Column(users.unsorted(std.values), users.unsorted(std.valid))

    # ---- user: earlier liked movies and their genres
    likes = _LikeHistory.build(users, users.sorted(liked))
    slots, valid = _liked_movies(likes, users.sorted(movie_ids))
    top_genres = _top_liked_genres(users, likes, users.sorted(movie_pos), catalog.genre_matrix)
    del likes
    top_genres = users.unsorted(top_genres)
    for slot in range(GENRE_SLOTS_USER):
        features[f"user_genre{slot + 1}"] = Column(top_genres[:, slot], top_genres[:, slot] >= 0)
    slots, valid = users.unsorted(slots), users.unsorted(valid)
    for slot in range(LIKED_SLOTS):
        features[f"user_liked_movie{slot + 1}"] = Column(slots[:, slot], valid[:, slot])
    return features
