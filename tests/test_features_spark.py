"""`starling features build --engine spark`: the Spark engine writes what the polars engine writes.

Both engines build the same inputs into two workdirs, and every file is compared: the three Parquet files
column by column, with their types and row order (polars.testing.assert_frame_equal, exact: floats included,
no tolerance), split.json and feature_spec.json as parsed JSON. One local[2] Spark session (4 shuffle
partitions) serves the whole module.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from polars.testing import assert_frame_equal
from pyspark.sql import SparkSession
from test_features import TINY_MOVIES, TINY_RATINGS, random_canonical, write_workdir

from starling.cli import cli
from starling.errors import StarlingError
from starling.events import RATING_STREAM, append
from starling.features import spark_engine
from starling.features.build import SplitConfig, build_features
from starling.features.spark_engine import build_features_spark, check_master, spark_session

PARQUET_FILES = ("samples.parquet", "user_features.parquet", "movie_features.parquet")
JSON_FILES = ("split.json", "feature_spec.json")


@pytest.fixture(scope="module")
def spark() -> Iterator[SparkSession]:
    with spark_session("local[2]", shuffle_partitions=4) as session:
        yield session


def twin_workdirs(root: Path, ratings_dir: Path | None = None, **frames: pl.DataFrame) -> tuple[Path, Path]:
    """Two workdirs with the same inputs: copied from ``ratings_dir``, or written from ratings/movies."""
    pair = root / "polars", root / "spark"
    for workdir in pair:
        if ratings_dir is not None:
            workdir.mkdir(parents=True)
            for name in ("ratings.parquet", "movies.parquet"):
                shutil.copy(ratings_dir / name, workdir / name)
        else:
            write_workdir(workdir, frames["ratings"], frames["movies"])
    return pair


def assert_same_features(expected: Path, actual: Path) -> None:
    """Every file of WORKDIR/features equal: Parquet exactly (types, nulls, row order), JSON as parsed."""
    for name in PARQUET_FILES:
        want = pl.read_parquet(expected / "features" / name)
        got = pl.read_parquet(actual / "features" / name)
        assert got.height > 0, name
        assert_frame_equal(got, want, check_exact=True, check_row_order=True, check_column_order=True)
    for name in JSON_FILES:
        want = json.loads((expected / "features" / name).read_text())
        got = json.loads((actual / "features" / name).read_text())
        assert got == want, name
    assert sorted(p.name for p in (actual / "features").iterdir()) == sorted((*PARQUET_FILES, *JSON_FILES))
    leftovers = [p.name for p in actual.iterdir() if p.name.startswith(".")]
    assert not leftovers, f"scratch or temporary directories left behind: {leftovers}"


@pytest.mark.slow
def test_engines_agree_on_ml_latest_small(
    spark: SparkSession, ml_small_ingested: Path, tmp_path: Path
) -> None:
    polars_dir, spark_dir = twin_workdirs(tmp_path, ratings_dir=ml_small_ingested)
    build_features(polars_dir, SplitConfig())
    report = build_features_spark(spark_dir, SplitConfig(), spark=spark)
    assert report.samples == 100_836 and report.users == 610 and report.movies == 9_742
    assert_same_features(polars_dir, spark_dir)
    samples = pl.read_parquet(spark_dir / "features" / "samples.parquet")
    # the real data has ties: users rating several movies in the same second
    assert samples.select("user_id", "event_timestamp").is_duplicated().sum() > 10_000


@pytest.mark.slow
def test_engines_agree_with_timestamp_ties_feedback_and_both_splits(
    spark: SparkSession, tmp_path: Path
) -> None:
    """Synthetic ratings where most timestamps are shared (also within a user), movies without year or genres,
    a rating re-rated online and a new online rating at an existing timestamp; time and leave-last-out splits."""
    ratings, movies = random_canonical(4000, 50, 70, seed=11)
    assert ratings["event_timestamp"].is_duplicated().mean() > 0.8
    polars_dir, spark_dir = twin_workdirs(tmp_path, ratings=ratings, movies=movies)
    first = ratings.row(0, named=True)
    tied = ratings["event_timestamp"][ratings.height // 2]
    feedback = pl.DataFrame(
        {
            "user_id": [first["user_id"], first["user_id"], 3],
            "movie_id": [first["movie_id"], 70, 69],
            "rating": [1.0, 4.5, 4.0],
            "event_timestamp": [datetime(2030, 1, 1, tzinfo=UTC), tied, tied],
            "kind": ["rating", "rating", "rating"],
        }
    )
    for workdir in (polars_dir, spark_dir):
        append(workdir, RATING_STREAM, feedback)

    build_features(polars_dir, SplitConfig(valid_frac=0.15, test_frac=0.1))
    result = CliRunner().invoke(
        cli,
        [
            "features",
            "build",
            str(spark_dir),
            "--engine",
            "spark",
            "--valid-frac",
            "0.15",
            "--test-frac",
            "0.1",
        ],
    )
    assert result.exit_code == 0, result.output
    assert "features written to" in result.output
    assert_same_features(polars_dir, spark_dir)

    build_features(polars_dir, SplitConfig(kind="leave-last-out"))
    build_features_spark(spark_dir, SplitConfig(kind="leave-last-out"), spark=spark)
    assert_same_features(polars_dir, spark_dir)


def test_bad_input_is_reported_and_keeps_previous_features(spark: SparkSession, tmp_path: Path) -> None:
    workdir = write_workdir(tmp_path / "w", TINY_RATINGS, TINY_MOVIES)
    build_features(workdir)
    before = (workdir / "features" / "feature_spec.json").read_text()
    unknown = TINY_RATINGS.with_columns(
        pl.when(pl.int_range(pl.len()) == 6).then(999).otherwise("movie_id").alias("movie_id")
    )
    write_workdir(workdir, unknown, TINY_MOVIES)
    with pytest.raises(StarlingError, match=r"movie_id 999 is not in the movie catalog \(1 ratings"):
        build_features_spark(workdir, spark=spark)
    write_workdir(workdir, TINY_RATINGS.drop("rating"), TINY_MOVIES)
    with pytest.raises(StarlingError, match=r"ratings\.parquet: missing columns \['rating'\]"):
        build_features_spark(workdir, spark=spark)
    assert (workdir / "features" / "feature_spec.json").read_text() == before
    assert sorted(p.name for p in workdir.iterdir()) == ["features", "movies.parquet", "ratings.parquet"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--engine", "spark", "--master", "local[0]"], "Spark master 'local[0]': expected local"),
        (["--engine", "spark", "--master", "mesos://m:5050"], "Spark master 'mesos://m:5050'"),
        (["--engine", "flink"], "Invalid value for '--engine'"),
        (["--master", "local[2]"], "apply to --engine spark only"),
        (["--engine", "spark"], "no such working directory"),
    ],
    ids=["zero-cores", "unsupported-master", "unknown-engine", "master-without-spark", "missing-workdir"],
)
def test_bad_engine_options_are_clear_errors(tmp_path: Path, args: list[str], message: str) -> None:
    result = CliRunner().invoke(cli, ["features", "build", str(tmp_path / "missing"), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output


def test_master_urls() -> None:
    for master in ("local", "local[*]", "local[4]", "local[4,2]", "spark://h1:7077,h2:7077", "yarn"):
        assert check_master(master) == master
    assert check_master("k8s://https://kubernetes.default.svc:443")
    for bad in ("", "local[]", "local[-1]", "spark://", "k8s://", "http://x"):
        with pytest.raises(StarlingError):
            check_master(bad)


def test_spark_application_handshake(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipeline pod asks (request file), the SparkApplication's driver answers (done / failed file)."""
    monkeypatch.setattr(spark_engine, "POLL_S", 0.01)
    split = SplitConfig(kind="leave-last-out")
    with pytest.raises(StarlingError, match="no answer from the SparkApplication starling-features-r1"):
        spark_engine.request_build(tmp_path, "starling-features-r1", split, timeout_s=0.05)
    request = json.loads(spark_engine.run_file(tmp_path, "starling-features-r1", "request").read_text())
    assert request["split"] == {"kind": "leave-last-out", "valid_frac": 0.1, "test_frac": 0.1}
    # the driver's side, with the build replaced: a bad-input failure is passed on to the pod
    monkeypatch.setattr(
        spark_engine, "build_features_spark", lambda *a, **k: (_ for _ in ()).throw(StarlingError("bad"))
    )
    with pytest.raises(StarlingError, match="bad"):
        spark_engine.serve_request(tmp_path, "starling-features-r1", None, timeout_s=0.05)
    with pytest.raises(StarlingError, match="SparkApplication starling-features-r1 failed: bad"):
        spark_engine.request_build(tmp_path, "starling-features-r1", split, timeout_s=0.05)
    with pytest.raises(StarlingError, match="no request for starling-features-r2"):
        spark_engine.serve_request(tmp_path, "starling-features-r2", None, timeout_s=0.05)
    with pytest.raises(StarlingError, match="Kubernetes object name"):
        spark_engine.run_file(tmp_path, "../escape", "request")
