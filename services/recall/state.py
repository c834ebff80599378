"""What recall knows about the items, as of one snapshot of the interactions (the *recall state*).

``starling train`` fits it on every rating it reads and stores it in the model artifact (``recall/``); the
offline evaluation fits the same thing on the ratings before a cut-off. Recall serves from it, aligned with
the live catalog (:class:`RecallModel`), while user histories stay live (real-time feedback).

- item statistics: like popularity decayed with several half-lives, rating and like counts, rating sums, the
  time of each movie's first rating; all as of ``reference_s``, the time of the newest rating in the snapshot
  (never the wall clock, so a snapshot means the same whenever it is served);
- EASE (Steck 2019) item-item weights over the most liked movies;
- item-to-item neighbours by co-likes (cosine), for the item2item channel and SimilarItems;
- implicit-ALS item factors: the vectors in Milvus for the embedding channel (a user's vector is folded in
  from their likes at request time, see :func:`fold_in`).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from services.common.id_index import IdIndex
from starling.errors import StarlingError
from starling.features.spec import CANDIDATE_FEATURES

STATE_DIR = "recall"
PARAMS_FILE = "params.json"
ARRAYS_FILE = "state.npz"
SECONDS_PER_DAY = 86_400.0
HORIZONS = ("short", "mid", "long")  # the candidate features' names for like_popularity's first three columns
#: The candidate features of the movie alone: CANDIDATE_FEATURES' first columns.
MOVIE_FEATURES = 12
#: The columns of :attr:`RecallModel.movie_block`: the movie-only candidate features, then the release year
#: (NaN = unknown) and the days since the first rating, which the user-and-movie features start from.
MOVIE_BLOCK: tuple[str, ...] = (
    *CANDIDATE_FEATURES[:MOVIE_FEATURES],
    "release_year",
    "days_since_first_rating_raw",
)


def _default_quotas() -> dict[str, int]:
    return {"ease": 100, "item2item": 100, "embedding": 50, "new": 50, "genre": 25, "popular": 175}


@dataclass(frozen=True)
class RecallParams:
    """Hyperparameters of the recall state and channels (stored with the state; tuned by `starling train`)."""

    #: Half-lives of the like-popularity features: short, mid, long.
    half_lives_days: tuple[float, float, float] = (14.0, 90.0, 365.0)
    #: Half-life of the popular channel (and of the cold-start list); chosen on validation.
    popular_half_life_days: float = 90.0
    #: Movies released in the snapshot's year or up to this many years before make the "new" channel.
    new_release_years: int = 1
    #: Pseudo-counts of the global mean in the shrunk (Bayesian) average rating and like rate.
    shrinkage: float = 10.0
    #: Likes a movie needs before it gets an EASE row, neighbours or an ALS vector.
    min_likes: int = 3
    ease_lambda: float = 200.0
    ease_max_items: int = 2500
    #: The user's most recent likes that EASE reads (bounds the cost for very heavy users).
    max_profile_likes: int = 500
    neighbours: int = 50
    neighbour_max_items: int = 20_000
    #: Recent likes whose neighbours the item2item channel sums, weighted by recency in the user's own timeline.
    recent_likes: int = 50
    taste_half_life_days: float = 90.0
    als_factors: int = 32
    als_regularization: float = 0.05
    als_alpha: float = 2.0
    als_iterations: int = 15
    recent_window_days: float = 90.0
    quotas: dict[str, int] = field(default_factory=_default_quotas)

    def to_dict(self) -> dict[str, Any]:
        values = asdict(self)
        values["half_lives_days"] = list(self.half_lives_days)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RecallParams:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise StarlingError(f"recall params: unknown keys {unknown}; known: {sorted(known)}")
        values = dict(values)
        if "half_lives_days" in values:
            values["half_lives_days"] = tuple(float(x) for x in values["half_lives_days"])
        return cls(**values)


#: Arrays of a :class:`RecallState`, all aligned with ``movie_ids`` unless named ``ease_*`` / ``als_gram``.
ARRAY_FIELDS = (
    "movie_ids",
    "like_popularity",
    "popular_score",
    "rating_count",
    "like_count",
    "rating_sum",
    "first_rated_s",
    "ease_movie_ids",
    "ease_weights",
    "neighbour_ids",
    "neighbour_scores",
    "als_factors",
    "als_gram",
)


@dataclass(frozen=True)
class RecallState:
    params: RecallParams
    reference_s: float  # time of the newest rating in the snapshot (seconds since the epoch)
    mean_rating: float
    like_rate: float
    movie_ids: np.ndarray  # int64 sorted: the snapshot's catalog
    like_popularity: np.ndarray  # float64 [movies, 3]: decayed like counts, one column per half-life
    popular_score: np.ndarray  # float64 [movies]: decayed like count with popular_half_life_days
    rating_count: np.ndarray  # int64 [movies]
    like_count: np.ndarray  # int64 [movies]
    rating_sum: np.ndarray  # float64 [movies]
    first_rated_s: np.ndarray  # float64 [movies], NaN: never rated
    ease_movie_ids: np.ndarray  # int64 [m]
    ease_weights: np.ndarray  # float32 [m, m], zero diagonal
    neighbour_ids: np.ndarray  # int64 [movies, K], -1 = none
    neighbour_scores: np.ndarray  # float32 [movies, K]
    als_factors: np.ndarray  # float32 [movies, f], zero rows: no vector
    als_gram: np.ndarray  # float64 [f, f]: Y^T Y + regularization * I over every item vector

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        meta = {
            "params": self.params.to_dict(),
            "reference_s": self.reference_s,
            "mean_rating": self.mean_rating,
            "like_rate": self.like_rate,
        }
        (directory / PARAMS_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        with open(directory / ARRAYS_FILE, "wb") as handle:
            np.savez(handle, **{name: getattr(self, name) for name in ARRAY_FIELDS})

    @classmethod
    def load(cls, directory: Path) -> RecallState:
        directory = Path(directory)
        try:
            meta = json.loads((directory / PARAMS_FILE).read_text())
            with np.load(directory / ARRAYS_FILE, allow_pickle=False) as arrays:
                loaded = {name: arrays[name] for name in ARRAY_FIELDS}
        except (OSError, KeyError, ValueError) as exc:
            raise StarlingError(f"{directory}: not a readable recall state ({exc})") from exc
        return cls(
            params=RecallParams.from_dict(meta["params"]),
            reference_s=float(meta["reference_s"]),
            mean_rating=float(meta["mean_rating"]),
            like_rate=float(meta["like_rate"]),
            **loaded,
        )


def fold_in(factors: np.ndarray, gram: np.ndarray, alpha: float) -> np.ndarray | None:
    """A user's ALS vector from the vectors of the movies they liked (implicit's least-squares user step with
    confidence ``alpha`` per like): solve (Y^T Y + reg I + sum (c - 1) y y^T) x = sum c y. None without likes."""
    if len(factors) == 0:
        return None
    factors = factors.astype(np.float64)
    system = gram + (alpha - 1.0) * (factors.T @ factors)
    return np.linalg.solve(system, alpha * factors.sum(axis=0)).astype(np.float32)


def sorted_positions(sorted_ids: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Position of each of ``ids`` in the ascending array ``sorted_ids``; -1 where absent."""
    return IdIndex(sorted_ids).positions(ids)


