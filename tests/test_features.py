"""`starling features build`: point-in-time feature values, leakage, splits, bad input, and ml-latest-small."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from click.testing import CliRunner

from starling.cli import cli
from starling.errors import StarlingError
from starling.features.build import (
    SplitConfig,
    build_features,
    compute_entity_features,
    compute_sample_features,
)
from starling.features.spec import (
    LIKED_MOVIE_FIELDS,
    MOVIE_FEATURE_COLUMNS,
    SAMPLE_COLUMNS,
    USER_FEATURE_COLUMNS,
    USER_GENRE_FIELDS,
)

T0 = datetime(2020, 1, 1, tzinfo=UTC)


def at(seconds: int) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_movies(rows: list[tuple[int, int | None, list[str]]]) -> pl.DataFrame:
    """Catalog in the canonical schema from (movie_id, release_year, genres)."""
    return pl.DataFrame(
        {
            "movie_id": [r[0] for r in rows],
            "title": [f"Movie {r[0]}" for r in rows],
            "release_year": [r[1] for r in rows],
            "genres": [r[2] for r in rows],
        },
        schema={
            "movie_id": pl.Int64,
            "title": pl.String,
            "release_year": pl.Int32,
            "genres": pl.List(pl.String),
        },
    )


def make_ratings(rows: list[tuple[int, int, float, int]]) -> pl.DataFrame:
    """Ratings in the canonical schema from (user_id, movie_id, rating, seconds after T0)."""
    return pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "movie_id": [r[1] for r in rows],
            "rating": [r[2] for r in rows],
            "event_timestamp": [at(r[3]) for r in rows],
        },
        schema={
            "user_id": pl.Int64,
            "movie_id": pl.Int64,
            "rating": pl.Float32,
            "event_timestamp": pl.Datetime("us", "UTC"),
        },
    )


def write_workdir(path: Path, ratings: pl.DataFrame, movies: pl.DataFrame) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    ratings.write_parquet(path / "ratings.parquet")
    movies.write_parquet(path / "movies.parquet")
    return path


# A hand-checked example. Likes are ratings >= 3.5. Timestamp ties: u1 at t=100 (two movies), and t=200
# (u1, u2 twice) — a sample never sees ratings at its own timestamp, not even the same user's.
TINY_MOVIES = make_movies(
    [
        (10, 1990, ["Comedy", "Drama"]),
        (20, 2000, ["Action", "Comedy", "Drama", "Thriller"]),
        (30, None, ["Drama"]),
        (40, 2010, []),
        (60, 1970, ["Western"]),  # never rated
    ]
)
TINY_RATINGS = make_ratings(
    [
        (1, 10, 4.0, 100),
        (1, 20, 5.0, 100),
        (2, 10, 3.0, 150),
        (1, 30, 2.0, 200),
        (2, 20, 3.5, 200),
        (2, 30, 4.0, 200),
        (1, 40, 4.5, 300),
        (3, 20, 1.0, 300),
        (2, 40, 5.0, 400),
    ]
)
N = None
SQRT_HALF = math.sqrt(0.5)
STD_5_35 = math.sqrt(1.125)  # sample stddev of (5.0, 3.5)
STD_4_5_2 = math.sqrt(7 / 3)  # sample stddev of (4, 5, 2)
STD_1990_2000 = math.sqrt(50.0)
# One expected value per sample row, rows in canonical order (time, user, movie) = the order of TINY_RATINGS.
TINY_EXPECTED: dict[str, list] = {
    "label": [1, 1, 0, 0, 1, 1, 1, 0, 1],
    "movie_release_year": [1990, 2000, 1990, N, 2000, N, 2010, 2000, 2010],
    "movie_genre1": ["Comedy", "Action", "Comedy", "Drama", "Action", "Drama", N, "Action", N],
    "movie_genre2": ["Drama", "Comedy", "Drama", N, "Comedy", N, N, "Comedy", N],
    "movie_genre3": [N, "Drama", N, N, "Drama", N, N, "Drama", N],
    "movie_rating_count": [0, 0, 1, 0, 1, 0, 0, 2, 1],
    "movie_avg_rating": [N, N, 4.0, N, 5.0, N, N, 4.25, 4.5],
    "movie_rating_stddev": [N, N, N, N, N, N, N, STD_5_35, N],
    "user_rating_count": [0, 0, 0, 2, 1, 1, 3, 0, 3],
    "user_avg_rating": [N, N, N, 4.5, 3.0, 3.0, 11 / 3, N, 3.5],
    "user_rating_stddev": [N, N, N, SQRT_HALF, N, N, STD_4_5_2, N, 0.5],
    "user_avg_release_year": [N, N, N, 1995.0, 1990.0, 1990.0, 1995.0, N, 1995.0],
    "user_release_year_stddev": [N, N, N, STD_1990_2000, N, N, STD_1990_2000, N, STD_1990_2000],
    "user_genre1": [N, N, N, "Comedy", N, N, "Comedy", N, "Drama"],
    "user_genre2": [N, N, N, "Drama", N, N, "Drama", N, "Action"],
    "user_genre3": [N, N, N, "Action", N, N, "Action", N, "Comedy"],
    "user_genre4": [N, N, N, "Thriller", N, N, "Thriller", N, "Thriller"],
    "user_genre5": [N] * 9,
    "user_liked_movie1": [N, N, N, 20, N, N, 20, N, 30],
    "user_liked_movie2": [N, N, N, 10, N, N, 10, N, 20],
    "user_liked_movie3": [N] * 9,
    "user_liked_movie4": [N] * 9,
    "user_liked_movie5": [N] * 9,
}


def assert_column_equals(frame: pl.DataFrame, column: str, expected: list) -> None:
    actual = frame[column].to_list()
    assert len(actual) == len(expected), column
    for row, (got, want) in enumerate(zip(actual, expected, strict=True)):
        if want is None or isinstance(want, str | int):
            assert got == want, f"{column} row {row}: got {got!r}, want {want!r}"
        else:
            assert got == pytest.approx(want, rel=1e-12), f"{column} row {row}: got {got!r}, want {want!r}"


@pytest.fixture(scope="module")
def tiny_samples() -> pl.DataFrame:
    return compute_sample_features(TINY_RATINGS, TINY_MOVIES)


@pytest.mark.parametrize("column", list(TINY_EXPECTED))
def test_tiny_example_exact_values(tiny_samples: pl.DataFrame, column: str) -> None:
    assert (
        tiny_samples.select("user_id", "movie_id").rows() == TINY_RATINGS.select("user_id", "movie_id").rows()
    )
    assert_column_equals(tiny_samples, column, TINY_EXPECTED[column])


def test_sample_schema_matches_the_contract(tiny_samples: pl.DataFrame) -> None:
    assert tiny_samples.columns == [c for c in SAMPLE_COLUMNS if c != "split"]
    schema = tiny_samples.schema
    assert schema["event_timestamp"] == pl.Datetime("us", "UTC")
    assert schema["rating"] == pl.Float32 and schema["label"] == pl.Int8
    assert schema["movie_release_year"] == pl.Int32
    for column in ("movie_rating_count", "user_rating_count", *LIKED_MOVIE_FIELDS):
        assert schema[column] == pl.Int64, column
    for column in ("movie_avg_rating", "movie_rating_stddev", "user_avg_release_year", "user_rating_stddev"):
        assert schema[column] == pl.Float64, column
    for column in ("movie_genre1", *USER_GENRE_FIELDS):
        assert schema[column] == pl.String, column


def test_user_genres_tie_break_by_recent_like_then_name() -> None:
    movies = make_movies([(1, 2000, ["Action"]), (2, 2000, ["Drama"]), (3, 2000, ["Comedy", "Western"])])
    ratings = make_ratings(
        [
            (7, 1, 4.0, 10),  # Action liked first
            (7, 2, 4.0, 20),  # Drama liked later: same count as Action, more recent -> before Action
            (7, 3, 4.0, 30),  # Comedy and Western: same count, same time -> by name
            (7, 1, 2.0, 40),  # not a like: changes nothing
            (7, 2, 3.0, 50),
        ]
    )
    samples = compute_sample_features(ratings, movies)
    assert samples.select(USER_GENRE_FIELDS).rows() == [
        (None,) * 5,
        ("Action", None, None, None, None),
        ("Drama", "Action", None, None, None),
        ("Comedy", "Western", "Drama", "Action", None),
        ("Comedy", "Western", "Drama", "Action", None),
    ]
    assert samples.select(LIKED_MOVIE_FIELDS[:3]).rows()[-1] == (3, 2, 1)


def test_more_than_five_likes_keep_the_five_most_recent_and_most_frequent_genres() -> None:
    genres = ["A", "B", "C", "D", "E", "F"]
    movies = make_movies([(i, 2000, genres[: 7 - i]) for i in range(1, 7)])  # movie 1 has all six genres
    ratings = make_ratings([(1, i, 5.0, i) for i in range(1, 7)] + [(1, 1, 1.0, 100)])
    last = compute_sample_features(ratings, movies).row(-1, named=True)
    assert [last[f] for f in LIKED_MOVIE_FIELDS] == [6, 5, 4, 3, 2]
    # counts A 6, B 5, C 4, D 3, E 2, F 1
    assert [last[f] for f in USER_GENRE_FIELDS] == ["A", "B", "C", "D", "E"]


def random_canonical(
    n_ratings: int, n_users: int, n_movies: int, seed: int
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Small random ratings with many timestamp ties, in the canonical schema."""
    rng = np.random.default_rng(seed)
    genre_names = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    movies = make_movies(
        [
            (
                int(m),
                None if m % 7 == 0 else int(1950 + rng.integers(0, 70)),
                list(rng.choice(genre_names, size=int(rng.integers(0, 4)), replace=False)),
            )
            for m in range(1, n_movies + 1)
        ]
    )
    frame = pl.DataFrame(
        {
            "user_id": rng.integers(1, n_users + 1, n_ratings),
            "movie_id": rng.integers(1, n_movies + 1, n_ratings),
            "rating": (rng.integers(1, 11, n_ratings) / 2).astype(np.float32),
            "event_timestamp": (
                rng.integers(0, n_ratings // 4, n_ratings) * 1_000_000 + 1_600_000_000_000_000
            ),
        }
    ).with_columns(pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")))
    ratings = frame.unique(["user_id", "movie_id"], keep="first", maintain_order=True)
    return ratings.sort(["event_timestamp", "user_id", "movie_id"]), movies


def test_no_leakage_from_the_samples_own_or_later_ratings() -> None:
    """Changing a rating and everything after it leaves that sample's features (and earlier ones) as they were."""
    ratings, movies = random_canonical(3000, 40, 60, seed=1)
    before = compute_sample_features(ratings, movies)
    pivot_ts = ratings["event_timestamp"][ratings.height // 2]
    rng = np.random.default_rng(2)
    changed = ratings.with_columns(
        pl.when(pl.col("event_timestamp") >= pivot_ts)
        .then(pl.Series((rng.integers(1, 11, ratings.height) / 2).astype(np.float32)))
        .otherwise(pl.col("rating"))
        .alias("rating")
    )
    assert (changed["rating"] != ratings["rating"]).sum() > 100
    after = compute_sample_features(changed, movies)
    feature_columns = [*MOVIE_FEATURE_COLUMNS, *USER_FEATURE_COLUMNS]
    visible = pl.col("event_timestamp") <= pivot_ts
    assert (
        before.filter(visible).select(feature_columns).equals(after.filter(visible).select(feature_columns))
    )
    # and the change is seen later on, so the comparison is not vacuous
    later = ~visible
    assert (
        not before.filter(later).select(feature_columns).equals(after.filter(later).select(feature_columns))
    )


def test_latest_entity_features_equal_a_sample_right_after_the_last_rating() -> None:
    ratings, movies = random_canonical(2000, 30, 40, seed=3)
    user_features, movie_features = compute_entity_features(ratings, movies)
    assert user_features.columns == ["user_id", "event_timestamp", *USER_FEATURE_COLUMNS]
    assert movie_features.columns == ["movie_id", "event_timestamp", *MOVIE_FEATURE_COLUMNS]
    assert sorted(movie_features["movie_id"].to_list()) == sorted(movies["movie_id"].to_list())
    assert user_features["user_id"].to_list() == sorted(ratings["user_id"].unique().to_list())
    newest = ratings["event_timestamp"].max()
    # one probe rating per user, one second after the newest rating, of a probe movie
    probe_movies = pl.concat([movies, make_movies([(10_000, None, [])])])
    probes = user_features.select(
        "user_id",
        pl.lit(10_000, dtype=pl.Int64).alias("movie_id"),
        pl.lit(1.0, dtype=pl.Float32).alias("rating"),
        pl.lit(newest + timedelta(seconds=1)).alias("event_timestamp"),
    )
    probed = compute_sample_features(pl.concat([ratings, probes]), probe_movies)
    seen = probed.filter(pl.col("movie_id") == 10_000).sort("user_id").select(USER_FEATURE_COLUMNS)
    assert seen.equals(user_features.select(USER_FEATURE_COLUMNS))
    last_rating = ratings.group_by("user_id").agg(pl.col("event_timestamp").max()).sort("user_id")
    assert user_features["event_timestamp"].to_list() == last_rating["event_timestamp"].to_list()


def test_entity_features_of_the_tiny_example_and_as_of() -> None:
    users, movies = compute_entity_features(TINY_RATINGS, TINY_MOVIES)
    u1 = users.filter(pl.col("user_id") == 1).row(0, named=True)
    assert u1["user_rating_count"] == 4 and u1["user_avg_rating"] == pytest.approx(3.875)
    assert [u1[f] for f in LIKED_MOVIE_FIELDS] == [40, 20, 10, None, None]
    western = movies.filter(pl.col("movie_id") == 60).row(0, named=True)
    assert western["movie_rating_count"] == 0 and western["movie_avg_rating"] is None
    assert western["movie_genre1"] == "Western" and western["event_timestamp"] == at(400)
    assert movies.filter(pl.col("movie_id") == 20)["movie_rating_count"].item() == 3

    users_at, movies_at = compute_entity_features(TINY_RATINGS, TINY_MOVIES, as_of=at(200))
    assert users_at["user_id"].to_list() == [1, 2]  # user 3 rated only at t=300
    assert users_at.filter(pl.col("user_id") == 1)["user_rating_count"].item() == 2  # t=200 not included
    assert movies_at.filter(pl.col("movie_id") == 60)["event_timestamp"].item() == at(200)
    users_none, movies_none = compute_entity_features(TINY_RATINGS, TINY_MOVIES, as_of=at(0))
    assert users_none.height == 0 and movies_none["movie_rating_count"].to_list() == [0] * 5
    with pytest.raises(StarlingError, match="no time zone"):
        compute_entity_features(TINY_RATINGS, TINY_MOVIES, as_of=datetime(2020, 1, 1))


# ------------------------------------------------------------------------------------------------- splits
def test_time_split_cutoffs_and_counts(tmp_path: Path) -> None:
    ratings, movies = random_canonical(4000, 50, 80, seed=4)
    workdir = write_workdir(tmp_path / "w", ratings, movies)
    report = build_features(workdir, SplitConfig(kind="time", valid_frac=0.2, test_frac=0.1))
    samples = pl.read_parquet(workdir / "features" / "samples.parquet")
    split_json = json.loads((workdir / "features" / "split.json").read_text())
    valid_cut = datetime.fromisoformat(split_json["valid_cutoff"])
    test_cut = datetime.fromisoformat(split_json["test_cutoff"])
    assert report.split.valid_cutoff == valid_cut and report.split.test_cutoff == test_cut
    by_split = {
        name: samples.filter(pl.col("split") == name)["event_timestamp"]
        for name in ("train", "valid", "test")
    }
    assert by_split["train"].max() < valid_cut <= by_split["valid"].min()
    assert by_split["valid"].max() < test_cut <= by_split["test"].min()
    counts = {name: series.len() for name, series in by_split.items()}
    assert counts == split_json["counts"] == report.split.counts
    n = samples.height
    # ties at a cut-off go to the later split: at least the asked share, at most the tied rows more
    assert round(0.1 * n) <= counts["test"] <= round(0.1 * n) + (samples["event_timestamp"] == test_cut).sum()
    assert counts["valid"] + counts["test"] >= round(0.3 * n)


def test_leave_last_out_split(tmp_path: Path) -> None:
    ratings = make_ratings(
        [(1, 10, 4.0, 1), (1, 20, 4.0, 2), (1, 30, 4.0, 3), (1, 40, 4.0, 3), (2, 10, 3.0, 1), (2, 20, 3.0, 5)]
    )
    movies = TINY_MOVIES
    workdir = write_workdir(tmp_path / "w", ratings, movies)
    report = build_features(workdir, SplitConfig(kind="leave-last-out"))
    samples = pl.read_parquet(workdir / "features" / "samples.parquet").sort(
        "user_id", "event_timestamp", "movie_id"
    )
    # user 1: ties at t=3 -> higher movie id is the last; user 2 has fewer than 3 ratings -> all train
    assert samples.select("user_id", "movie_id", "split").rows() == [
        (1, 10, "train"),
        (1, 20, "train"),
        (1, 30, "valid"),
        (1, 40, "test"),
        (2, 10, "train"),
        (2, 20, "train"),
    ]
    assert report.split.counts == {"train": 4, "valid": 1, "test": 1}
    assert report.split.valid_cutoff is None


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"kind": "random"}, "split kind"),
        ({"valid_frac": -0.1}, "valid_frac"),
        ({"test_frac": 1.0}, "test_frac"),
        ({"valid_frac": 0.5, "test_frac": 0.5}, "must be below 1"),
    ],
)
def test_bad_split_config(config: dict, message: str) -> None:
    with pytest.raises(StarlingError, match=message):
        SplitConfig(**config)


