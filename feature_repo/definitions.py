"""Feast definitions for Starling: the `user` and `movie` entities, their feature views and the ranking service.

The parquet files are the serving files written by ``starling features build WORKDIR`` (one row per entity with
its latest features). Feast resolves a FileSource path when the object is defined, so the directory is chosen
here, at import time:

* ``feast apply`` by hand (cwd = this directory) reads ``$STARLING_FEATURES_DIR`` and falls back to ``./data``;
* ``starling.featurestore`` calls :func:`build_definitions` with ``WORKDIR/features`` directly.

Column names and types follow the feature contract (``user_features.parquet`` / ``movie_features.parquet``).
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from feast import Entity, FeatureService, FeatureView, Field, FileSource, PushSource
from feast.types import Float64, Int32, Int64, String
from feast.value_type import ValueType

FEATURES_DIR_ENV = "STARLING_FEATURES_DIR"
DEFAULT_FEATURES_DIR = Path(__file__).resolve().parent / "data"

USER_FEATURES_FILE = "user_features.parquet"
MOVIE_FEATURES_FILE = "movie_features.parquet"
USER_PUSH_SOURCE = "user_features_push"
RANKING_SERVICE = "ranking_model"

# ttl=0 means "never expires": MovieLens events are from 1996-2018, a finite ttl would hide them all.
NO_EXPIRY = timedelta(0)

USER_SCHEMA: list[Field] = [
    Field(name="user_rating_count", dtype=Int64),
    Field(name="user_avg_rating", dtype=Float64),
    Field(name="user_rating_stddev", dtype=Float64),
    Field(name="user_avg_release_year", dtype=Float64),
    Field(name="user_release_year_stddev", dtype=Float64),
    *[
        Field(name=f"user_genre{i}", dtype=String, description="Genre of liked movies, rank i")
        for i in range(1, 6)
    ],
    *[
        Field(name=f"user_liked_movie{i}", dtype=Int64, description="i-th most recent liked movie")
        for i in range(1, 6)
    ],
]

MOVIE_SCHEMA: list[Field] = [
    Field(name="movie_release_year", dtype=Int32),
    *[Field(name=f"movie_genre{i}", dtype=String) for i in range(1, 4)],
    Field(name="movie_rating_count", dtype=Int64),
    Field(name="movie_avg_rating", dtype=Float64),
    Field(name="movie_rating_stddev", dtype=Float64),
]


def build_definitions(features_dir: Path) -> dict[str, object]:
    """All Feast objects of the repo, with the parquet sources under ``features_dir`` (made absolute)."""
    features_dir = Path(features_dir).resolve()

    user = Entity(
        name="user", join_keys=["user_id"], value_type=ValueType.INT64, description="MovieLens user"
    )
    movie = Entity(
        name="movie", join_keys=["movie_id"], value_type=ValueType.INT64, description="MovieLens movie"
    )

    user_source = FileSource(
        name="user_features_source",
        path=str(features_dir / USER_FEATURES_FILE),
        timestamp_field="event_timestamp",
    )
    movie_source = FileSource(
        name="movie_features_source",
        path=str(features_dir / MOVIE_FEATURES_FILE),
        timestamp_field="event_timestamp",
    )
    # Pushes (e.g. a user's profile refreshed after a new rating) update the same online rows as
    # materialization, because `user_features` reads from the push source, backed by the parquet file.
    user_push_source = PushSource(name=USER_PUSH_SOURCE, batch_source=user_source)

    user_features = FeatureView(
        name="user_features",
        entities=[user],
        ttl=NO_EXPIRY,
        schema=USER_SCHEMA,
        online=True,
        source=user_push_source,
        description="Latest per-user profile: rating stats, favourite genres, recently liked movies.",
    )
    movie_features = FeatureView(
        name="movie_features",
        entities=[movie],
        ttl=NO_EXPIRY,
        schema=MOVIE_SCHEMA,
        online=True,
        source=movie_source,
        description="Latest per-movie stats: release year, genres, rating count/mean/stddev.",
    )
    ranking_model = FeatureService(
        name=RANKING_SERVICE,
        features=[user_features, movie_features],
        description="Features the ranking models read at serving time.",
    )
    return {
        "user": user,
        "movie": movie,
        "user_source": user_source,
        "movie_source": movie_source,
        "user_push_source": user_push_source,
        "user_features": user_features,
        "movie_features": movie_features,
        "ranking_model": ranking_model,
    }


# Module-level objects are what `feast apply` collects.
_definitions = build_definitions(Path(os.environ.get(FEATURES_DIR_ENV, DEFAULT_FEATURES_DIR)))
user = _definitions["user"]
movie = _definitions["movie"]
user_source = _definitions["user_source"]
movie_source = _definitions["movie_source"]
user_push_source = _definitions["user_push_source"]
user_features = _definitions["user_features"]
movie_features = _definitions["movie_features"]
ranking_model = _definitions["ranking_model"]
