"""Reading and checking the canonical inputs of the feature build (ratings.parquet, movies.parquet).

Every problem is raised as :class:`InputError` naming the file (or frame), the column, the row and the reason.
Row numbers are 0-based positions in the file as stored.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from starling.errors import StarlingError

RATINGS_FILE = "ratings.parquet"
MOVIES_FILE = "movies.parquet"


class InputError(StarlingError):
    """The canonical ratings/movies are missing or malformed."""


def load_inputs(workdir: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Read and check WORKDIR/ratings.parquet and WORKDIR/movies.parquet.

    Returns (ratings, movies) normalised to the contract's types, ratings sorted by
    (event_timestamp, user_id, movie_id).
    """
    workdir = Path(workdir)
    frames = []
    for name in (RATINGS_FILE, MOVIES_FILE):
        path = workdir / name
        if not path.is_file():
            raise InputError(f"{path}: not found (run `starling data ingest SOURCE --out {workdir}` first)")
        try:
            frames.append(pl.from_arrow(pq.read_table(path)))
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
    ratings, movies = frames
    movies = check_movies(movies, str(workdir / MOVIES_FILE))
    ratings = with_feedback(ratings, workdir)
    ratings = check_ratings(ratings, str(workdir / RATINGS_FILE), movies)
    return ratings, movies


def with_feedback(ratings: pl.DataFrame, workdir: Path) -> pl.DataFrame:
    """Ratings plus the explicit ratings recorded online (WORKDIR/events/ratings, see starling/events.py).

    A user who rated a movie again counts with the latest rating, as online serving does.
    """
    from starling.eventbus import open_event_log
    from starling.events import RATING_STREAM

    feedback = open_event_log(workdir).read_all(RATING_STREAM).filter(pl.col("kind") == "rating")
    if feedback.height == 0:
        return ratings
    columns = ["user_id", "movie_id", "rating", "event_timestamp"]
    merged = pl.concat(
        [ratings.select(columns), feedback.select(columns).cast(ratings.select(columns).schema)]
    )
    return (
        merged.sort("event_timestamp", maintain_order=True)
        .unique(["user_id", "movie_id"], keep="last", maintain_order=True)
        .sort(["event_timestamp", "user_id", "movie_id"])
    )


def _require_columns(df: pl.DataFrame, where: str, expected: dict[str, str]) -> None:
    missing = [name for name in expected if name not in df.columns]
    if missing:
        raise InputError(f"{where}: missing columns {missing}; expected {list(expected)}, found {df.columns}")


def _check_kind(df: pl.DataFrame, where: str, column: str, ok: bool, expected: str) -> None:
    if not ok:
        raise InputError(f"{where}: column {column!r} has type {df.schema[column]}, expected {expected}")


def _first_row(mask: pl.Series) -> int:
    """0-based index of the first True in a boolean series."""
    return int(mask.arg_true()[0])


def _reject_nulls(df: pl.DataFrame, where: str, columns: list[str]) -> None:
    for column in columns:
        nulls = df[column].is_null()
        if nulls.any():
            raise InputError(
                f"{where}: row {_first_row(nulls)}: {column} is null "
                f"({int(nulls.sum())} null {column} values in all)"
            )


MOVIE_COLUMNS = {"movie_id": "int64", "release_year": "int32", "genres": "list<string>"}
RATING_COLUMNS = {
    "user_id": "int64",
    "movie_id": "int64",
    "rating": "float32",
    "event_timestamp": "timestamp[us, UTC]",
}


def check_movies_schema(movies: pl.DataFrame, where: str) -> None:
    """The catalog's columns and their kinds (both engines check them before reading any row)."""
    _require_columns(movies, where, MOVIE_COLUMNS)
    schema = movies.schema
    _check_kind(movies, where, "movie_id", schema["movie_id"].is_integer(), "an integer type (int64)")
    _check_kind(movies, where, "release_year", schema["release_year"].is_integer(), "an integer type (int32)")
    genres_ok = isinstance(schema["genres"], pl.List) and schema["genres"].inner == pl.String
    _check_kind(movies, where, "genres", genres_ok, "list<string>")


def check_ratings_schema(ratings: pl.DataFrame, where: str) -> None:
    """The ratings' columns and their kinds (both engines check them before reading any row)."""
    _require_columns(ratings, where, RATING_COLUMNS)
    schema = ratings.schema
    for column in ("user_id", "movie_id"):
        _check_kind(ratings, where, column, schema[column].is_integer(), "an integer type (int64)")
    _check_kind(ratings, where, "rating", schema["rating"].is_float(), "a float type (float32)")
    ts_type = schema["event_timestamp"]
    ts_ok = isinstance(ts_type, pl.Datetime) and ts_type.time_zone == "UTC"
    _check_kind(ratings, where, "event_timestamp", ts_ok, "timestamp with time zone UTC")


def check_movies(movies: pl.DataFrame, where: str = "movies") -> pl.DataFrame:
    """Check the movie catalog's schema and content; return it with contract types."""
    check_movies_schema(movies, where)
    _reject_nulls(movies, where, ["movie_id", "genres"])
    movies = movies.with_columns(pl.col("movie_id").cast(pl.Int64), pl.col("release_year").cast(pl.Int32))
    repeated = ~movies["movie_id"].is_first_distinct()
    if repeated.any():
        row = _first_row(repeated)
        movie_id = movies["movie_id"][row]
        first = _first_row(movies["movie_id"] == movie_id)
        raise InputError(f"{where}: row {row}: movie_id {movie_id} appears again (first at row {first})")
    bad_genre = movies["genres"].list.eval(pl.element().is_null() | (pl.element() == "")).list.any()
    if bad_genre.any():
        row = _first_row(bad_genre)
        raise InputError(
            f"{where}: row {row}: movie_id {movies['movie_id'][row]} has a null or empty genre name in "
            f"{movies['genres'][row].to_list()}"
        )
    return movies


def check_ratings(ratings: pl.DataFrame, where: str, movies: pl.DataFrame) -> pl.DataFrame:
    """Check ratings against the contract and the catalog; return them typed and in canonical order."""
    check_ratings_schema(ratings, where)
    _reject_nulls(ratings, where, list(RATING_COLUMNS))
    ratings = ratings.select(
        pl.col("user_id").cast(pl.Int64),
        pl.col("movie_id").cast(pl.Int64),
        pl.col("rating").cast(pl.Float32),
        pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")),
    )
    not_finite = ~ratings["rating"].is_finite()
    if not_finite.any():
        row = _first_row(not_finite)
        raise InputError(f"{where}: row {row}: rating {ratings['rating'][row]} is not a finite number")
    unknown = ~ratings["movie_id"].is_in(movies["movie_id"].implode())
    if unknown.any():
        row = _first_row(unknown)
        raise InputError(
            f"{where}: row {row}: movie_id {ratings['movie_id'][row]} is not in the movie catalog "
            f"({int(unknown.sum())} ratings of unknown movies in all)"
        )
    if ratings.height == 0:
        raise InputError(f"{where}: no ratings")
    return ratings.sort(["event_timestamp", "user_id", "movie_id"], maintain_order=True)
