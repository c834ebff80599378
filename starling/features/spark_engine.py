"""The Spark engine of `starling features build` (``--engine spark``): the same files as the polars engine.

It reads WORKDIR/ratings.parquet and movies.parquet (plus the ratings recorded online, as the polars engine
does) with Spark and computes everything per rating with DataFrame window functions, no Python per row:

- strictly before: each point-in-time statistic is a window over the entity's rows ordered by the timestamp in
  microseconds with the frame ``RANGE BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING``, so ratings sharing the
  row's timestamp (the row itself, and ties of the same user or movie) are not visible;
- counts, sums and sums of squares (release years centred on 2000) go through the same mean/stddev formula as
  pointintime.py, so the values are the same numbers whenever the sums are exact in float64 (half-star
  ratings and integer years always are); other ratings can differ in the last bits (summation order);
- the user's liked movies and top genres: likes are numbered per user in (timestamp, movie_id) order; for every
  like a window computes the last five likes and each genre's like count and latest like time up to it; a row
  that has seen ``n`` likes (strictly before its timestamp) joins the state after like ``n``. Genres are ranked
  by count, then latest like time (ties at one timestamp are equal), then name, as pointintime.py ranks them;
- the split: global time cut-offs (the k-th smallest timestamp, found through 30-day bucket counts) or each user's
  last two ratings by (timestamp, movie_id).

Spark writes Parquet into a scratch directory on WORKDIR (the volume every executor mounts); the parts are then
streamed, in order, into the single files the polars engine writes, with the same columns and types. The spec
and split.json are finalised with the polars engine's code from those files. Everything lands in WORKDIR/features
through the same atomic directory swap.

``python -m starling.features.spark_engine WORKDIR`` is the entry point of the chart's SparkApplication (run by
spark-submit, which supplies the master); see :func:`main`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from starling.config import get_settings
from starling.errors import StarlingError
from starling.features.build import (
    FEATURES_DIR,
    MOVIE_FEATURES_FILE,
    SAMPLES_FILE,
    SPEC_FILE,
    SPLIT_FILE,
    USER_FEATURES_FILE,
    WRITE_CHUNK_ROWS,
    FeatureBuildReport,
    _replace_dir,
    _schema,
)
from starling.features.inputs import (
    MOVIES_FILE,
    RATINGS_FILE,
    InputError,
    check_movies_schema,
    check_ratings_schema,
)
from starling.features.pointintime import GENRE_SLOTS_MOVIE, GENRE_SLOTS_USER, LIKED_SLOTS, YEAR_CENTRE
from starling.features.spec import (
    MOVIE_FEATURE_COLUMNS,
    NUMERIC_FIELDS,
    SAMPLE_COLUMNS,
    USER_FEATURE_COLUMNS,
    fit_feature_spec,
)
from starling.features.split import SPLIT_NAMES, SplitConfig, SplitInfo, _as_datetime
from starling.progress import progress

__all__ = ["build_features_spark", "check_master", "main", "spark_session"]

# local, local[4], local[*], local[4,2] (retries), local-cluster[2,1,1024], spark://h:7077[,h2:7077],
# k8s://https://host:443, yarn
_MASTER = re.compile(
    r"local(\[(\*|[1-9][0-9]*)(,[1-9][0-9]*)?\])?"
    r"|local-cluster\[[1-9][0-9]*,[1-9][0-9]*,[1-9][0-9]*\]"
    r"|spark://[A-Za-z0-9.\-]+(:[0-9]+)?(,[A-Za-z0-9.\-]+(:[0-9]+)?)*"
    r"|k8s://(https?://)?[A-Za-z0-9.\-\[\]:]+(:[0-9]+)?/?"
    r"|yarn"
)
_BUCKET_US = 30 * 86_400_000_000  # time buckets of the time split cut-off search
_SCRATCH = ".features.spark"
# Spark's own logging: warnings and errors only, and not the two harmless start-up warnings about the host
# name and Hadoop's native library.
_LOG4J2 = """\
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = console
appender.console.type = Console
appender.console.name = console
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = %d{yy/MM/dd HH:mm:ss} %p %c{1}: %m%n%ex
logger.utils.name = org.apache.spark.util.Utils
logger.utils.level = error
logger.native.name = org.apache.hadoop.util.NativeCodeLoader
logger.native.level = error
"""


# ----------------------------------------------------------------------------------------------- session
def check_master(master: str) -> str:
    """``master`` if it is a Spark master URL this engine accepts; a :class:`StarlingError` otherwise."""
    if not _MASTER.fullmatch(master):
        raise StarlingError(
            f"Spark master {master!r}: expected local, local[N], local[*], spark://HOST:PORT, "
            "k8s://https://HOST:PORT or yarn"
        )
    return master


@contextmanager
def spark_session(
    master: str | None = None, shuffle_partitions: int | None = None, driver_memory: str | None = None
) -> Iterator[SparkSession]:
    """A Spark session set up for the build (UTC, quiet, offline), stopped when the block ends.

    ``master`` None takes the master spark-submit passes (the SparkApplication; outside spark-submit, Spark's
    default local[*]); then the submitted configuration decides partitions and memory. An already active session is used as it is and not stopped.
    """
    active = SparkSession.getActiveSession()
    if active is not None:
        yield active
        return
    settings = get_settings()
    conf_dir = Path(tempfile.mkdtemp(prefix="starling-spark-"))
    (conf_dir / "log4j2.properties").write_text(_LOG4J2)
    builder = (
        SparkSession.builder.appName("starling-features")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.parquet.outputTimestampType", "TIMESTAMP_MICROS")
        .config("spark.sql.warehouse.dir", str(conf_dir / "warehouse"))
        .config("spark.ui.showConsoleProgress", "false")
    )
    if master is not None:
        local = master.startswith("local")
        builder = (
            builder.master(check_master(master))
            .config(
                "spark.sql.shuffle.partitions", str(shuffle_partitions or settings.spark_shuffle_partitions)
            )
            .config("spark.driver.memory", driver_memory or settings.spark_driver_memory)
            .config(
                "spark.driver.extraJavaOptions",
                f"-Dlog4j2.configurationFile=file:{conf_dir}/log4j2.properties",
            )
            .config("spark.ui.enabled", "false")
        )
        if local:  # everything on this machine: no name lookups, nothing listening beyond loopback
            builder = builder.config("spark.driver.host", "127.0.0.1").config(
                "spark.driver.bindAddress", "127.0.0.1"
            )
    try:
        session = builder.getOrCreate()
    except Exception as exc:
        shutil.rmtree(conf_dir, ignore_errors=True)
        raise StarlingError(
            f"could not start Spark (master {master or 'from spark-submit'}): {_first_line(exc)}; the spark "
            "engine needs Java 17 (`java -version`)"
        ) from exc
    session.sparkContext.setLogLevel("WARN")
    try:
        yield session
    finally:
        session.stop()
        shutil.rmtree(conf_dir, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -------------------------------------------------------------------------------------------------- inputs
def _input_paths(workdir: Path) -> tuple[Path, Path]:
    """Both input files, with the polars engine's messages when missing or unreadable; schemas checked."""
    paths = []
    for name in (RATINGS_FILE, MOVIES_FILE):
        path = workdir / name
        if not path.is_file():
            raise InputError(f"{path}: not found (run `starling data ingest SOURCE --out {workdir}` first)")
        try:
            schema = pq.read_schema(path)
        except (OSError, pa.ArrowException) as exc:
            raise InputError(f"{path}: not a readable parquet file ({exc})") from exc
        empty = pl.from_arrow(schema.empty_table())
        assert isinstance(empty, pl.DataFrame)
        _check_schema(empty, name, str(path))
        paths.append(path)
    return paths[0], paths[1]


