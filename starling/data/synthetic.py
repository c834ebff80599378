"""MovieLens-shaped synthetic data with planted, learnable structure (``synthetic`` / ``synthetic:N``).

The world: movies have 1-3 genres (drawn with MovieLens genre frequencies), a release year, a Zipf-like
popularity, a quality bias and a small free latent vector. Users have a taste vector over genres (a few favourite
genres plus noise), a free latent vector, a rating bias, and an activity window of a few days to years.

A user's movies are a sample without replacement (Gumbel top-k) with log-weights ``SELECTION_AFFINITY *
affinity + popularity - AGE_DECAY * age``, among the movies released by the end of their activity window
(``age``: the movie's age in years at the middle of the window); each rating falls in the window, never before
the movie's release year. So, as in MovieLens, people mostly rate what is recent when they are active, and a
movie's ratings start with its release. The rating is ``RATING_BASE + user bias + movie bias + RATING_AFFINITY *
affinity + noise`` in half stars, so liking a movie's genres raises both the chance of rating it and the rating.

Ratings are generated in blocks of users (numpy, no per-rating Python) and streamed to parquet, then DuckDB
sorts them into ``ratings.parquet`` with bounded memory: 25M ratings stay within a few GB.
"""

from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from starling.data.canonical import (
    RATINGS_SCHEMA,
    atomic_path,
    canonical_path,
    to_canonical,
    write_parquet_atomic,
)
from starling.data.movielens import split_title_year
from starling.errors import StarlingError

DEFAULT_RATINGS = 100_000
DEFAULT_SEED = 0
SYNTHETIC_SOURCE = re.compile(r"^synthetic(?::(?P<n>[\d_]+))?$")

# The 19 genres of ml-latest with their number of movies in ml-latest-small (their popularity).
GENRE_FREQUENCIES: dict[str, int] = {
    "Drama": 4361,
    "Comedy": 3756,
    "Thriller": 1894,
    "Action": 1828,
    "Romance": 1596,
    "Adventure": 1263,
    "Crime": 1199,
    "Sci-Fi": 980,
    "Horror": 978,
    "Fantasy": 779,
    "Children": 664,
    "Animation": 611,
    "Mystery": 573,
    "Documentary": 440,
    "War": 382,
    "Musical": 334,
    "Western": 167,
    "IMAX": 158,
    "Film-Noir": 87,
}
GENRES = tuple(GENRE_FREQUENCIES)
# ml-25m: 25M ratings by ~162k users on ~59k movies. Users scale linearly with N, movies with sqrt(N) (so
# ml-latest-small-sized data keeps a few thousand movies), both with a floor for tiny N.
REFERENCE_RATINGS, REFERENCE_USERS, REFERENCE_MOVIES = 25_000_000, 162_000, 59_000
MIN_USERS, MIN_MOVIES = 50, 100
MIN_RATINGS_PER_USER = 20  # as in MovieLens, when N allows
LATENT_DIM = 8
SELECTION_AFFINITY = 2.0  # weight of taste in which movies a user rates
RATING_AFFINITY = 1.2  # weight of taste in the rating
RATING_BASE, RATING_NOISE = 3.5, 0.7  # with the biases: mean ~3.5, std ~1, like MovieLens
ZIPF_EXPONENT = 1.0
AGE_DECAY = 0.12  # log-weight lost per year of a movie's age when a user is active (recency of attention)
WINDOW_START = datetime(1996, 1, 1, tzinfo=UTC)
WINDOW_END = datetime(2018, 9, 1, tzinfo=UTC)
BLOCK_CELLS = 16_000_000  # users x movies per generation block (a few hundred MB of float32 scratch)


@dataclass(frozen=True)
class SyntheticStats:
    n_ratings: int
    n_users: int
    n_movies: int
    n_rated_movies: int
    first_rating: datetime | None
    last_rating: datetime | None


def parse_synthetic_source(source: str) -> int | None:
    """``"synthetic"`` -> 100000, ``"synthetic:5000"`` -> 5000, anything else -> None."""
    match = SYNTHETIC_SOURCE.match(source.strip())
    if match is None:
        if source.startswith("synthetic"):
            raise StarlingError(f"{source!r}: expected synthetic or synthetic:N with N a positive integer")
        return None
    n_ratings = int(match["n"]) if match["n"] else DEFAULT_RATINGS
    if n_ratings <= 0:
        raise StarlingError(f"{source!r}: the number of ratings must be positive")
    return n_ratings


