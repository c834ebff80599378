"""The canonical data contract written by ingestion (WORKDIR/*.parquet) and the one way to write it: atomically."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from starling.errors import StarlingError

TIMESTAMP = pa.timestamp("us", tz="UTC")

RATINGS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("rating", pa.float32(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
    ]
)
MOVIES_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("title", pa.string(), nullable=False),
        pa.field("release_year", pa.int32()),
        pa.field("genres", pa.list_(pa.string()), nullable=False),
    ]
)
LINKS_SCHEMA = pa.schema(
    [
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("imdb_id", pa.string()),
        pa.field("tmdb_id", pa.int64()),
    ]
)
TAGS_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.int64(), nullable=False),
        pa.field("movie_id", pa.int64(), nullable=False),
        pa.field("tag", pa.string(), nullable=False),
        pa.field("event_timestamp", TIMESTAMP, nullable=False),
    ]
)
SCHEMAS: dict[str, pa.Schema] = {
    "ratings": RATINGS_SCHEMA,
    "movies": MOVIES_SCHEMA,
    "links": LINKS_SCHEMA,
    "tags": TAGS_SCHEMA,
}
SORT_KEYS: dict[str, list[str]] = {
    "ratings": ["event_timestamp", "user_id", "movie_id"],
    "movies": ["movie_id"],
    "links": ["movie_id"],
    "tags": ["event_timestamp", "user_id", "movie_id"],
}
OPTIONAL_TABLES = ("links", "tags")


def canonical_path(workdir: Path, table: str) -> Path:
    return Path(workdir) / f"{table}.parquet"


def to_canonical(frame: pl.DataFrame, table: str) -> pa.Table:
    """Sort ``frame`` by the table's keys (stable) and cast it to the table's exact arrow schema."""
    schema = SCHEMAS[table]
    ordered = frame.sort(SORT_KEYS[table], maintain_order=True).select(schema.names)
    return ordered.to_arrow().cast(schema)


@contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; on success it replaces ``final``, on failure it is removed."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temporary = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        yield temporary
        os.replace(temporary, final)
    finally:
        temporary.unlink(missing_ok=True)


def write_parquet_atomic(table: pa.Table, final: Path) -> None:
    with atomic_path(final) as temporary:
        pq.write_table(table, temporary, compression="zstd")


def read_canonical(workdir: Path, table: str) -> pl.DataFrame:
    """Read one canonical table, failing clearly when ingestion has not produced it."""
    path = canonical_path(workdir, table)
    if not path.is_file():
        raise StarlingError(f"{path} not found: run `starling data ingest SOURCE --out {workdir}` first")
    return pl.read_parquet(path)