def _check_schema(frame: pl.DataFrame, name: str, where: str) -> None:
    """The column and type checks of inputs.py's check_ratings / check_movies (the schema part)."""
    if name == MOVIES_FILE:
        check_movies_schema(frame, where)
    else:
        check_ratings_schema(frame, where)


def _load_movies(spark: SparkSession, path: Path) -> tuple[DataFrame, list[str]]:
    """The catalog (movie_id, release_year, genres) checked like check_movies, and its sorted genre names."""

    movies = spark.read.parquet(str(path)).select(
        F.col("movie_id").cast("long").alias("movie_id"),
        F.col("release_year").cast("int").alias("release_year"),
        F.col("genres"),
    )
    bad_genre = F.exists("genres", lambda g: g.isNull() | (g == F.lit("")))
    facts = movies.agg(
        F.count_if(F.col("movie_id").isNull()).alias("null_movie_id"),
        F.count_if(F.col("genres").isNull()).alias("null_genres"),
        F.count_if(F.col("genres").isNotNull() & bad_genre).alias("bad_genres"),
        F.min(F.when(F.col("genres").isNotNull() & bad_genre, F.col("movie_id"))).alias("bad_genre_movie"),
        (F.count("movie_id") - F.count_distinct("movie_id")).alias("repeated"),
        F.array_distinct(
            F.flatten(F.collect_list(F.coalesce("genres", F.array().cast("array<string>"))))
        ).alias("genre_names"),
    ).first()
    assert facts is not None
    for column in ("movie_id", "genres"):
        if facts[f"null_{column}"]:
            raise InputError(f"{path}: {column} is null in {facts[f'null_{column}']} rows")
    if facts["bad_genres"]:
        raise InputError(
            f"{path}: movie_id {facts['bad_genre_movie']} has a null or empty genre name "
            f"({facts['bad_genres']} such movies in all)"
        )
    if facts["repeated"]:
        example = movies.groupBy("movie_id").count().filter(F.col("count") > 1).first()
        assert example is not None
        raise InputError(
            f"{path}: movie_id {example['movie_id']} appears {example['count']} times "
            f"({facts['repeated']} repeated rows in all)"
        )
    return movies, sorted(facts["genre_names"])