def world_size(n_ratings: int) -> tuple[int, int]:
    """(users, movies) for ``n_ratings`` ratings, in about ml-25m proportions."""
    n_users = max(MIN_USERS, round(n_ratings * REFERENCE_USERS / REFERENCE_RATINGS))
    n_movies = max(MIN_MOVIES, round(REFERENCE_MOVIES * (n_ratings / REFERENCE_RATINGS) ** 0.5))
    return n_users, n_movies


@dataclass(frozen=True)
class World:
    """The latent structure the ratings are drawn from."""

    movie_genres: np.ndarray  # bool [movies, genres]
    movie_genre_weights: np.ndarray  # float32 [movies, genres], rows sum to 1
    movie_latent: np.ndarray  # float32 [movies, LATENT_DIM]
    movie_popularity: np.ndarray  # float32 [movies], log-weight, Zipf-like
    movie_bias: np.ndarray  # float32 [movies]
    release_year: np.ndarray  # int32 [movies]
    user_taste: np.ndarray  # float32 [users, genres]
    user_latent: np.ndarray  # float32 [users, LATENT_DIM]
    user_bias: np.ndarray  # float32 [users]
    user_counts: np.ndarray  # int64 [users], ratings per user, summing to N
    user_start: np.ndarray  # int64 [users], seconds
    user_span: np.ndarray  # int64 [users], seconds

    def affinity(self, users: np.ndarray) -> np.ndarray:
        """float32 [len(users), movies]: how much each user likes each movie."""
        return (
            self.user_taste[users] @ self.movie_genre_weights.T
            + self.user_latent[users] @ self.movie_latent.T
        )


def make_world(n_ratings: int, seed: int = DEFAULT_SEED) -> World:
    """Draw the movies and users of a world for ``n_ratings`` ratings (deterministic for a seed)."""
    n_users, n_movies = world_size(n_ratings)
    rng = np.random.default_rng([seed, 0])
    n_genres = len(GENRES)
    genre_log_weight = np.log(np.array(list(GENRE_FREQUENCIES.values()), dtype=np.float64))

    # Genres: 1-3 distinct per movie, by frequency (Gumbel top-k over the 19 genres).
    genre_keys = genre_log_weight + rng.gumbel(size=(n_movies, n_genres))
    genre_rank = np.argsort(np.argsort(-genre_keys, axis=1), axis=1)
    genre_count = rng.choice([1, 2, 3], size=n_movies, p=[0.35, 0.4, 0.25])
    movie_genres = genre_rank < genre_count[:, None]
    movie_genre_weights = (movie_genres / movie_genres.sum(axis=1, keepdims=True)).astype(np.float32)

    popularity_rank = rng.permutation(n_movies) + 1
    release_year = np.clip(2018 - np.floor(rng.exponential(14.0, n_movies)), 1915, 2018).astype(np.int32)

    # Users: 1-3 favourite genres (by frequency) with weight 1, every genre with noise.
    favourite_keys = genre_log_weight + rng.gumbel(size=(n_users, n_genres))
    favourite_rank = np.argsort(np.argsort(-favourite_keys, axis=1), axis=1)
    favourites = favourite_rank < rng.integers(1, 4, size=n_users)[:, None]
    user_taste = favourites + rng.normal(0.0, 0.25, size=(n_users, n_genres)) - 0.15

    window = int((WINDOW_END - WINDOW_START).total_seconds())
    user_span = np.minimum(np.exp(rng.normal(np.log(200 * 86_400), 1.8, n_users)), window).astype(np.int64)
    user_start = int(WINDOW_START.timestamp()) + (rng.random(n_users) * (window - user_span)).astype(np.int64)
    user_end = user_start + user_span

    return World(
        movie_genres=movie_genres,
        movie_genre_weights=movie_genre_weights,
        movie_latent=(rng.normal(0, 1, (n_movies, LATENT_DIM)) / np.sqrt(LATENT_DIM)).astype(np.float32),
        movie_popularity=(-ZIPF_EXPONENT * np.log(popularity_rank)).astype(np.float32),
        movie_bias=rng.normal(0.0, 0.35, n_movies).astype(np.float32),
        release_year=release_year,
        user_taste=user_taste.astype(np.float32),
        user_latent=(rng.normal(0, 1, (n_users, LATENT_DIM)) / np.sqrt(LATENT_DIM)).astype(np.float32),
        user_bias=rng.normal(0.0, 0.4, n_users).astype(np.float32),
        user_counts=_ratings_per_user(n_ratings, n_users, _released_by(release_year, user_end), rng),
        user_start=user_start,
        user_span=user_span,
    )


