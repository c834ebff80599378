"""`starling bench features`: one JSON object measuring a real features build in a fresh process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from starling.cli import cli
from starling.errors import StarlingError
from starling.features.bench import bench_features


def test_bench_features_on_synthetic_ratings() -> None:
    result = CliRunner().invoke(cli, ["bench", "features", "--ratings", "20000"])
    assert result.exit_code == 0, result.output
    measured = json.loads(result.stdout)
    assert set(measured) == {
        "ratings", "users", "movies", "seconds", "peak_rss_mb", "peak_tree_rss_mb", "engine", "source",
        "skipped_rows",
    }  # fmt: skip
    # sampled every 0.1 s: a build this short may finish between samples, so only its presence is checked
    assert measured["engine"] == "polars" and measured["peak_tree_rss_mb"] > 0
    assert measured["source"] == "synthetic:20000" and measured["skipped_rows"] == 0
    assert measured["ratings"] > 0 and measured["users"] > 0 and measured["movies"] > 0
    assert measured["seconds"] > 0
    assert 50 < measured["peak_rss_mb"] < 4000  # the child's own peak: an interpreter with polars, not zero


def test_bench_features_on_a_source(ml_small_dir: Path) -> None:
    measured = bench_features(source=str(ml_small_dir))
    assert (measured["ratings"], measured["users"], measured["movies"]) == (100_836, 610, 9_742)
    assert measured["source"] == str(ml_small_dir)
    assert measured["skipped_rows"] == 1  # the shared copy's planted rating of an unknown movie, reported


def test_bench_features_rejects_a_non_positive_size() -> None:
    with pytest.raises(StarlingError, match="must be positive"):
        bench_features(n_ratings=0)


@pytest.mark.slow
def test_bench_features_with_the_spark_engine_counts_the_jvm() -> None:
    polars = bench_features(n_ratings=20_000)
    spark = bench_features(n_ratings=20_000, engine="spark", master="local[2]")
    assert spark["engine"] == "spark local[2]"
    assert (spark["ratings"], spark["users"], spark["movies"]) == (
        polars["ratings"],
        polars["users"],
        polars["movies"],
    )
    assert spark["peak_tree_rss_mb"] > spark["peak_rss_mb"] + 100, "the JVM (a child process) is counted"


def test_bench_features_rejects_an_unknown_engine_or_master() -> None:
    with pytest.raises(StarlingError, match="expected polars or spark"):
        bench_features(n_ratings=10, engine="dask")
    with pytest.raises(StarlingError, match="Spark master"):
        bench_features(n_ratings=10, engine="spark", master="mesos://x")