def _load_ratings(spark: SparkSession, path: Path, workdir: Path, scratch: Path) -> DataFrame:
    """Ratings plus the online feedback (as inputs.with_feedback merges them), typed like check_ratings."""

    from starling.eventbus import open_event_log
    from starling.events import RATING_STREAM

    columns = ["user_id", "movie_id", "rating", "event_timestamp"]
    ratings = spark.read.parquet(str(path)).select(columns)
    # the same source as inputs.with_feedback: the configured event log (files under WORKDIR/events, or Redis)
    feedback = open_event_log(workdir).read_all(RATING_STREAM).filter(pl.col("kind") == "rating")
    if feedback.height == 0:
        return ratings
    # The online log is small and kept in files of its own format: its rating rows go to Spark as Parquet.
    feedback_path = scratch / "feedback.parquet"
    feedback.select(columns).with_row_index("seq").write_parquet(feedback_path)
    ordered = ratings.select(*columns, F.lit(0).alias("source"), F.monotonically_increasing_id().alias("seq"))
    online = spark.read.parquet(str(feedback_path)).select(
        *[F.col(c).cast(ratings.schema[c].dataType).alias(c) for c in columns],
        F.lit(1).alias("source"),
        F.col("seq").cast("long").alias("seq"),
    )
    latest = Window.partitionBy("user_id", "movie_id").orderBy(
        F.col("event_timestamp").desc(), F.col("source").desc(), F.col("seq").desc()
    )
    return (
        ordered.unionByName(online)
        .withColumn("keep", F.row_number().over(latest) == 1)
        .filter("keep")
        .select(columns)
    )


def _checked_ratings(ratings: DataFrame, movies: DataFrame, where: Path) -> tuple[DataFrame, int, int]:
    """Ratings joined to their movies, checked like check_ratings; also the row count and newest time (us)."""

    typed = ratings.select(
        F.col("user_id").cast("long").alias("user_id"),
        F.col("movie_id").cast("long").alias("movie_id"),
        F.col("rating").cast("float").alias("rating"),
        F.col("event_timestamp").cast("timestamp").alias("event_timestamp"),
    )
    joined = typed.join(
        F.broadcast(movies.withColumn("known", F.lit(True))), on="movie_id", how="left"
    ).withColumn("ts_us", F.unix_micros("event_timestamp"))
    rating = F.col("rating")
    not_finite = F.isnan(rating) | rating.isin(float("inf"), float("-inf"))
    unknown = F.col("movie_id").isNotNull() & F.col("known").isNull()
    facts = joined.agg(
        F.count(F.lit(1)).alias("n"),
        *[
            F.count_if(F.col(c).isNull()).alias(f"null_{c}")
            for c in ("user_id", "movie_id", "rating", "event_timestamp")
        ],
        F.count_if(rating.isNotNull() & not_finite).alias("not_finite"),
        F.min(F.when(rating.isNotNull() & not_finite, rating)).alias("not_finite_value"),
        F.count_if(unknown).alias("unknown"),
        F.min(F.when(unknown, F.col("movie_id"))).alias("unknown_movie"),
        F.max("ts_us").alias("newest_us"),
    ).first()
    assert facts is not None
    for column in ("user_id", "movie_id", "rating", "event_timestamp"):
        if facts[f"null_{column}"]:
            raise InputError(f"{where}: {column} is null in {facts[f'null_{column}']} rows")
    if facts["not_finite"]:
        raise InputError(
            f"{where}: rating {facts['not_finite_value']} is not a finite number ({facts['not_finite']} rows)"
        )
    if facts["unknown"]:
        raise InputError(
            f"{where}: movie_id {facts['unknown_movie']} is not in the movie catalog "
            f"({facts['unknown']} ratings of unknown movies in all)"
        )
    if facts["n"] == 0:
        raise InputError(f"{where}: no ratings")
    return joined.drop("known"), int(facts["n"]), int(facts["newest_us"])


# ------------------------------------------------------------------------------------------------ features
def _mean_std(count: Column, total: Column, total_sq: Column, centre: float) -> tuple[Column, Column]:
    """Mean (null when count is 0) and sample stddev (null below 2) from centred sums: pointintime.py's formula."""

    # the divisors are null where the result is (Spark's ANSI mode raises on a division by zero)
    mean_centred = total / F.when(count > 0, count)
    variance = (total_sq - total * mean_centred) / F.when(count > 1, count - F.lit(1))
    mean = F.when(count > 0, mean_centred + F.lit(centre))
    std = F.when(count > 1, F.sqrt(F.greatest(variance, F.lit(0.0))))
    return mean.cast("double"), std.cast("double")


