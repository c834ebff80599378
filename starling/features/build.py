"""`starling features build WORKDIR`: point-in-time samples, latest per-entity features and the feature spec.

Reads WORKDIR/ratings.parquet and WORKDIR/movies.parquet and writes, into WORKDIR/features:

- samples.parquet: one row per rating, features as seen strictly before the rating, label and split;
- user_features.parquet / movie_features.parquet: every entity's features after all ratings (for serving);
- feature_spec.json: vocabularies and numeric statistics fitted on the train split (see spec.py);
- split.json: the split kind, its cut-offs and the row count of each part.

The feature definitions live in pointintime.py; this module prepares rows, assembles and writes the files.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from starling.config import get_settings
from starling.errors import StarlingError
from starling.features.inputs import check_movies, check_ratings, load_inputs
from starling.features.pointintime import NO_USER, Catalog, Column, compute_point_in_time
from starling.features.spec import (
    LIKED_MOVIE_FIELDS,
    MOVIE_FEATURE_COLUMNS,
    MOVIE_GENRE_FIELDS,
    NUMERIC_FIELDS,
    SAMPLE_COLUMNS,
    USER_FEATURE_COLUMNS,
    USER_GENRE_FIELDS,
    fit_feature_spec,
)
from starling.features.split import SPLIT_NAMES, TRAIN, SplitConfig, SplitInfo, assign_split
from starling.progress import progress

__all__ = [
    "FeatureBuildReport",
    "SplitConfig",
    "build_features",
    "compute_entity_features",
    "compute_sample_features",
]

FEATURES_DIR = "features"
SAMPLES_FILE = "samples.parquet"
USER_FEATURES_FILE = "user_features.parquet"
MOVIE_FEATURES_FILE = "movie_features.parquet"
SPEC_FILE = "feature_spec.json"
SPLIT_FILE = "split.json"
WRITE_CHUNK_ROWS = 1_000_000

_GENRE_COLUMNS = frozenset((*USER_GENRE_FIELDS, *MOVIE_GENRE_FIELDS))
_ARROW_TYPES: dict[str, pa.DataType] = {
    "user_id": pa.int64(),
    "movie_id": pa.int64(),
    "event_timestamp": pa.timestamp("us", tz="UTC"),
    "rating": pa.float32(),
    "label": pa.int8(),
    "split": pa.string(),
    "movie_release_year": pa.int32(),
    "movie_rating_count": pa.int64(),
    "user_rating_count": pa.int64(),
    **{
        name: pa.float64()
        for name in (
            "movie_avg_rating",
            "movie_rating_stddev",
            "user_avg_rating",
            "user_rating_stddev",
            "user_avg_release_year",
            "user_release_year_stddev",
        )
    },
    **{name: pa.string() for name in _GENRE_COLUMNS},
    **{name: pa.int64() for name in LIKED_MOVIE_FIELDS},
}


def _schema(columns: tuple[str, ...] | list[str]) -> pa.Schema:
    return pa.schema([(name, _ARROW_TYPES[name]) for name in columns])


@dataclass(frozen=True)
class FeatureBuildReport:
    """What `features build` wrote."""

    out_dir: Path
    samples: int
    users: int
    movies: int
    split: SplitInfo
    spec_version: str
    seconds: float

    def summary(self) -> str:
        counts = ", ".join(f"{name} {count:,}" for name, count in self.split.counts.items())
        lines = [
            f"features written to {self.out_dir} in {self.seconds:.1f} s",
            f"  samples: {self.samples:,} ({counts}; split {self.split.config.kind})",
            f"  entities: {self.users:,} users, {self.movies:,} movies",
            f"  feature spec version: {self.spec_version}",
        ]
        if self.split.valid_cutoff or self.split.test_cutoff:
            lines.append(
                f"  cut-offs: valid from {self.split.valid_cutoff}, test from {self.split.test_cutoff}"
            )
        return "\n".join(lines)


# ----------------------------------------------------------------------------------------- computing rows
@dataclass(frozen=True)
class _Computed:
    """Features of the rating rows plus the per-entity query rows, and the arrays needed to assemble files."""

    catalog: Catalog
    events: dict[str, Column]  # aligned with the ratings frame
    user_ids: np.ndarray
    user_last_us: np.ndarray
    users: dict[str, Column]  # aligned with user_ids
    movies: dict[str, Column]  # aligned with catalog.movie_ids
    movie_last_us: np.ndarray


def _timestamps_us(series: pl.Series) -> np.ndarray:
    return series.cast(pl.Datetime("us", "UTC")).dt.epoch("us").to_numpy()


def _compute(ratings: pl.DataFrame, catalog: Catalog, as_of_us: int | None) -> _Computed:
    """Run the point-in-time features over the ratings, one query row per user and one per catalog movie.

    The query rows sit at ``as_of_us`` (or just after the newest rating), so they see every rating before it.
    ``ratings`` must already be checked and restricted to ratings before ``as_of_us``.
    """
    user_ids = ratings["user_id"].to_numpy()
    ts = _timestamps_us(ratings["event_timestamp"])
    n_events = len(ts)
    newest_us = int(ts.max()) if n_events else (as_of_us or 0)
    query_us = as_of_us if as_of_us is not None else newest_us + 1

    distinct_users, user_last_index = np.unique(user_ids[::-1], return_index=True)
    user_last_us = ts[::-1][user_last_index]  # ratings are time-ordered: first hit from the end = newest
    n_movies = len(catalog.movie_ids)
    movie_pos = catalog.positions(ratings["movie_id"].to_numpy())
    movie_last_us = np.full(n_movies, np.iinfo(np.int64).min, dtype=np.int64)
    np.maximum.at(movie_last_us, movie_pos, ts)
    unrated_movie_us = as_of_us if as_of_us is not None else newest_us
    movie_last_us[movie_last_us == np.iinfo(np.int64).min] = unrated_movie_us

    n_users = len(distinct_users)
    features = compute_point_in_time(
        user_key=np.concatenate([user_ids, distinct_users, np.full(n_movies, NO_USER, dtype=np.int64)]),
        movie_pos=np.concatenate(
            [
                movie_pos,
                np.full(n_users, catalog.no_movie, dtype=np.int64),
                np.arange(n_movies, dtype=np.int64),
            ]
        ),
        timestamp_us=np.concatenate([ts, np.full(n_users + n_movies, query_us, dtype=np.int64)]),
        rating=np.concatenate(
            [ratings["rating"].to_numpy().astype(np.float64), np.full(n_users + n_movies, np.nan)]
        ),
        is_event=np.concatenate([np.ones(n_events, dtype=bool), np.zeros(n_users + n_movies, dtype=bool)]),
        catalog=catalog,
        like_threshold=get_settings().like_threshold,
    )
    events = slice(0, n_events)
    user_rows = slice(n_events, n_events + n_users)
    movie_rows = slice(n_events + n_users, None)
    return _Computed(
        catalog=catalog,
        events={name: column.take(events) for name, column in features.items()},
        user_ids=distinct_users,
        user_last_us=user_last_us,
        users={name: features[name].take(user_rows) for name in USER_FEATURE_COLUMNS},
        movies={name: features[name].take(movie_rows) for name in MOVIE_FEATURE_COLUMNS},
        movie_last_us=movie_last_us,
    )


# ------------------------------------------------------------------------------------------ arrow assembly
def _arrow_array(name: str, column: Column, genre_names: pa.Array) -> pa.Array:
    mask = None if column.valid is None else ~column.valid
    if name in _GENRE_COLUMNS:
        indices = pa.array(column.values.astype(np.int32), mask=mask)
        return pa.DictionaryArray.from_arrays(indices, genre_names).cast(pa.string())
    return pa.array(column.values, type=_ARROW_TYPES[name], mask=mask)


def _arrow_table(
    columns: dict[str, Column], names: tuple[str, ...] | list[str], genre_names: list[str]
) -> pa.Table:
    genres = pa.array(genre_names, type=pa.string())
    return pa.Table.from_arrays(
        [_arrow_array(name, columns[name], genres) for name in names], schema=_schema(names)
    )


def _entity_tables(computed: _Computed) -> tuple[pa.Table, pa.Table]:
    genre_names = computed.catalog.genre_names
    users = {
        "user_id": Column(computed.user_ids),
        "event_timestamp": Column(computed.user_last_us),
        **computed.users,
    }
    movies = {
        "movie_id": Column(computed.catalog.movie_ids),
        "event_timestamp": Column(computed.movie_last_us),
        **computed.movies,
    }
    return (
        _arrow_table(users, ["user_id", "event_timestamp", *USER_FEATURE_COLUMNS], genre_names),
        _arrow_table(movies, ["movie_id", "event_timestamp", *MOVIE_FEATURE_COLUMNS], genre_names),
    )


def _sample_columns(
    ratings: pl.DataFrame, computed: _Computed, split_codes: np.ndarray | None
) -> dict[str, Column]:
    rating = ratings["rating"].to_numpy()
    columns = {
        "user_id": Column(ratings["user_id"].to_numpy()),
        "movie_id": Column(ratings["movie_id"].to_numpy()),
        "event_timestamp": Column(_timestamps_us(ratings["event_timestamp"])),
        "rating": Column(rating),
        "label": Column((rating >= get_settings().like_threshold).astype(np.int8)),
        **computed.events,
    }
    if split_codes is not None:
        columns["split"] = Column(split_codes)
    return columns


def _split_array(codes: np.ndarray) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(codes.astype(np.int32)), pa.array(SPLIT_NAMES)).cast(
        pa.string()
    )


# ------------------------------------------------------------------------------------------------ public
def _check_frames(ratings: pl.DataFrame, movies: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    movies = check_movies(movies, "movies frame")
    return check_ratings(ratings, "ratings frame", movies), movies


def compute_sample_features(ratings: pl.DataFrame, movies: pl.DataFrame) -> pl.DataFrame:
    """Point-in-time features of every rating (samples.parquet's columns without ``split``), in canonical order."""
    ratings, movies = _check_frames(ratings, movies)
    computed = _compute(ratings, Catalog.from_movies(movies), as_of_us=None)
    names = [name for name in SAMPLE_COLUMNS if name != "split"]
    return pl.from_arrow(
        _arrow_table(_sample_columns(ratings, computed, None), names, computed.catalog.genre_names)
    )


def compute_entity_features(
    ratings: pl.DataFrame, movies: pl.DataFrame, as_of: datetime | None = None
) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(user_features, movie_features) from the ratings strictly before ``as_of`` (all ratings when None).

    One row per user with such ratings and one per catalog movie. ``event_timestamp`` is the entity's last
    rating time; for movies without ratings it is ``as_of`` (or the newest rating's time when ``as_of`` is None).
    The values equal what a sample placed at ``as_of`` (or right after the last rating) would see.
    """
    ratings, movies = _check_frames(ratings, movies)
    as_of_us = None
    if as_of is not None:
        if as_of.tzinfo is None:
            raise StarlingError(f"as_of {as_of.isoformat()} has no time zone; pass an aware datetime (UTC)")
        as_of_us = int(pl.Series([as_of.astimezone(UTC)]).cast(pl.Datetime("us", "UTC")).dt.epoch("us")[0])
        ratings = ratings.filter(pl.col("event_timestamp") < as_of.astimezone(UTC))
    computed = _compute(ratings, Catalog.from_movies(movies), as_of_us=as_of_us)
    users, movie_table = _entity_tables(computed)
    return pl.from_arrow(users), pl.from_arrow(movie_table)


def build_features(workdir: Path, split: SplitConfig | None = None) -> FeatureBuildReport:
    """Build WORKDIR/features from WORKDIR/ratings.parquet and movies.parquet (see the module docstring).

    All files are written into a temporary directory that then replaces WORKDIR/features, so a failed or
    interrupted build leaves the previous features untouched.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    split = split or SplitConfig()
    with progress("features build", total=5, unit="stages") as step:
        ratings, movies = load_inputs(workdir)
        step.update(ratings=ratings.height)
        catalog = Catalog.from_movies(movies)
        del movies
        computed = _compute(ratings, catalog, as_of_us=None)
        step.update(users=len(computed.user_ids), movies=len(catalog.movie_ids))
        split_codes, split_info = assign_split(
            ratings["user_id"].to_numpy(),
            _timestamps_us(ratings["event_timestamp"]),
            ratings["movie_id"].to_numpy(),
            split,
        )
        columns = _sample_columns(ratings, computed, split_codes)
        if split_info.counts["train"] == 0:
            raise StarlingError(f"{workdir}: the {split.kind} split left no ratings to train on")
        step.update(**split_info.counts)

        out_dir = workdir / FEATURES_DIR
        tmp_dir = workdir / f".{FEATURES_DIR}.tmp-{os.getpid()}"
        shutil.rmtree(tmp_dir, ignore_errors=True)
        tmp_dir.mkdir(parents=True)
        try:
            _write_samples(tmp_dir / SAMPLES_FILE, columns, catalog.genre_names)
            user_table, movie_table = _entity_tables(computed)
            pq.write_table(user_table, tmp_dir / USER_FEATURES_FILE)
            pq.write_table(movie_table, tmp_dir / MOVIE_FEATURES_FILE)
            step.update()
            train_rows = np.flatnonzero(split_codes == TRAIN)
            train = pl.from_arrow(
                _arrow_table(
                    {
                        name: columns[name].take(train_rows)
                        for name in ("user_id", "movie_id", *NUMERIC_FIELDS)
                    },
                    ["user_id", "movie_id", *NUMERIC_FIELDS],
                    catalog.genre_names,
                )
            )
            spec = fit_feature_spec(train, genres=catalog.genre_names)
            del train
            spec.save(tmp_dir / SPEC_FILE)
            split_json = {**split_info.to_json(), "like_threshold": get_settings().like_threshold}
            (tmp_dir / SPLIT_FILE).write_text(json.dumps(split_json, indent=1))
            _replace_dir(tmp_dir, out_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
        seconds = time.perf_counter() - started
        step.update(ratings_per_s=round(ratings.height / max(seconds, 1e-9)))
    return FeatureBuildReport(
        out_dir=out_dir,
        samples=ratings.height,
        users=len(computed.user_ids),
        movies=len(catalog.movie_ids),
        split=split_info,
        spec_version=spec.version,
        seconds=time.perf_counter() - started,
    )


def _write_samples(path: Path, columns: dict[str, Column], genre_names: list[str]) -> None:
    """samples.parquet, assembled and written in chunks of rows so the string columns never all sit in memory."""
    n = len(columns["user_id"].values)
    feature_names = [name for name in SAMPLE_COLUMNS if name != "split"]
    with pq.ParquetWriter(path, _schema(SAMPLE_COLUMNS)) as writer:
        for start in range(0, n, WRITE_CHUNK_ROWS):
            rows = slice(start, min(start + WRITE_CHUNK_ROWS, n))
            chunk = _arrow_table(
                {name: columns[name].take(rows) for name in feature_names}, feature_names, genre_names
            )
            chunk = chunk.append_column("split", _split_array(columns["split"].values[rows]))
            writer.write_table(chunk)


def _replace_dir(new: Path, target: Path) -> None:
    """Swap ``new`` into place at ``target`` (two renames; the old copy is removed afterwards)."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


def wait_for_features(
    workdir: Path, since_s: float = 0.0, timeout_s: float = 3600.0, poll_s: float = 2.0
) -> Path:
    """The feature spec of WORKDIR once features built after ``since_s`` (seconds since the epoch) are in place
    (a build swaps its whole directory in at once, spec included); StarlingError after ``timeout_s``."""
    spec = Path(workdir) / FEATURES_DIR / SPEC_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            if spec.stat().st_mtime >= since_s:
                return spec
        except FileNotFoundError:
            pass
        if time.monotonic() >= deadline:
            raise StarlingError(
                f"{spec}: no features built after {since_s:.0f} (seconds since the epoch) within {timeout_s:.0f} s"
            )
        time.sleep(min(poll_s, max(deadline - time.monotonic(), 0.0)))