def _year_of(seconds: np.ndarray) -> np.ndarray:
    return 1970.0 + seconds / (365.2425 * 86_400)


def _year_start(year: np.ndarray) -> np.ndarray:
    """Seconds since the epoch of 1 January of each year."""
    return (
        (np.asarray(year, dtype=np.int64) - 1970)
        .astype("datetime64[Y]")
        .astype("datetime64[s]")
        .astype(np.int64)
    )


def _released_by(release_year: np.ndarray, user_end: np.ndarray) -> np.ndarray:
    """How many movies each user can rate: those released in or before the last year of their window."""
    years = np.sort(release_year)
    return np.searchsorted(years, np.floor(_year_of(user_end)), side="right")


def _ratings_per_user(
    n_ratings: int, n_users: int, available: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Heavy-tailed counts that sum to exactly ``n_ratings``, at most 80% of each user's available movies."""
    cap = np.maximum(1, (0.8 * available).astype(np.int64))
    if n_ratings > int(cap.sum()):
        raise StarlingError(
            f"synthetic:{n_ratings} is too many ratings for {n_users} users (at most {int(cap.sum())} here)"
        )
    base = np.minimum(min(MIN_RATINGS_PER_USER, n_ratings // n_users), cap)
    weights = rng.lognormal(0.0, 1.2, n_users)
    counts = base.astype(np.int64)
    while (missing := n_ratings - int(counts.sum())) > 0:  # one pass almost always; a few when capping bites
        room = cap - counts
        open_weights = np.where(room > 0, weights, 0.0)
        counts += np.minimum(rng.multinomial(missing, open_weights / open_weights.sum()), room)
    return counts


def generate_ratings(world: World, users: np.ndarray, rng: np.random.Generator) -> pa.Table:
    """Ratings of a block of users: Gumbel top-k movie choice, noisy half-star ratings, timestamps."""
    counts = world.user_counts[users]
    users, counts = users[counts > 0], counts[counts > 0]
    affinity = world.affinity(users)
    user_end = world.user_start[users] + world.user_span[users]
    middle_year = _year_of(world.user_start[users] + world.user_span[users] / 2)
    age = np.maximum(middle_year[:, None] - world.release_year[None, :], 0.0)
    keys = SELECTION_AFFINITY * affinity + world.movie_popularity - (AGE_DECAY * age).astype(np.float32)
    keys[world.release_year[None, :] > np.floor(_year_of(user_end))[:, None]] = -np.inf  # not yet released
    exponential = rng.standard_exponential(size=keys.shape, dtype=np.float32)
    keys -= np.log(
        np.maximum(exponential, np.finfo(np.float32).tiny, out=exponential), out=exponential
    )  # Gumbel
    block_rows, movie_index = _top_k_per_row(keys, counts)
    user_index = users[block_rows]

    chosen_affinity = affinity[block_rows, movie_index]
    user_mean = np.bincount(block_rows, weights=chosen_affinity) / counts  # over the user's rated movies
    centred = chosen_affinity - user_mean[block_rows].astype(np.float32)
    raw_rating = (
        RATING_BASE
        + world.user_bias[user_index]
        + world.movie_bias[movie_index]
        + RATING_AFFINITY * centred
        + rng.normal(0.0, RATING_NOISE, len(movie_index)).astype(np.float32)
    )
    rating = np.clip(np.round(raw_rating * 2) / 2, 0.5, 5.0).astype(np.float32)

    earliest = np.maximum(world.user_start[user_index], _year_start(world.release_year[movie_index]))
    latest = world.user_start[user_index] + world.user_span[user_index]
    seconds = earliest + (rng.random(len(movie_index)) * np.maximum(latest - earliest, 0)).astype(np.int64)
    return pa.table(
        {
            "user_id": pa.array(user_index + 1, pa.int64()),
            "movie_id": pa.array(movie_index.astype(np.int64) + 1, pa.int64()),
            "rating": pa.array(rating, pa.float32()),
            "event_timestamp": pa.array(seconds * 1_000_000, pa.int64()).cast(RATINGS_SCHEMA.field(3).type),
        },
        schema=RATINGS_SCHEMA,
    )


def _top_k_per_row(keys: np.ndarray, counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(row, column) of the ``counts[row]`` largest keys of each row, row-major; exact even with tied keys."""
    n_rows, n_columns = keys.shape
    k_max = int(counts.max())
    largest = np.partition(keys, n_columns - k_max, axis=1)[:, n_columns - k_max :]
    largest.sort(axis=1)
    threshold = largest[np.arange(n_rows), k_max - counts]  # each row's counts[row]-th largest key
    chosen = keys >= threshold[:, None]
    found = chosen.sum(axis=1)
    tied = np.flatnonzero(found != counts)  # float32 ties at the threshold: rare, fix those rows exactly
    if tied.size:
        order = np.argsort(-keys[tied], axis=1, kind="stable")
        exact = np.zeros((tied.size, n_columns), dtype=bool)
        np.put_along_axis(exact, order, np.arange(n_columns) < counts[tied][:, None], axis=1)
        chosen[tied] = exact
    rows, columns = np.nonzero(chosen)
    return rows, columns


def movies_frame(world: World) -> pl.DataFrame:
    """The catalog in canonical form, via MovieLens-style titles ("Synthetic Movie 7 (1994)")."""
    n_movies = len(world.release_year)
    genre_names = pl.Series("genre", GENRES)
    movie_index, genre_index = np.nonzero(world.movie_genres)
    genres = (
        pl.DataFrame({"movie_id": movie_index + 1, "genre": genre_names.gather(genre_index)})
        .group_by("movie_id", maintain_order=True)
        .agg(pl.col("genre").sort())
    )
    source = pl.DataFrame(
        {"movie_id": np.arange(1, n_movies + 1, dtype=np.int64), "year": world.release_year}
    ).with_columns(pl.format("Synthetic Movie {} ({})", "movie_id", "year").alias("source_title"))
    title, year = split_title_year(pl.col("source_title"))
    return source.select("movie_id", title.alias("title"), year.alias("release_year")).join(
        genres.select(pl.col("movie_id").cast(pl.Int64), pl.col("genre").alias("genres")), on="movie_id"
    )


def generate_synthetic(n_ratings: int, out: Path, seed: int = DEFAULT_SEED) -> SyntheticStats:
    """Write canonical ``movies.parquet`` and ``ratings.parquet`` (sorted) with ``n_ratings`` ratings to ``out``."""
    world = make_world(n_ratings, seed)
    n_users, n_movies = len(world.user_counts), len(world.release_year)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_parquet_atomic(to_canonical(movies_frame(world), "movies"), canonical_path(out, "movies"))

    block_users = max(1, BLOCK_CELLS // n_movies)
    rated = np.zeros(n_movies, dtype=bool)
    seeds = np.random.SeedSequence([seed, 1]).spawn((n_users + block_users - 1) // block_users)
    with tempfile.TemporaryDirectory(dir=out, prefix=".synthetic-") as scratch:
        unsorted = Path(scratch) / "ratings-unsorted.parquet"
        with pq.ParquetWriter(unsorted, RATINGS_SCHEMA, compression="zstd") as writer:
            for block, block_seed in enumerate(seeds):  # a loop over user blocks
                users = np.arange(block * block_users, min(n_users, (block + 1) * block_users))
                table = generate_ratings(world, users, np.random.default_rng(block_seed))
                rated[table["movie_id"].to_numpy() - 1] = True
                writer.write_table(table)
        first, last = _sort_ratings(unsorted, canonical_path(out, "ratings"), Path(scratch))
    return SyntheticStats(
        n_ratings=n_ratings,
        n_users=int((world.user_counts > 0).sum()),
        n_movies=n_movies,
        n_rated_movies=int(rated.sum()),
        first_rating=first,
        last_rating=last,
    )


def _sort_ratings(unsorted: Path, final: Path, scratch: Path) -> tuple[datetime | None, datetime | None]:
    """Sort by (event_timestamp, user_id, movie_id) out of core with DuckDB; write ``final`` atomically."""
    connection = duckdb.connect(config={"memory_limit": "2GB", "temp_directory": str(scratch / "duckdb")})
    try:
        connection.execute("SET TimeZone = 'UTC'")
        with atomic_path(final) as temporary:
            connection.execute(
                f"COPY (SELECT * FROM read_parquet({_sql_string(unsorted)}) "
                "ORDER BY event_timestamp, user_id, movie_id) "
                f"TO {_sql_string(temporary)} (FORMAT parquet, COMPRESSION zstd)"
            )
        first, last = connection.execute(
            "SELECT min(event_timestamp), max(event_timestamp) FROM read_parquet(?)", [str(final)]
        ).fetchone()  # type: ignore[misc]
    finally:
        connection.close()
    return first, last


def _sql_string(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"