def _like_states(rows: DataFrame, genre_names: list[str]) -> DataFrame:
    """Per user and like number k (1..): the state after the user's first k likes (by timestamp, movie_id).

    Columns ``liked1..5``: the last five liked movies, most recent first (lags of the like sequence);
    ``genre1..5``: the top genres. Each genre's rank key is one long, ordered like pointintime.py's: the count
    of likes with the genre (bits 39+), the recency of its latest like (bits 8-38: the number of the first like
    at that like's timestamp, so likes sharing a timestamp are equally recent), then 255 - its code (bits 0-7:
    name ascending). The five largest keys name the top genres.
    """
    if len(genre_names) > 255:
        raise StarlingError(
            f"{len(genre_names)} distinct genres: user top-genre features support at most 255"
        )
    likes = rows.filter("liked").select("user_id", "movie_id", "ts_us", "genres")
    sequence = Window.partitionBy("user_id").orderBy("ts_us", "movie_id")
    likes = likes.withColumn("k", F.row_number().over(sequence))
    likes = likes.withColumn("recency", F.min("k").over(Window.partitionBy("user_id", "ts_us")))
    so_far = Window.partitionBy("user_id").orderBy("k").rowsBetween(Window.unboundedPreceding, 0)
    keys = []
    for code, name in enumerate(genre_names):
        has = F.array_contains("genres", name)
        count = F.sum(has.cast("long")).over(so_far)
        latest = F.max(F.when(has, F.col("recency"))).over(so_far)
        key = (
            F.shiftleft(count, 39).bitwiseOR(F.shiftleft(latest.cast("long"), 8)).bitwiseOR(F.lit(255 - code))
        )
        keys.append(F.when(count > 0, key))
    top = F.sort_array(F.array_compact(F.array(*keys)), asc=False) if keys else F.array().cast("array<long>")
    names = (
        F.array(*[F.lit(name) for name in genre_names]) if genre_names else F.array().cast("array<string>")
    )
    by_k = Window.partitionBy("user_id").orderBy("k")
    states = likes.select(
        "user_id",
        "k",
        top.alias("top"),
        F.col("movie_id").alias("liked1"),
        *[F.lag("movie_id", i).over(by_k).alias(f"liked{i + 1}") for i in range(1, LIKED_SLOTS)],
    )
    return states.select(
        "user_id",
        "k",
        *[
            # guarded: Spark 4.3's element_at returns the last element, not null, for a null index
            F.when(
                F.get("top", i).isNotNull(),
                F.element_at(names, (F.lit(256) - F.get("top", i).bitwiseAND(F.lit(255))).cast("int")),
            ).alias(f"genre{i + 1}")
            for i in range(GENRE_SLOTS_USER)
        ],
        *[f"liked{i + 1}" for i in range(LIKED_SLOTS)],
    )


def _user_columns(stats: dict[str, Column], likes: str) -> list[Column]:
    """USER_FEATURE_COLUMNS from count/sum columns and a joined like state (prefix ``likes``)."""

    rating_mean, rating_std = _mean_std(stats["n"], stats["s"], stats["ss"], 0.0)
    year_mean, year_std = _mean_std(stats["yn"], stats["ys"], stats["yss"], YEAR_CENTRE)
    return [
        stats["n"].cast("long").alias("user_rating_count"),
        rating_mean.alias("user_avg_rating"),
        rating_std.alias("user_rating_stddev"),
        year_mean.alias("user_avg_release_year"),
        year_std.alias("user_release_year_stddev"),
        *[F.col(f"{likes}.genre{i + 1}").alias(f"user_genre{i + 1}") for i in range(GENRE_SLOTS_USER)],
        *[F.col(f"{likes}.liked{i + 1}").alias(f"user_liked_movie{i + 1}") for i in range(LIKED_SLOTS)],
    ]


def _movie_static() -> list[Column]:

    return [
        F.col("release_year").alias("movie_release_year"),
        *[F.get("genres", i).alias(f"movie_genre{i + 1}") for i in range(GENRE_SLOTS_MOVIE)],
    ]


