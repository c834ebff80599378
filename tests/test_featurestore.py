"""Feast feature store: materialize serving files, read them back online (sqlite and Redis), push, `feast apply`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal

from starling.cli import cli
from starling.config import REPO_ROOT, Settings
from starling.featurestore import (
    USER_PUSH_SOURCE,
    FeatureStoreError,
    get_feature_store,
    materialize,
    read_online_features,
)

GENRES = np.array(["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi", "Thriller"])
REDIS_ADDRESS = "127.0.0.1:6379"


# ----------------------------------------------------------------------------------------------- helpers
def _with_nulls(frame: pl.DataFrame, rng: np.random.Generator, skip: set[str]) -> pl.DataFrame:
    """Null ~20% of each feature column, and every feature of the first row (a known but empty entity)."""
    null_rate = 0.2
    mask = rng.random((frame.height, frame.width)) < null_rate
    mask[0, :] = True
    return frame.with_columns(
        pl.when(pl.Series(mask[:, i])).then(None).otherwise(pl.col(name)).alias(name)
        for i, name in enumerate(frame.columns)
        if name not in skip
    )


def make_feature_files(
    features_dir: Path, n_users: int, n_movies: int, seed: int = 7
) -> tuple[pl.DataFrame, ...]:
    """Write user_features.parquet and movie_features.parquet per the feature contract; returns both frames."""
    rng = np.random.default_rng(seed)
    base = datetime(1996, 3, 29, tzinfo=UTC)

    def timestamps(n: int) -> pl.Series:
        offsets = rng.integers(0, 22 * 365 * 86_400, n)
        return pl.Series([base]).dt.cast_time_unit("us").extend_constant(base, n - 1) + pl.Series(
            offsets * 1_000_000
        ).cast(pl.Duration("us"))

    users = pl.DataFrame(
        {
            "user_id": np.arange(1, n_users + 1, dtype=np.int64) * 3,
            "event_timestamp": timestamps(n_users),
            "user_rating_count": rng.integers(1, 500, n_users),
            "user_avg_rating": rng.uniform(0.5, 5, n_users),
            "user_rating_stddev": rng.uniform(0, 2, n_users),
            "user_avg_release_year": rng.uniform(1950, 2018, n_users),
            "user_release_year_stddev": rng.uniform(0, 20, n_users),
            **{f"user_genre{i}": rng.choice(GENRES, n_users) for i in range(1, 6)},
            **{f"user_liked_movie{i}": rng.integers(1, 200_000, n_users) for i in range(1, 6)},
        }
    )
    movies = pl.DataFrame(
        {
            "movie_id": np.arange(1, n_movies + 1, dtype=np.int64) * 5,
            "event_timestamp": timestamps(n_movies),
            "movie_release_year": rng.integers(1900, 2018, n_movies).astype(np.int32),
            **{f"movie_genre{i}": rng.choice(GENRES, n_movies) for i in range(1, 4)},
            "movie_rating_count": rng.integers(0, 300, n_movies),
            "movie_avg_rating": rng.uniform(0.5, 5, n_movies),
            "movie_rating_stddev": rng.uniform(0, 2, n_movies),
        }
    )
    users = _with_nulls(users, rng, skip={"user_id", "event_timestamp"})
    movies = _with_nulls(movies, rng, skip={"movie_id", "event_timestamp"})
    features_dir.mkdir(parents=True, exist_ok=True)
    users.write_parquet(features_dir / "user_features.parquet")
    movies.write_parquet(features_dir / "movie_features.parquet")
    return users, movies


def assert_online_equals_offline(online: list[dict], offline: pl.DataFrame) -> None:
    """Every feature column of the online rows equals the parquet rows, nulls included."""
    expected = offline.drop("event_timestamp")
    got = pl.DataFrame(online, schema={"found": pl.Boolean, **expected.schema})
    assert got["found"].all(), "an entity written to the online store was not found"
    assert_frame_equal(got.drop("found"), expected)


def check_roundtrip(
    workdir: Path, users: pl.DataFrame, movies: pl.DataFrame, settings: Settings | None
) -> None:
    sample_users = users.sample(min(users.height, 40), seed=1)
    sample_movies = movies.sample(min(movies.height, 200), seed=2)
    # the first rows have every feature null: they must come back as found, with nulls
    sample_users = pl.concat([users.head(1), sample_users]).unique("user_id", maintain_order=True)
    sample_movies = pl.concat([movies.head(1), sample_movies]).unique("movie_id", maintain_order=True)
    online = read_online_features(
        workdir, sample_users["user_id"].to_list(), sample_movies["movie_id"].to_list(), settings=settings
    )
    assert_online_equals_offline(online["users"], sample_users)
    assert_online_equals_offline(online["movies"], sample_movies)


@pytest.fixture
def synthetic_workdir(tmp_path: Path) -> tuple[Path, pl.DataFrame, pl.DataFrame]:
    users, movies = make_feature_files(tmp_path / "features", n_users=60, n_movies=150)
    return tmp_path, users, movies


# ----------------------------------------------------------------------------------------------- sqlite
def test_materialize_then_read_back_matches_parquet_sqlite(synthetic_workdir) -> None:
    workdir, users, movies = synthetic_workdir
    report = materialize(workdir)

    assert report.rows_per_view == {"user_features": 60, "movie_features": 150}
    assert report.online_store == "sqlite"
    assert report.online_location == str(workdir / "feast" / "online.db")
    assert (workdir / "feast" / "online.db").is_file() and (workdir / "feast" / "registry.db").is_file()
    assert "user_features=60" in report.summary() and "movie_features=150" in report.summary()
    check_roundtrip(workdir, users, movies, settings=None)


def test_unknown_ids_come_back_not_found_with_null_features(synthetic_workdir) -> None:
    workdir, users, movies = synthetic_workdir
    materialize(workdir)
    known_user, known_movie = int(users["user_id"][5]), int(movies["movie_id"][5])

    online = read_online_features(workdir, user_ids=[-1, known_user], movie_ids=[999_999_999, known_movie])

    unknown_user, found_user = online["users"]
    assert unknown_user["user_id"] == -1 and unknown_user["found"] is False
    assert all(value is None for key, value in unknown_user.items() if key not in ("user_id", "found"))
    assert found_user["found"] is True and found_user["user_id"] == known_user
    assert [row["movie_id"] for row in online["movies"]] == [999_999_999, known_movie]
    assert [row["found"] for row in online["movies"]] == [False, True]
    assert read_online_features(workdir, user_ids=[], movie_ids=[]) == {"users": [], "movies": []}


def test_push_updates_the_online_user_row(synthetic_workdir) -> None:
    workdir, users, _ = synthetic_workdir
    materialize(workdir)
    existing = int(users["user_id"][3])
    new_user = 424_242
    pushed = users.head(2).with_columns(
        pl.Series("user_id", [existing, new_user]),
        pl.lit(datetime.now(UTC)).dt.cast_time_unit("us").alias("event_timestamp"),
        pl.Series("user_rating_count", [777, 1]),
        pl.Series("user_genre1", ["Film-Noir", None]),
        pl.Series("user_liked_movie1", [123, None], dtype=pl.Int64),
    )

    get_feature_store(workdir).push(USER_PUSH_SOURCE, pushed.to_pandas())

    online = read_online_features(workdir, user_ids=[existing, new_user], movie_ids=[])
    assert_online_equals_offline(online["users"], pushed)


def test_cli_online_prints_json(synthetic_workdir) -> None:
    workdir, users, movies = synthetic_workdir
    runner = CliRunner()
    assert runner.invoke(cli, ["features", "materialize", str(workdir)]).exit_code == 0
    user_id, movie_id = int(users["user_id"][1]), int(movies["movie_id"][1])

    result = runner.invoke(
        cli, ["features", "online", str(workdir), "--user", str(user_id), "--movie", str(movie_id)]
    )

    assert result.exit_code == 0, result.output
    assert f'"user_id": {user_id}' in result.output and f'"movie_id": {movie_id}' in result.output


# ----------------------------------------------------------------------------------------------- redis
@pytest.fixture
def redis_settings():
    """Settings pointing at the real Redis, with a project name of its own; its keys are deleted afterwards."""
    import redis

    client = redis.Redis.from_url(f"redis://{REDIS_ADDRESS}")
    try:
        client.ping()
    except redis.exceptions.ConnectionError as exc:
        pytest.fail(
            f"Redis is not reachable at {REDIS_ADDRESS} (start redis-server for the `redis` tests): {exc}"
        )
    project = f"starling_test_{uuid.uuid4().hex[:12]}"
    yield Settings(online_store="redis", redis_connection_string=REDIS_ADDRESS, feast_project=project)
    pattern = b"*" + project.encode()  # Feast ends each entity key with the project name
    for key in client.scan_iter(pattern):
        client.delete(key)
    assert not list(client.scan_iter(pattern))


@pytest.mark.redis
def test_materialize_then_read_back_matches_parquet_redis(synthetic_workdir, redis_settings) -> None:
    import redis

    workdir, users, movies = synthetic_workdir
    report = materialize(workdir, settings=redis_settings)

    assert report.online_store == "redis" and report.online_location == f"redis://{REDIS_ADDRESS}"
    assert not (workdir / "feast" / "online.db").exists()
    keys = list(
        redis.Redis.from_url(f"redis://{REDIS_ADDRESS}").scan_iter(
            b"*" + redis_settings.feast_project.encode()
        )
    )
    assert len(keys) == users.height + movies.height
    check_roundtrip(workdir, users, movies, settings=redis_settings)


def test_unreachable_redis_is_a_clear_error(synthetic_workdir) -> None:
    workdir, _, _ = synthetic_workdir
    settings = Settings(online_store="redis", redis_connection_string="127.0.0.1:1")
    with pytest.raises(FeatureStoreError, match=r"cannot reach the online store at redis://127\.0\.0\.1:1"):
        materialize(workdir, settings=settings)


# ------------------------------------------------------------------------------------------- feast apply
@pytest.mark.slow  # the feast CLI imports for ~15 s on a busy 2-core machine
def test_feast_apply_by_hand_registers_the_views(tmp_path: Path) -> None:
    """The repo works with the bare `feast` CLI: feature_store.yaml standalone, sources from $STARLING_FEATURES_DIR."""
    from feast import FeatureStore

    repo = tmp_path / "feature_repo"
    shutil.copytree(REPO_ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    make_feature_files(tmp_path / "features", n_users=5, n_movies=5)
    env = {**os.environ, "STARLING_FEATURES_DIR": str(tmp_path / "features")}
    feast_cli = Path(sys.executable).with_name("feast")

    result = subprocess.run(
        [str(feast_cli), "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )

    assert result.returncode == 0, result.stdout + result.stderr
    store = FeatureStore(repo_path=str(repo))
    assert {fv.name for fv in store.list_feature_views()} == {"user_features", "movie_features"}
    assert store.get_feature_service("ranking_model") is not None
    source = store.get_data_source("user_features_source")
    assert source.path == str(tmp_path / "features" / "user_features.parquet")
    assert (repo / "data" / "registry.db").is_file()


def test_definitions_default_to_the_repo_data_dir_and_match_the_reader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import importlib.util

    from starling import featurestore

    monkeypatch.delenv("STARLING_FEATURES_DIR", raising=False)
    spec = importlib.util.spec_from_file_location(
        "defs_default", REPO_ROOT / "feature_repo" / "definitions.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)

    assert module.user_source.path == str(REPO_ROOT / "feature_repo" / "data" / "user_features.parquet")
    assert module.movie_source.path == str(REPO_ROOT / "feature_repo" / "data" / "movie_features.parquet")
    assert module.user_features.stream_source.name == featurestore.USER_PUSH_SOURCE
    assert module.user_features.ttl == timedelta(0) and module.movie_features.ttl == timedelta(0)
    assert module.ranking_model.name == featurestore.RANKING_SERVICE
    assert {fv.name for fv in (module.user_features, module.movie_features)} == set(featurestore.VIEW_FILES)
    assert [p.name for p in module.ranking_model.feature_view_projections] == [
        featurestore.USER_VIEW,
        featurestore.MOVIE_VIEW,
    ]


# -------------------------------------------------------------------------------------------- bad input
def test_missing_feature_files_say_to_build_first(tmp_path: Path) -> None:
    with pytest.raises(
        FeatureStoreError, match=r"user_features\.parquet: feature file missing; run `starling features build"
    ):
        materialize(tmp_path)
    result = CliRunner().invoke(cli, ["features", "materialize", str(tmp_path)])
    assert result.exit_code == 2
    assert "error:" in result.output and "starling features build" in result.output


def test_read_before_materialize_says_to_materialize(tmp_path: Path) -> None:
    with pytest.raises(
        FeatureStoreError, match=r"registry\.db: no Feast registry; run `starling features materialize"
    ):
        read_online_features(tmp_path, user_ids=[1], movie_ids=[])


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (
            lambda m: m.drop("movie_avg_rating"),
            r"movie_features\.parquet: missing column\(s\) movie_avg_rating",
        ),
        (
            lambda m: m.with_columns(pl.col("movie_rating_count").cast(pl.Float64)),
            r"wrong column type\(s\): movie_rating_count is Float64, expected Int64",
        ),
        (
            lambda m: m.with_columns(pl.col("event_timestamp").dt.strftime("%Y")),
            r"event_timestamp is String, expected Datetime",
        ),
        (
            lambda m: m.with_columns(
                pl.when(pl.int_range(pl.len()) == 4).then(None).otherwise("movie_id").alias("movie_id")
            ),
            r"1 row\(s\) with null movie_id \(row index 4\)",
        ),
        (
            lambda m: m.with_columns(
                pl.when(pl.int_range(pl.len()) == 2)
                .then(None)
                .otherwise("event_timestamp")
                .alias("event_timestamp")
            ),
            r"1 row\(s\) with null event_timestamp \(row index 2\)",
        ),
        (
            lambda m: pl.concat([m, m.slice(3, 1)]),
            r"1 movie_id value\(s\) appear more than once, e\.g\. movie_id=20 at row index 3, 10",
        ),
        (lambda m: m.clear(), r"no rows; nothing to materialize for movie_features"),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "timestamp-not-datetime",
        "null-key",
        "null-timestamp",
        "duplicate-key",
        "empty",
    ],
)
def test_bad_feature_files_are_rejected_with_file_and_reason(tmp_path: Path, corrupt, message: str) -> None:
    _, movies = make_feature_files(tmp_path / "features", n_users=5, n_movies=10)
    corrupt(movies).write_parquet(tmp_path / "features" / "movie_features.parquet")
    with pytest.raises(FeatureStoreError, match=message):
        materialize(tmp_path)
    assert not (tmp_path / "feast" / "online.db").exists(), "nothing may be written from a bad file"


def test_unreadable_parquet_is_rejected(tmp_path: Path) -> None:
    make_feature_files(tmp_path / "features", n_users=5, n_movies=5)
    (tmp_path / "features" / "user_features.parquet").write_text("user_id,event_timestamp\n1,2000-01-01\n")
    with pytest.raises(FeatureStoreError, match=r"user_features\.parquet: not a readable parquet file"):
        materialize(tmp_path)


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_ml_latest_small_end_to_end(ml_small_features: Path) -> None:
    workdir = ml_small_features
    users = pl.read_parquet(workdir / "features" / "user_features.parquet")
    movies = pl.read_parquet(workdir / "features" / "movie_features.parquet")

    report = materialize(workdir)

    assert report.rows_per_view == {"user_features": 610, "movie_features": 9742}
    check_roundtrip(workdir, users, movies, settings=None)
    assert pd.Timestamp(report.window[0]) < pd.Timestamp(users["event_timestamp"].min())