# ---------------------------------------------------------------------------------------------- bad input
def test_missing_inputs_say_to_ingest_first(tmp_path: Path) -> None:
    with pytest.raises(StarlingError, match=r"ratings\.parquet: not found \(run `starling data ingest"):
        build_features(tmp_path)
    result = CliRunner().invoke(cli, ["features", "build", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "starling data ingest" in result.output


def test_unreadable_parquet(tmp_path: Path) -> None:
    write_workdir(tmp_path, TINY_RATINGS, TINY_MOVIES)
    (tmp_path / "movies.parquet").write_text("user_id,movie_id\n1,2\n")
    with pytest.raises(StarlingError, match=r"movies\.parquet: not a readable parquet file"):
        build_features(tmp_path)


@pytest.mark.parametrize(
    ("ratings", "message"),
    [
        (TINY_RATINGS.drop("rating"), r"ratings\.parquet: missing columns \['rating'\]"),
        (TINY_RATINGS.with_columns(pl.col("rating").cast(pl.String)), "column 'rating' has type String"),
        (
            TINY_RATINGS.with_columns(pl.col("event_timestamp").dt.replace_time_zone(None)),
            "column 'event_timestamp' has type Datetime.*expected timestamp with time zone UTC",
        ),
        (
            TINY_RATINGS.with_columns(
                pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise("user_id").alias("user_id")
            ),
            "row 4: user_id is null",
        ),
        (
            TINY_RATINGS.with_columns(
                pl.when(pl.int_range(pl.len()) == 2).then(float("nan")).otherwise("rating").alias("rating")
            ),
            "row 2: rating nan is not a finite number",
        ),
        (
            TINY_RATINGS.with_columns(
                pl.when(pl.int_range(pl.len()) == 6).then(999).otherwise("movie_id").alias("movie_id")
            ),
            r"row 6: movie_id 999 is not in the movie catalog \(1 ratings",
        ),
        (TINY_RATINGS.clear(), "no ratings"),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "naive-timestamp",
        "null-user",
        "nan-rating",
        "unknown-movie",
        "empty",
    ],
)
def test_bad_ratings_are_reported(tmp_path: Path, ratings: pl.DataFrame, message: str) -> None:
    write_workdir(tmp_path, ratings, TINY_MOVIES)
    with pytest.raises(StarlingError, match=message):
        build_features(tmp_path)
    assert not (tmp_path / "features").exists()


@pytest.mark.parametrize(
    ("movies", "message"),
    [
        (
            TINY_MOVIES.with_columns(pl.col("genres").list.join("|")),
            "column 'genres' has type String, expected list<string>",
        ),
        (
            pl.concat([TINY_MOVIES, TINY_MOVIES.head(1)]),
            r"row 5: movie_id 10 appears again \(first at row 0\)",
        ),
        (
            TINY_MOVIES.with_columns(
                pl.when(pl.col("movie_id") == 30)
                .then(pl.lit(["Drama", None]))
                .otherwise("genres")
                .alias("genres")
            ),
            r"row 2: movie_id 30 has a null or empty genre name in \['Drama', None\]",
        ),
    ],
    ids=["genres-not-list", "duplicate-movie", "null-genre"],
)
def test_bad_movies_are_reported(tmp_path: Path, movies: pl.DataFrame, message: str) -> None:
    write_workdir(tmp_path, TINY_RATINGS, movies)
    with pytest.raises(StarlingError, match=message):
        build_features(tmp_path)


def test_failed_rebuild_keeps_previous_features(tmp_path: Path) -> None:
    write_workdir(tmp_path, TINY_RATINGS, TINY_MOVIES)
    build_features(tmp_path)
    before = (tmp_path / "features" / "feature_spec.json").read_text()
    write_workdir(tmp_path, TINY_RATINGS.drop("rating"), TINY_MOVIES)
    with pytest.raises(StarlingError):
        build_features(tmp_path)
    assert (tmp_path / "features" / "feature_spec.json").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["features", "movies.parquet", "ratings.parquet"]


# ------------------------------------------------------------------------------------------ ml-latest-small
BRUTE_FORCE_SQL = """
WITH s AS (SELECT * FROM probe),
r AS (SELECT r.*, m.release_year, m.genres FROM ratings r JOIN movies m USING (movie_id)),
movie_stats AS (
  SELECT s.row_id, count(r.rating) AS movie_rating_count, avg(r.rating) AS movie_avg_rating,
         stddev_samp(r.rating) AS movie_rating_stddev
  FROM s LEFT JOIN r ON r.movie_id = s.movie_id AND r.event_timestamp < s.event_timestamp GROUP BY s.row_id),
user_stats AS (
  SELECT s.row_id, count(r.rating) AS user_rating_count, avg(r.rating) AS user_avg_rating,
         stddev_samp(r.rating) AS user_rating_stddev, avg(r.release_year) AS user_avg_release_year,
         stddev_samp(r.release_year) AS user_release_year_stddev,
         list(r.movie_id ORDER BY r.event_timestamp DESC, r.movie_id DESC) FILTER (r.rating >= 3.5) AS liked
  FROM s LEFT JOIN r ON r.user_id = s.user_id AND r.event_timestamp < s.event_timestamp GROUP BY s.row_id),
genre_counts AS (
  SELECT s.row_id, g.genre, count(*) AS n, max(r.event_timestamp) AS last_like
  FROM s JOIN r ON r.user_id = s.user_id AND r.event_timestamp < s.event_timestamp AND r.rating >= 3.5,
       unnest(r.genres) AS g(genre)
  GROUP BY s.row_id, g.genre),
top_genres AS (
  SELECT row_id, list(genre ORDER BY n DESC, last_like DESC, genre) AS genres FROM genre_counts GROUP BY row_id)
SELECT s.row_id, movie_stats.* EXCLUDE (row_id), user_stats.* EXCLUDE (row_id, liked),
       coalesce(user_stats.liked, []) AS liked, coalesce(top_genres.genres, []) AS genres
FROM s JOIN movie_stats USING (row_id) JOIN user_stats USING (row_id) LEFT JOIN top_genres USING (row_id)
ORDER BY s.row_id
"""


def test_ml_latest_small_build_matches_brute_force(ml_small_features: Path) -> None:
    features = ml_small_features / "features"
    samples = pl.read_parquet(features / "samples.parquet")
    ratings = pl.read_parquet(ml_small_features / "ratings.parquet")
    movies = pl.read_parquet(ml_small_features / "movies.parquet")
    assert samples.height == ratings.height == 100_836
    assert samples.columns == list(SAMPLE_COLUMNS)
    assert samples.select("user_id", "movie_id", "event_timestamp").equals(
        ratings.select("user_id", "movie_id", "event_timestamp")
    )
    assert set(samples["split"].unique()) == {"train", "valid", "test"}
    assert pl.read_parquet(features / "movie_features.parquet").height == movies.height == 9_742
    assert pl.read_parquet(features / "user_features.parquet").height == 610

    probe = samples.with_row_index("row_id").sample(200, seed=7)
    expected = _brute_force(probe, ratings, movies)
    actual = probe.sort("row_id")
    for column in ("movie_rating_count", "user_rating_count"):
        assert actual[column].to_list() == expected[column].to_list(), column
    for column in (
        "movie_avg_rating",
        "movie_rating_stddev",
        "user_avg_rating",
        "user_rating_stddev",
        "user_avg_release_year",
        "user_release_year_stddev",
    ):
        got, want = actual[column].to_numpy(), expected[column].cast(pl.Float64).to_numpy()
        assert np.array_equal(np.isnan(got), np.isnan(want)), column
        np.testing.assert_allclose(got[~np.isnan(got)], want[~np.isnan(want)], rtol=1e-9, err_msg=column)
    liked = actual.select(pl.concat_list(LIKED_MOVIE_FIELDS).list.drop_nulls().alias("x"))["x"].to_list()
    assert liked == [row[:5] for row in expected["liked"].to_list()]
    genres = actual.select(pl.concat_list(USER_GENRE_FIELDS).list.drop_nulls().alias("x"))["x"].to_list()
    assert genres == [row[:5] for row in expected["genres"].to_list()]
    assert (actual["user_rating_count"] > 0).sum() > 150  # the probe is not only first ratings


def _brute_force(probe: pl.DataFrame, ratings: pl.DataFrame, movies: pl.DataFrame) -> pl.DataFrame:
    connection = duckdb.connect()
    connection.register("probe", probe.select("row_id", "user_id", "movie_id", "event_timestamp").to_arrow())
    connection.register("ratings", ratings.to_arrow())
    connection.register("movies", movies.to_arrow())
    return connection.sql(BRUTE_FORCE_SQL).pl()


def test_feedback_from_the_event_log_joins_the_next_build(tmp_path: Path) -> None:
    """Ratings recorded online (starling/events.py) are training data for the next `features build`;
    a movie rated again counts with its latest rating."""
    from datetime import UTC, datetime

    from starling.data.ingest import ingest
    from starling.events import RATING_STREAM, append
    from starling.features.build import SplitConfig, build_features

    ingest("synthetic:3000", tmp_path)
    ratings = pl.read_parquet(tmp_path / "ratings.parquet")
    first = ratings.row(0, named=True)
    rated = ratings.filter(pl.col("user_id") == first["user_id"])["movie_id"]
    new_movie = int(ratings.filter(~pl.col("movie_id").is_in(rated.implode()))["movie_id"][0])
    when = datetime(2030, 1, 1, tzinfo=UTC)
    append(
        tmp_path,
        RATING_STREAM,
        pl.DataFrame(
            {
                "user_id": [first["user_id"], first["user_id"], 7],
                "movie_id": [first["movie_id"], new_movie, new_movie],
                "rating": [1.0, 4.5, None],
                "event_timestamp": [when, when, when],
                "kind": ["rating", "rating", "click"],  # clicks are not ratings
            }
        ),
    )
    build_features(tmp_path, SplitConfig())
    samples = pl.read_parquet(tmp_path / "features" / "samples.parquet")
    assert samples.height == ratings.height + 1  # one re-rating (replaces), one new rating, the click ignored
    mine = samples.filter(pl.col("user_id") == first["user_id"])
    assert mine.filter(pl.col("movie_id") == first["movie_id"])["rating"].to_list() == [1.0]
    assert mine.filter(pl.col("movie_id") == new_movie)["rating"].to_list() == [4.5]