def _split_column(rows: DataFrame, split: SplitConfig, n: int) -> tuple[Column, int | None, int | None]:
    """The split code column (0 train, 1 valid, 2 test) and the time split's cut-offs (us)."""

    if split.kind == "leave-last-out":
        user = Window.partitionBy("user_id")
        from_end = F.row_number().over(user.orderBy(F.col("ts_us").desc(), F.col("movie_id").desc())) - 1
        eligible = F.count(F.lit(1)).over(user) >= 3
        code = F.when(eligible & (from_end == 0), 2).when(eligible & (from_end == 1), 1).otherwise(0)
        return code, None, None
    n_test, n_valid = round(n * split.test_frac), round(n * split.valid_frac)
    wanted = {}
    if n_test:
        wanted["test"] = n - n_test
    if n_valid:
        wanted["valid"] = max(n - n_test - n_valid, 0)
    cutoffs = _kth_timestamps(rows, sorted(set(wanted.values())))
    test_cutoff = cutoffs[wanted["test"]] if "test" in wanted else None
    valid_cutoff = cutoffs[wanted["valid"]] if "valid" in wanted else None
    code = F.lit(0)
    if test_cutoff is not None:
        code = F.when(F.col("ts_us") >= test_cutoff, 2)
        code = code.when(F.col("ts_us") >= valid_cutoff, 1) if valid_cutoff is not None else code
        code = code.otherwise(0)
    elif valid_cutoff is not None:
        code = F.when(F.col("ts_us") >= valid_cutoff, 1).otherwise(0)
    return code, valid_cutoff, test_cutoff


def _kth_timestamps(rows: DataFrame, positions: list[int]) -> dict[int, int]:
    """The k-th smallest timestamp (0-based, in us) for each k in ``positions``.

    Every distinct timestamp gets its range of positions [start, stop) in sorted order: the rows of earlier
    30-day buckets (a join of the few bucket totals with themselves) plus the rows of earlier timestamps of its
    own bucket (a window partitioned by bucket), so no step sorts all the data in one partition.
    """
    if not positions:
        return {}
    times = rows.groupBy("ts_us").agg(F.count(F.lit(1)).alias("c"))
    times = times.withColumn("bucket", F.floor(F.col("ts_us") / F.lit(_BUCKET_US)))
    buckets = times.groupBy("bucket").agg(F.sum("c").alias("bucket_c"))
    earlier = buckets.alias("b").join(buckets.alias("e"), F.col("e.bucket") < F.col("b.bucket"), "left")
    offsets = earlier.groupBy(F.col("b.bucket").alias("bucket")).agg(
        F.coalesce(F.sum("e.bucket_c"), F.lit(0)).alias("offset")
    )
    within = Window.partitionBy("bucket").orderBy("ts_us").rowsBetween(Window.unboundedPreceding, -1)
    start = F.col("offset") + F.coalesce(F.sum("c").over(within), F.lit(0))
    placed = (
        times.join(F.broadcast(offsets), "bucket")
        .withColumn("start", start)
        .withColumn("stop", F.col("start") + F.col("c"))
    )
    wanted = F.array(*[F.lit(k) for k in positions])
    hits = placed.filter(F.exists(wanted, lambda k: (F.col("start") <= k) & (k < F.col("stop"))))
    found = {}
    for row in hits.select("ts_us", "start", "stop").collect():  # one row per wanted position
        for k in positions:
            if row["start"] <= k < row["stop"]:
                found[k] = int(row["ts_us"])
    return found


def _samples(rows: DataFrame, likes: DataFrame, like_threshold: float, split_code: Column) -> DataFrame:
    """samples.parquet's rows, in canonical order (event_timestamp, user_id, movie_id)."""

    before = Window.unboundedPreceding, -1
    movie = Window.partitionBy("movie_id").orderBy("ts_us").rangeBetween(*before)
    user = Window.partitionBy("user_id").orderBy("ts_us").rangeBetween(*before)
    year = F.col("release_year") - F.lit(YEAR_CENTRE)
    stats = rows.select(
        "*",
        F.count(F.lit(1)).over(movie).alias("m_n"),
        F.coalesce(F.sum("r").over(movie), F.lit(0.0)).alias("m_s"),
        F.coalesce(F.sum(F.col("r") * F.col("r")).over(movie), F.lit(0.0)).alias("m_ss"),
    ).select(
        "*",
        F.count(F.lit(1)).over(user).alias("u_n"),
        F.coalesce(F.sum("r").over(user), F.lit(0.0)).alias("u_s"),
        F.coalesce(F.sum(F.col("r") * F.col("r")).over(user), F.lit(0.0)).alias("u_ss"),
        F.count(year).over(user).alias("u_yn"),
        F.coalesce(F.sum(year).over(user), F.lit(0.0)).alias("u_ys"),
        F.coalesce(F.sum(year * year).over(user), F.lit(0.0)).alias("u_yss"),
        F.coalesce(F.sum(F.col("liked").cast("long")).over(user), F.lit(0)).alias("u_likes"),
        split_code.alias("split_code"),
    )
    joined = stats.alias("row").join(
        likes.alias("likes"),
        (F.col("row.user_id") == F.col("likes.user_id")) & (F.col("row.u_likes") == F.col("likes.k")),
        "left",
    )
    movie_mean, movie_std = _mean_std(F.col("m_n"), F.col("m_s"), F.col("m_ss"), 0.0)
    user_stats = {name: F.col(f"u_{name}") for name in ("n", "s", "ss", "yn", "ys", "yss")}
    split_name = F.element_at(F.array(*[F.lit(name) for name in SPLIT_NAMES]), F.col("split_code") + 1)
    return joined.select(
        F.col("row.user_id").alias("user_id"),
        F.col("row.movie_id").alias("movie_id"),
        F.col("event_timestamp"),
        F.col("rating"),
        (F.col("rating") >= F.lit(like_threshold).cast("float")).cast("byte").alias("label"),
        *_movie_static(),
        F.col("m_n").alias("movie_rating_count"),
        movie_mean.alias("movie_avg_rating"),
        movie_std.alias("movie_rating_stddev"),
        *_user_columns(user_stats, "likes"),
        split_name.alias("split"),
    ).orderBy("event_timestamp", "user_id", "movie_id")


