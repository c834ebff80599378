"""The feature spec (fitted on train only, versioned, saved and loaded) and the one transform."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from starling.errors import StarlingError
from starling.features.build import SplitConfig, build_features, compute_entity_features
from starling.features.spec import (
    NUMERIC_FIELDS,
    FeatureSpec,
    fit_feature_spec,
)
from starling.features.transform import transform

T0 = datetime(2021, 6, 1, tzinfo=UTC)


def canonical_inputs() -> tuple[pl.DataFrame, pl.DataFrame]:
    """Users 1-3 rate movies 1-4 early; only user 9 rates movie 5, at the very end (-> test split)."""
    movies = pl.DataFrame(
        {
            "movie_id": [1, 2, 3, 4, 5, 6],
            "title": ["a", "b", "c", "d", "e", "f"],
            "release_year": [1990, 1995, None, 2005, 2010, 2015],
            "genres": [["Drama"], ["Comedy", "Drama"], [], ["Action"], ["Sci-Fi"], ["Western"]],
        },
        schema={
            "movie_id": pl.Int64,
            "title": pl.String,
            "release_year": pl.Int32,
            "genres": pl.List(pl.String),
        },
    )
    rows = [(u, m, float(1 + (u * m) % 5), (u * 10 + m) * 60) for u in (1, 2, 3) for m in (1, 2, 3, 4)]
    rows.append((9, 5, 5.0, 10_000 * 60))
    ratings = pl.DataFrame(
        {
            "user_id": [r[0] for r in rows],
            "movie_id": [r[1] for r in rows],
            "rating": [r[2] for r in rows],
            "event_timestamp": [T0 + timedelta(seconds=r[3]) for r in rows],
        },
        schema={
            "user_id": pl.Int64,
            "movie_id": pl.Int64,
            "rating": pl.Float32,
            "event_timestamp": pl.Datetime("us", "UTC"),
        },
    ).sort("event_timestamp")
    return ratings, movies


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    workdir = tmp_path_factory.mktemp("spec")
    ratings, movies = canonical_inputs()
    ratings.write_parquet(workdir / "ratings.parquet")
    movies.write_parquet(workdir / "movies.parquet")
    build_features(workdir, SplitConfig(kind="time", valid_frac=0.0, test_frac=0.08))
    return workdir


def test_spec_is_fitted_on_train_only(built: Path) -> None:
    samples = pl.read_parquet(built / "features" / "samples.parquet")
    assert samples.filter(pl.col("split") == "test").select("user_id", "movie_id").rows() == [(9, 5)]
    spec = FeatureSpec.load(built / "features" / "feature_spec.json")
    assert spec.vocabularies["user"] == [1, 2, 3]
    assert spec.vocabularies["movie"] == [1, 2, 3, 4]
    assert spec.vocabularies["genre"] == ["Action", "Comedy", "Drama", "Sci-Fi", "Western"]  # whole catalog
    train = samples.filter(pl.col("split") == "train")
    stats = spec.numeric_stats["user_rating_count"]
    assert stats["mean"] == pytest.approx(train["user_rating_count"].mean())
    assert stats["std"] == pytest.approx(train["user_rating_count"].std(ddof=0))
    assert len(stats["quantiles"]) == spec.num_buckets - 1
    # release year of rated movies in train: the null year of movie 3 is ignored
    assert spec.numeric_stats["movie_release_year"]["mean"] == pytest.approx((1990 + 1995 + 2005) / 3)

    encoded = transform(samples, spec)
    test_row = samples["split"].to_list().index("test")
    assert encoded["user"][test_row] == 0 and encoded["movie"][test_row] == 0  # unseen in train -> unknown
    train_rows = (samples["split"] == "train").to_numpy()
    assert (encoded["user"][train_rows] > 0).all() and (encoded["movie"][train_rows] > 0).all()


def test_transform_shapes_dtypes_and_values(built: Path) -> None:
    samples = pl.read_parquet(built / "features" / "samples.parquet")
    spec = FeatureSpec.load(built / "features" / "feature_spec.json")
    out = transform(samples, spec)
    n = samples.height
    expected = {
        "user": (np.int64, (n,)),
        "movie": (np.int64, (n,)),
        "user_genres": (np.int64, (n, 5)),
        "movie_genres": (np.int64, (n, 3)),
        "liked_movies": (np.int64, (n, 5)),
        "numeric": (np.float32, (n, 9)),
        "numeric_missing": (np.float32, (n, 9)),
        "numeric_buckets": (np.int64, (n, 9)),
        "label": (np.float32, (n,)),
    }
    assert {key: (value.dtype.type, value.shape) for key, value in out.items()} == expected
    # vocab indices = position + 1
    user_ids = samples["user_id"].to_numpy()
    np.testing.assert_array_equal(out["user"], np.where(user_ids <= 3, user_ids, 0))  # vocab [1, 2, 3]
    genre_index = {name: i + 1 for i, name in enumerate(spec.vocabularies["genre"])}
    movie_genre1 = [genre_index.get(g, 0) if g else 0 for g in samples["movie_genre1"].to_list()]
    np.testing.assert_array_equal(out["movie_genres"][:, 0], movie_genre1)
    np.testing.assert_array_equal(out["label"], samples["label"].to_numpy().astype(np.float32))
    # numeric: z-score, null -> 0 with a missing flag and bucket 0
    column = NUMERIC_FIELDS.index("user_avg_rating")
    values = samples["user_avg_rating"].to_numpy()
    absent = np.isnan(values)
    assert absent.any() and (~absent).any()
    stats = spec.numeric_stats["user_avg_rating"]
    np.testing.assert_allclose(
        out["numeric"][~absent, column], (values[~absent] - stats["mean"]) / stats["std"], rtol=1e-6
    )
    assert (out["numeric"][absent, column] == 0).all() and (out["numeric_missing"][absent, column] == 1).all()
    assert (out["numeric_missing"][~absent, column] == 0).all()
    assert (out["numeric_buckets"][absent, column] == 0).all()
    assert out["numeric_buckets"][~absent, column].min() >= 1
    assert out["numeric_buckets"].max() <= spec.num_buckets


def test_buckets_follow_the_quantile_boundaries() -> None:
    spec = _spec_with_stats({"mean": 10.0, "std": 0.0, "quantiles": [1.0, 2.0, 2.0, 5.0]})
    rows = _serving_rows(user_rating_count=[0, 1, 1.5, 2, 4.9, 5, 100, None])
    out = transform(rows, spec)
    column = NUMERIC_FIELDS.index("user_rating_count")
    assert out["numeric_buckets"][:, column].tolist() == [1, 2, 2, 4, 4, 5, 5, 0]
    # std 0 is guarded: values are only centred
    assert out["numeric"][:, column].tolist()[:2] == [-10.0, -9.0]


def test_transform_maps_unknown_and_null_ids_to_zero() -> None:
    spec = _spec_with_stats({"mean": 0.0, "std": 1.0, "quantiles": [0.0] * 9})
    rows = _serving_rows(user_rating_count=[1, 2, 3]).with_columns(
        pl.Series("user_id", [5, 7, None], dtype=pl.Int64),
        pl.Series("movie_id", [100, 300, 999], dtype=pl.Int64),
        pl.Series("user_liked_movie1", [300, None, 4], dtype=pl.Int64),
        pl.Series("movie_genre1", ["Drama", "Horror", None]),
    )
    out = transform(rows, spec)
    assert out["user"].tolist() == [1, 0, 0]
    assert out["movie"].tolist() == [1, 3, 0]
    assert out["liked_movies"][:, 0].tolist() == [3, 0, 0]
    assert out["movie_genres"][:, 0].tolist() == [2, 0, 0]
    assert "label" not in out


def test_transform_serving_rows_from_entity_features(built: Path) -> None:
    ratings, movies = canonical_inputs()
    users, movie_features = compute_entity_features(ratings, movies)
    rows = users.drop("event_timestamp").join(movie_features.drop("event_timestamp"), how="cross")
    spec = FeatureSpec.load(built / "features" / "feature_spec.json")
    out = transform(rows, spec)
    assert out["user"].shape == (users.height * movie_features.height,)
    assert "label" not in out
    assert np.isfinite(out["numeric"]).all()


def test_transform_rejects_rows_without_feature_columns(built: Path) -> None:
    spec = FeatureSpec.load(built / "features" / "feature_spec.json")
    with pytest.raises(StarlingError, match=r"lack feature columns \['user_genre1'"):
        transform(pl.DataFrame({"user_id": [1], "movie_id": [2]}), spec)
    rows = _serving_rows(user_rating_count=[1, 2]).with_columns(pl.Series("label", [1, None], dtype=pl.Int8))
    with pytest.raises(StarlingError, match="row 1: label is null"):
        transform(rows, spec)


def test_spec_round_trip_and_version(tmp_path: Path) -> None:
    spec = _spec_with_stats({"mean": 1.5, "std": 2.0, "quantiles": [1.0] * 9})
    spec.save(tmp_path / "spec.json")
    loaded = FeatureSpec.load(tmp_path / "spec.json")
    assert loaded == spec and loaded.version == spec.version and len(spec.version) == 12
    assert (
        loaded.vocab_size("user") == 3 and loaded.vocab_size("genre") == 3 and loaded.vocab_size("movie") == 4
    )
    other = _spec_with_stats({"mean": 1.5, "std": 2.5, "quantiles": [1.0] * 9})
    assert other.version != spec.version
    with pytest.raises(StarlingError, match="unknown vocabulary 'tag'"):
        spec.vocab_size("tag")


def test_candidate_statistics_extend_the_numeric_fields_and_survive_a_round_trip(tmp_path: Path) -> None:
    from starling.features.spec import CANDIDATE_FEATURES

    base = _spec_with_stats({"mean": 1.5, "std": 2.0, "quantiles": [1.0] * 9})
    rows = pl.DataFrame({name: [float(i), float(i) + 1.0, None] for i, name in enumerate(CANDIDATE_FEATURES)})
    spec = base.with_candidate_stats(rows)
    assert spec.numeric_fields == NUMERIC_FIELDS + CANDIDATE_FEATURES and spec.version != base.version
    assert spec.candidate_stats["ease_score"]["mean"] == pytest.approx(
        CANDIDATE_FEATURES.index("ease_score") + 0.5
    )
    spec.save(tmp_path / "spec.json")
    loaded = FeatureSpec.load(tmp_path / "spec.json")  # JSON sorts keys; the field order is the contract's
    assert loaded == spec and tuple(loaded.candidate_stats) == CANDIDATE_FEATURES
    with pytest.raises(StarlingError, match="rows lack"):
        base.with_candidate_stats(rows.drop("ease_score"))


def test_spec_load_errors(tmp_path: Path) -> None:
    path = tmp_path / "spec.json"
    with pytest.raises(StarlingError, match="feature spec not found"):
        FeatureSpec.load(path)
    path.write_text("{not json")
    with pytest.raises(StarlingError, match="not a readable feature spec JSON"):
        FeatureSpec.load(path)
    _spec_with_stats({"mean": 1.5, "std": 2.0, "quantiles": [1.0] * 9}).save(path)
    raw = json.loads(path.read_text())
    raw["vocabularies"]["user"].append(42)
    path.write_text(json.dumps(raw))
    with pytest.raises(StarlingError, match="does not match the recorded version"):
        FeatureSpec.load(path)
    del raw["numeric_stats"]
    path.write_text(json.dumps(raw))
    with pytest.raises(StarlingError, match=r"lacks keys \['numeric_stats'\]"):
        FeatureSpec.load(path)


def test_fit_feature_spec_errors() -> None:
    with pytest.raises(StarlingError, match="lack columns"):
        fit_feature_spec(pl.DataFrame({"user_id": [1]}))
    empty = _serving_rows(user_rating_count=[]).with_columns(pl.col("user_id").cast(pl.Int64))
    with pytest.raises(StarlingError, match="empty train split"):
        fit_feature_spec(empty, genres=[])


def _spec_with_stats(stats: dict) -> FeatureSpec:
    return FeatureSpec(
        vocabularies={"user": [5, 6], "movie": [100, 200, 300], "genre": ["Comedy", "Drama"]},
        numeric_stats={name: dict(stats) for name in NUMERIC_FIELDS},
    )


def _serving_rows(user_rating_count: list) -> pl.DataFrame:
    """Serving-shaped rows (no label, no split) with every feature column; only user_rating_count varies."""
    n = len(user_rating_count)
    columns: dict[str, pl.Series] = {
        "user_id": pl.Series([5] * n, dtype=pl.Int64),
        "movie_id": pl.Series([100] * n, dtype=pl.Int64),
    }
    for name in NUMERIC_FIELDS:
        columns[name] = pl.Series([1.0] * n, dtype=pl.Float64)
    columns["user_rating_count"] = pl.Series(user_rating_count, dtype=pl.Float64)
    for name in [f"user_genre{i}" for i in range(1, 6)] + [f"movie_genre{i}" for i in range(1, 4)]:
        columns[name] = pl.Series([None] * n, dtype=pl.String)
    for name in [f"user_liked_movie{i}" for i in range(1, 6)]:
        columns[name] = pl.Series([None] * n, dtype=pl.Int64)
    return pl.DataFrame(columns)