def _log_rank(values: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """log1p of each movie's rank by ``values`` (0 = highest; ties by movie id)."""
    order = np.lexsort((movie_ids, -values))
    rank = np.empty(len(values), dtype=np.float64)
    rank[order] = np.arange(len(values))
    return np.log1p(rank)


@dataclass(frozen=True)
class RecallModel:
    """A recall state aligned with a live catalog (row i = catalog row i), plus what derives from it.

    Movies the snapshot did not know (added while serving) have no popularity, no EASE row and no neighbours;
    their vector is placed from their genres and, when they have one, their text vector
    (:func:`new_movie_vectors`), so they can be recalled and found similar at once; the next training gives
    them a collaborative vector once they have enough likes.
    """

    state: RecallState
    movie_ids: np.ndarray  # the catalog's, sorted
    release_years: np.ndarray  # int32, 0 = unknown
    genre_matrix: np.ndarray  # bool [movies, genres]
    like_popularity: np.ndarray
    popular_score: np.ndarray
    rating_count: np.ndarray
    like_count: np.ndarray
    first_rated_s: np.ndarray
    shrunk_rating: np.ndarray
    shrunk_like_rate: np.ndarray
    popularity_ranks: np.ndarray  # float64 [movies, 3]: log1p rank by each like_popularity column
    like_count_rank: np.ndarray  # float64: log1p rank by like count
    popularity_order: np.ndarray  # catalog rows by popular_score, most popular first (ties: movie id)
    new_release_order: np.ndarray  # rows released recently, by short-term popularity
    ease_rows: np.ndarray  # catalog row of each EASE item
    ease_index: np.ndarray  # int64 [movies]: the movie's EASE row, -1 = none
    neighbour_rows: np.ndarray  # int64 [movies, K], -1 = none
    neighbour_scores: np.ndarray
    vectors: np.ndarray  # float32 [movies, f] (ALS factors; genre means for movies new since the snapshot)
    in_snapshot: np.ndarray  # bool [movies]: the snapshot knew the movie
    placed: np.ndarray  # bool [movies]: the vector is placed (text, genres), not learnt from ratings
    has_vector: np.ndarray  # bool [movies]
    text_vectors: np.ndarray | None = None  # float32 [movies, d] unit text vectors, zeros where unknown

    @property
    def params(self) -> RecallParams:
        return self.state.params

    @property
    def reference_s(self) -> float:
        return self.state.reference_s

    @property
    def reference_year(self) -> float:
        return 1970.0 + self.state.reference_s / (365.2425 * SECONDS_PER_DAY)

    @cached_property
    def id_index(self) -> IdIndex:
        return IdIndex(self.movie_ids)

    def positions(self, ids: np.ndarray) -> np.ndarray:
        """The catalog row of each movie id; -1 where it is not in the catalog."""
        return self.id_index.positions(ids)

    @cached_property
    def movie_block(self) -> np.ndarray:
        """float64 [movies, len(MOVIE_BLOCK)]: what each candidate's features read of the movie alone, one
        row per movie, so that a request gathers one contiguous row per candidate instead of a dozen
        scattered arrays. Derived from this model's arrays only, so it is built once per aligned model
        (:meth:`align` builds it, off the request path)."""
        popularity = self.like_popularity
        if popularity.ndim != 2 or popularity.shape[1] < 3:
            raise StarlingError(
                f"candidate features need 3 popularity horizons; the state has {popularity.shape}"
            )
        first_days = np.maximum(self.reference_s - self.first_rated_s, 0.0) / SECONDS_PER_DAY
        years = self.release_years.astype(np.float64)
        years = np.where(years > 0, years, np.nan)
        columns = {
            **{f"popularity_{h}": np.log1p(popularity[:, j]) for j, h in enumerate(HORIZONS)},
            **{f"popularity_rank_{h}": self.popularity_ranks[:, j] for j, h in enumerate(HORIZONS)},
            "rating_count_log": np.log1p(self.rating_count),
            "like_count_rank": self.like_count_rank,
            "shrunk_rating": self.shrunk_rating,
            "shrunk_like_rate": self.shrunk_like_rate,
            "days_since_first_rating": np.log1p(first_days),
            "movie_age_years": self.reference_year - years,
            "release_year": years,
            "days_since_first_rating_raw": first_days,
        }
        return np.ascontiguousarray(
            np.stack([columns[name] for name in MOVIE_BLOCK], axis=1), dtype=np.float64
        )

    @classmethod
    def align(
        cls,
        state: RecallState,
        movie_ids: np.ndarray,
        release_years: np.ndarray,
        genre_matrix: np.ndarray,
        content: ContentTable | None = None,
        placed: tuple[np.ndarray, np.ndarray] | None = None,
        upserted: np.ndarray | None = None,
    ) -> RecallModel:
        """Re-index the state's per-movie arrays onto a catalog's rows (``movie_ids`` sorted); ``content``
        (text vectors) places the movies the state does not know (:func:`new_movie_vectors`). ``placed``
        (movie ids, vectors) are placements made before for movies unchanged since: kept, not recomputed.
        ``upserted``: ids of movies added through the catalog (UpsertMovie); one the state knows without a
        collaborative vector (rated, but fewer than ``min_likes`` likes) is placed as if new, so it keeps a
        vector until training gives it its own."""
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        n = len(state.movie_ids)
        pos = sorted_positions(state.movie_ids, movie_ids)
        found = pos >= 0
        pos = np.maximum(pos, 0)

        def take(array: np.ndarray, missing: float) -> np.ndarray:
            if n == 0:
                return np.full((len(movie_ids), *array.shape[1:]), missing, dtype=array.dtype)
            taken = array[pos]
            mask = found.reshape((-1,) + (1,) * (array.ndim - 1))
            return np.where(mask, taken, np.asarray(missing, dtype=array.dtype))

        params = state.params
        rating_count = take(state.rating_count, 0)
        like_count = take(state.like_count, 0)
        rating_sum = take(state.rating_sum, 0.0)
        like_popularity = take(state.like_popularity, 0.0)
        popular_score = take(state.popular_score, 0.0)
        k = params.shrinkage
        shrunk_rating = (rating_sum + k * state.mean_rating) / (rating_count + k)
        shrunk_like_rate = (like_count + k * state.like_rate) / (rating_count + k)
        popularity_ranks = np.stack(
            [_log_rank(like_popularity[:, j], movie_ids) for j in range(like_popularity.shape[1])], axis=1
        )
        popularity_order = np.lexsort((movie_ids, -popular_score))
        reference_year = 1970.0 + state.reference_s / (365.2425 * SECONDS_PER_DAY)
        recent = (release_years > 0) & (release_years >= int(reference_year) - params.new_release_years)
        recent_rows = np.flatnonzero(recent & (like_popularity[:, 0] > 0))
        new_release_order = recent_rows[
            np.lexsort((movie_ids[recent_rows], -like_popularity[recent_rows, 0]))
        ]
        ease_rows = sorted_positions(movie_ids, state.ease_movie_ids)
        if (ease_rows < 0).any():
            raise StarlingError("the live catalog lost movies that the recall state's EASE model covers")
        ease_index = np.full(len(movie_ids), -1, dtype=np.int64)
        ease_index[ease_rows] = np.arange(len(ease_rows))
        known_vectors = take(state.als_factors, 0.0)
        learnt = found & np.any(known_vectors != 0, axis=1)
        # the rows whose vector is learnt from ratings, or in place for another reason: known to the state,
        # except upserted movies without a learnt vector (placed like new ones)
        settled = found.copy()
        if upserted is not None and len(upserted):
            settled &= ~(np.isin(movie_ids, upserted) & ~learnt)
        keep = np.zeros(len(movie_ids), dtype=bool)
        if placed is not None and len(placed[0]):
            rows = sorted_positions(movie_ids, placed[0])
            kept = (rows >= 0) & ~settled[np.maximum(rows, 0)]
            known_vectors[rows[kept]] = placed[1][kept]
            keep[rows[kept]] = True
        text_vectors = content.aligned(movie_ids) if content is not None else None
        vectors = new_movie_vectors(known_vectors, settled | keep, genre_matrix, text_vectors, known=learnt)
        neighbour_ids = take(state.neighbour_ids, -1)
        neighbour_rows = sorted_positions(movie_ids, neighbour_ids.ravel()).reshape(neighbour_ids.shape)
        model = cls(
            state=state,
            movie_ids=movie_ids,
            release_years=np.asarray(release_years, dtype=np.int32),
            genre_matrix=np.asarray(genre_matrix, dtype=bool),
            like_popularity=like_popularity,
            popular_score=popular_score,
            rating_count=rating_count,
            like_count=like_count,
            first_rated_s=take(state.first_rated_s, np.nan),
            shrunk_rating=shrunk_rating,
            shrunk_like_rate=shrunk_like_rate,
            popularity_ranks=popularity_ranks,
            like_count_rank=_log_rank(like_count.astype(np.float64), movie_ids),
            popularity_order=popularity_order,
            new_release_order=new_release_order,
            ease_rows=ease_rows.astype(np.int64),
            ease_index=ease_index,
            neighbour_rows=neighbour_rows.astype(np.int64),
            neighbour_scores=take(state.neighbour_scores, 0.0),
            vectors=vectors,
            in_snapshot=found,
            placed=~settled & np.any(vectors != 0, axis=1),
            has_vector=np.any(vectors != 0, axis=1),
            text_vectors=text_vectors,
        )
        model.movie_block  # noqa: B018 - built here, where the model is made, not by the first request
        return model


CONTENT_NEIGHBOURS = 50  # known movies whose vectors a new movie's text neighbourhood averages


@dataclass(frozen=True)
class ContentTable:
    """Text vectors of movies (starling/content.py): ascending ids and unit rows [movies, d]."""

    movie_ids: np.ndarray
    vectors: np.ndarray

    @classmethod
    def empty(cls) -> ContentTable:
        return cls(np.empty(0, np.int64), np.empty((0, 0), np.float32))

    def aligned(self, movie_ids: np.ndarray) -> np.ndarray | None:
        """float32 [len(movie_ids), d]: each movie's vector, zeros where unknown; None when the table is empty."""
        if len(self.movie_ids) == 0:
            return None
        pos = sorted_positions(self.movie_ids, movie_ids)
        out = self.vectors[np.maximum(pos, 0)].astype(np.float32, copy=True)
        out[pos < 0] = 0.0
        return out

    def upserted(self, movie_ids: np.ndarray, vectors: np.ndarray) -> ContentTable:
        """The table with these movies' vectors (later rows win); rows of another width are ignored."""
        movie_ids = np.asarray(movie_ids, dtype=np.int64)
        vectors = np.asarray(vectors, dtype=np.float32)
        if len(movie_ids) == 0 or (len(self.movie_ids) and vectors.shape[1] != self.vectors.shape[1]):
            return self
        ids = np.concatenate([self.movie_ids, movie_ids])
        stacked = np.concatenate([self.vectors.reshape(-1, vectors.shape[1]), vectors])
        _, from_end = np.unique(ids[::-1], return_index=True)  # ascending ids, each at its last row
        keep = len(ids) - 1 - from_end
        return ContentTable(ids[keep], stacked[keep])


def _unit(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return np.divide(rows, norms, out=np.zeros_like(rows), where=norms > 0)


def content_directions(
    vectors: np.ndarray, content: np.ndarray, new_rows: np.ndarray, donors: np.ndarray, k: int
) -> np.ndarray:
    """For each of ``new_rows``: the similarity-weighted mean of the collaborative ``vectors`` of its ``k``
    nearest ``donors`` by text (``content``: unit rows; cosine), as a unit vector; zeros when the row has no
    text vector or no donor is similar."""
    out = np.zeros((len(new_rows), vectors.shape[1]), dtype=np.float32)
    has_text = np.any(content[new_rows] != 0, axis=1)
    donor_rows = np.flatnonzero(donors & np.any(content != 0, axis=1))
    if not has_text.any() or len(donor_rows) == 0:
        return out
    k = min(k, len(donor_rows))
    asking = new_rows[has_text]
    similarity = content[asking] @ content[donor_rows].T  # [new, donors]
    top = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    weights = np.maximum(np.take_along_axis(similarity, top, axis=1), 0.0)
    mean = np.einsum("nk,nkf->nf", weights, vectors[donor_rows][top])
    out[has_text] = _unit(mean)
    return out


def new_movie_vectors(
    vectors: np.ndarray,
    in_snapshot: np.ndarray,
    genre_matrix: np.ndarray,
    content: np.ndarray | None = None,
    neighbours: int = CONTENT_NEIGHBOURS,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """``vectors`` with a placed vector for each movie the snapshot did not know (see :class:`RecallModel`).

    Direction: the mean vector of the movies with all its genres (of movies sharing any when none has all),
    plus, when the movie has a text vector (``content``, aligned with the rows), the mean vector of its
    ``neighbours`` nearest movies by text (:func:`content_directions`), each as a unit vector. Length: the
    mean length of the known vectors, so that a new movie competes in inner-product search like a typical
    movie (an average of many vectors is much shorter than any of them). Only rows outside ``in_snapshot`` are
    placed; donors are the rows of ``known`` (default ``in_snapshot``) that have a vector, so rows placed
    before can be passed in as already in place."""
    new_rows = np.flatnonzero(~in_snapshot)
    if len(new_rows) == 0:
        return vectors
    vectors = vectors.copy()
    has_vector = np.any(vectors != 0, axis=1) & (in_snapshot if known is None else known)
    if not has_vector.any():
        return vectors
    genre_mean = np.zeros((len(new_rows), vectors.shape[1]), dtype=np.float32)
    for i, row in enumerate(new_rows.tolist()):  # one per movie added since the snapshot
        genres = genre_matrix[row]
        if not genres.any():
            continue
        with_all = has_vector & genre_matrix[:, genres].all(axis=1)
        donors = with_all if with_all.any() else has_vector & genre_matrix[:, genres].any(axis=1)
        if donors.any():
            genre_mean[i] = vectors[donors].mean(axis=0)
    direction = _unit(genre_mean)
    if content is not None and len(content) == len(vectors):
        direction = direction + content_directions(vectors, content, new_rows, has_vector, neighbours)
    typical_length = float(np.linalg.norm(vectors[has_vector], axis=1).mean())
    vectors[new_rows] = _unit(direction) * typical_length
    return vectors