def _entities(
    rows: DataFrame, movies: DataFrame, likes: DataFrame, newest_us: int
) -> tuple[DataFrame, DataFrame]:
    """user_features and movie_features rows: every entity after all ratings, sorted by id."""

    year = F.col("release_year") - F.lit(YEAR_CENTRE)
    users = rows.groupBy("user_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("r").alias("s"),
        F.sum(F.col("r") * F.col("r")).alias("ss"),
        F.count(year).alias("yn"),
        F.coalesce(F.sum(year), F.lit(0.0)).alias("ys"),
        F.coalesce(F.sum(year * year), F.lit(0.0)).alias("yss"),
        F.sum(F.col("liked").cast("long")).alias("n_likes"),
        F.max("ts_us").alias("last_us"),
    )
    users = users.alias("u").join(
        likes.alias("likes"),
        (F.col("u.user_id") == F.col("likes.user_id")) & (F.col("u.n_likes") == F.col("likes.k")),
        "left",
    )
    user_stats = {name: F.col(f"u.{name}") for name in ("n", "s", "ss", "yn", "ys", "yss")}
    users = users.select(
        F.col("u.user_id").alias("user_id"),
        F.timestamp_micros("last_us").alias("event_timestamp"),
        *_user_columns(user_stats, "likes"),
    ).orderBy("user_id")
    movie_stats = rows.groupBy("movie_id").agg(
        F.count(F.lit(1)).alias("n"),
        F.sum("r").alias("s"),
        F.sum(F.col("r") * F.col("r")).alias("ss"),
        F.max("ts_us").alias("last_us"),
    )
    count = F.coalesce(F.col("n"), F.lit(0))
    mean, std = _mean_std(count, F.col("s"), F.col("ss"), 0.0)
    movie_rows = movies.join(movie_stats, "movie_id", "left").select(
        "movie_id",
        F.timestamp_micros(F.coalesce(F.col("last_us"), F.lit(newest_us))).alias("event_timestamp"),
        *_movie_static(),
        count.alias("movie_rating_count"),
        mean.alias("movie_avg_rating"),
        std.alias("movie_rating_stddev"),
    )
    return users, movie_rows.orderBy("movie_id")


# ------------------------------------------------------------------------------------------------- writing
def _write(frame: DataFrame, spark_dir: Path, target: Path, columns: tuple[str, ...] | list[str]) -> int:
    """Spark writes ``frame`` as Parquet parts; they are streamed in part order into one file of the polars
    engine's schema (same columns, types, nullability). Returns the row count."""
    frame.write.mode("overwrite").parquet(str(spark_dir))
    schema = _schema(columns)
    rows = 0
    with pq.ParquetWriter(target, schema) as writer:
        for part in sorted(spark_dir.glob("part-*.parquet")):
            for batch in pq.ParquetFile(part).iter_batches(
                batch_size=WRITE_CHUNK_ROWS, columns=list(columns)
            ):
                arrays = [batch.column(name).cast(schema.field(name).type) for name in columns]
                writer.write_table(pa.Table.from_arrays(arrays, schema=schema))
                rows += batch.num_rows
    return rows


# -------------------------------------------------------------------------------------------------- public
def build_features_spark(
    workdir: Path,
    split: SplitConfig | None = None,
    master: str | None = "local[2]",
    spark: SparkSession | None = None,
) -> FeatureBuildReport:
    """Build WORKDIR/features with Spark: the polars engine's files, columns, types and row order.

    ``spark``: a session to use (kept open); otherwise one is started on ``master`` (None: the master that
    spark-submit passes) and stopped at the end. A failed build leaves the previous features untouched.
    """
    started = time.perf_counter()
    workdir = Path(workdir)
    split = split or SplitConfig()
    if spark is None and master is not None:
        check_master(master)
    if not workdir.is_dir():
        raise InputError(
            f"{workdir}: no such working directory (run `starling data ingest SOURCE --out {workdir}`)"
        )
    ratings_path, movies_path = _input_paths(workdir)
    like_threshold = get_settings().like_threshold
    out_dir = workdir / FEATURES_DIR
    tmp_dir = workdir / f".{FEATURES_DIR}.tmp-{os.getpid()}"
    scratch = workdir / f"{_SCRATCH}-{os.getpid()}"
    with progress("features build (spark)", total=5, unit="stages") as step:
        for path in (tmp_dir, scratch):
            shutil.rmtree(path, ignore_errors=True)
            path.mkdir(parents=True)
        try:
            with _maybe_session(spark, master) as session:
                report = _build(
                    session, workdir, split, like_threshold, ratings_path, movies_path, tmp_dir, scratch, step
                )
            _replace_dir(tmp_dir, out_dir)
        finally:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)
        seconds = time.perf_counter() - started
        step.update(ratings_per_s=round(report.samples / max(seconds, 1e-9)))
    return FeatureBuildReport(
        out_dir=out_dir,
        samples=report.samples,
        users=report.users,
        movies=report.movies,
        split=report.split,
        spec_version=report.spec_version,
        seconds=time.perf_counter() - started,
    )


@contextmanager
def _maybe_session(spark: SparkSession | None, master: str | None) -> Iterator[SparkSession]:
    if spark is not None:
        yield spark
        return
    with spark_session(master) as session:
        yield session


def _build(
    spark: SparkSession,
    workdir: Path,
    split: SplitConfig,
    like_threshold: float,
    ratings_path: Path,
    movies_path: Path,
    tmp_dir: Path,
    scratch: Path,
    step: Any,
) -> FeatureBuildReport:

    movies, genre_names = _load_movies(spark, movies_path)
    ratings = _load_ratings(spark, ratings_path, workdir, scratch)
    joined, n, newest_us = _checked_ratings(ratings, movies, ratings_path)
    rows = joined.select(
        "user_id",
        "movie_id",
        "event_timestamp",
        "ts_us",
        "rating",
        F.col("rating").cast("double").alias("r"),
        "release_year",
        "genres",
        (F.col("rating").cast("double") >= F.lit(like_threshold)).alias("liked"),
    ).persist(StorageLevel.MEMORY_AND_DISK)
    step.update(ratings=n)
    likes = _like_states(rows, genre_names).persist(StorageLevel.MEMORY_AND_DISK)
    try:
        split_code, valid_cutoff, test_cutoff = _split_column(rows, split, n)
        samples = _samples(rows, likes, like_threshold, split_code)
        written = _write(samples, scratch / "samples", tmp_dir / SAMPLES_FILE, SAMPLE_COLUMNS)
        assert written == n, (written, n)
        step.update()
        found = dict(pl.scan_parquet(tmp_dir / SAMPLES_FILE).group_by("split").len().collect().iter_rows())
        counts = {name: found.get(name, 0) for name in SPLIT_NAMES}
        if counts["train"] == 0:
            raise StarlingError(f"{workdir}: the {split.kind} split left no ratings to train on")
        step.update(0, **counts)
        users, movie_rows = _entities(rows, movies, likes, newest_us)
        n_users = _write(
            users,
            scratch / "users",
            tmp_dir / USER_FEATURES_FILE,
            ["user_id", "event_timestamp", *USER_FEATURE_COLUMNS],
        )
        n_movies = _write(
            movie_rows,
            scratch / "movies",
            tmp_dir / MOVIE_FEATURES_FILE,
            ["movie_id", "event_timestamp", *MOVIE_FEATURE_COLUMNS],
        )
        step.update(users=n_users, movies=n_movies)
    finally:
        likes.unpersist()
        rows.unpersist()
    # The spec and split.json are small: fitted by the polars engine's code on the train rows Spark wrote.
    train = (
        pl.scan_parquet(tmp_dir / SAMPLES_FILE)
        .filter(pl.col("split") == "train")
        .select("user_id", "movie_id", *NUMERIC_FIELDS)
        .collect()
    )
    spec = fit_feature_spec(train, genres=genre_names)
    del train
    spec.save(tmp_dir / SPEC_FILE)
    info = SplitInfo(
        config=split,
        counts=counts,
        valid_cutoff=None if valid_cutoff is None else _as_datetime(valid_cutoff),
        test_cutoff=None if test_cutoff is None else _as_datetime(test_cutoff),
    )
    (tmp_dir / SPLIT_FILE).write_text(
        json.dumps({**info.to_json(), "like_threshold": like_threshold}, indent=1)
    )
    step.update()
    return FeatureBuildReport(
        out_dir=workdir / FEATURES_DIR,
        samples=n,
        users=n_users,
        movies=n_movies,
        split=info,
        spec_version=spec.version,
        seconds=0.0,
    )


# ------------------------------------------------------------------------ the chart's SparkApplication
# The pipeline pod (ingest -> features build -> ...) and the SparkApplication share WORKDIR. The pod's
# `features build --spark-application RUN` writes RUN.request.json (after ingest, so the inputs are complete)
# and waits; the SparkApplication's driver (`--serve RUN`) waits for that request, builds, and answers with
# RUN.done.json or, for bad input, RUN.failed.json. Spark itself retries failed tasks; the operator retries a
# failed driver (restartPolicy), which serves the same request again.
RUNS_DIR = ".spark-features"
POLL_S = 5.0


def run_file(workdir: Path, run: str, kind: str) -> Path:
    """WORKDIR/.spark-features/RUN.<kind>.json (kind: request, done, failed)."""
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", run):
        raise StarlingError(f"run name {run!r}: expected a Kubernetes object name (lower case, digits, -, .)")
    return Path(workdir) / RUNS_DIR / f"{run}.{kind}.json"


def _write_json(path: Path, content: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp-{os.getpid()}")
    tmp.write_text(json.dumps(content, indent=1))
    tmp.replace(path)


def _wait_for(paths: list[Path], timeout_s: float, what: str) -> Path:
    deadline = time.monotonic() + timeout_s
    while True:
        for path in paths:
            if path.is_file():
                return path
        if time.monotonic() >= deadline:
            raise StarlingError(f"no {what} after {timeout_s:.0f} s (waited for {paths[0]})")
        time.sleep(POLL_S)


def request_build(workdir: Path, run: str, split: SplitConfig, timeout_s: float) -> str:
    """Ask the SparkApplication ``run`` to build WORKDIR/features and wait for it; returns its summary.

    An earlier answer to the same run (a retried pipeline pod) is returned at once.
    """
    workdir = Path(workdir)
    done, failed = run_file(workdir, run, "done"), run_file(workdir, run, "failed")
    if not done.is_file() and not failed.is_file():
        _write_json(
            run_file(workdir, run, "request"),
            {
                "split": {"kind": split.kind, "valid_frac": split.valid_frac, "test_frac": split.test_frac},
                "requested_at": datetime.now(UTC).isoformat(),
            },
        )
    answer = _wait_for(
        [done, failed],
        timeout_s,
        f"answer from the SparkApplication {run} (is the spark-operator running it? "
        f"`kubectl get sparkapplication {run}`)",
    )
    content = json.loads(answer.read_text())
    if answer == failed:
        raise StarlingError(f"SparkApplication {run} failed: {content['error']}")
    return str(content["summary"])


def serve_request(workdir: Path, run: str, master: str | None, timeout_s: float) -> FeatureBuildReport:
    """The SparkApplication's side: wait for RUN's request, build with its split, write the answer."""
    workdir = Path(workdir)
    request = _wait_for(
        [run_file(workdir, run, "request")], timeout_s, f"request for {run} from the pipeline pod"
    )
    split = SplitConfig(**json.loads(request.read_text())["split"])
    try:
        report = build_features_spark(workdir, split, master=master)
    except StarlingError as exc:  # bad input: retrying will not help, tell the pipeline pod now
        _write_json(run_file(workdir, run, "failed"), {"error": str(exc)})
        raise
    _write_json(
        run_file(workdir, run, "done"),
        {"summary": report.summary(), "samples": report.samples, "spec_version": report.spec_version},
    )
    run_file(workdir, run, "failed").unlink(missing_ok=True)
    return report


def main(argv: list[str] | None = None) -> int:
    """``python -m starling.features.spark_engine WORKDIR [options]``: the Spark build under spark-submit.

    Without ``--master`` the master comes from spark-submit (the SparkApplication). ``--serve RUN`` first
    waits for the pipeline pod's request (see :func:`serve_request`). Errors print as ``error: ...``, exit 2.
    """
    parser = argparse.ArgumentParser(
        prog="python -m starling.features.spark_engine", description=main.__doc__
    )
    parser.add_argument("workdir", type=Path)
    parser.add_argument("--split", dest="split_kind", choices=["time", "leave-last-out"], default="time")
    parser.add_argument("--valid-frac", type=float, default=0.1)
    parser.add_argument("--test-frac", type=float, default=0.1)
    parser.add_argument("--master", default=None, help="Spark master; default: the one spark-submit passes")
    parser.add_argument("--serve", metavar="RUN", default=None, help="wait for RUN's request, then build")
    parser.add_argument("--wait-timeout", type=float, default=4 * 3600.0, help="seconds to wait for it")
    args = parser.parse_args(argv)
    try:
        if args.serve:
            report = serve_request(args.workdir, args.serve, args.master, args.wait_timeout)
        else:
            split = SplitConfig(kind=args.split_kind, valid_frac=args.valid_frac, test_frac=args.test_frac)
            report = build_features_spark(args.workdir, split, master=args.master)
    except StarlingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(report.summary())
    return 0


if __name__ == "__main__":
    sys.exit(main())
