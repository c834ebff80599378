"""The durable event log of real-time feedback and catalog changes, in the offline store's layout.

Each write is one parquet file under WORKDIR/events/<stream>/, written to a temporary name, fsynced and
renamed (then the directory is fsynced): once :func:`append` returns, the events survive a crash. Files are
named by write time, so readers (services following the log, the next training run) take them in order.

Streams:
- ``ratings``: user_id, movie_id, rating (float32; NaN for implicit kinds), event_timestamp (UTC), kind
  ("rating", "click", "watch");
- ``movies``: movie_id, title, release_year, genres (catalog upserts).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from pathlib import Path

import polars as pl

RATING_STREAM = "ratings"
MOVIE_STREAM = "movies"

SCHEMAS: dict[str, dict[str, pl.DataType]] = {
    RATING_STREAM: {
        "user_id": pl.Int64(),
        "movie_id": pl.Int64(),
        "rating": pl.Float32(),
        "event_timestamp": pl.Datetime("us", "UTC"),
        "kind": pl.String(),
    },
    MOVIE_STREAM: {
        "movie_id": pl.Int64(),
        "title": pl.String(),
        "release_year": pl.Int32(),
        "genres": pl.List(pl.String()),
    },
}
_sequence = itertools.count()


def stream_dir(workdir: Path, stream: str) -> Path:
    return Path(workdir) / "events" / stream


def append(workdir: Path, stream: str, frame: pl.DataFrame) -> Path:
    """Durably append ``frame`` (cast to the stream's schema) as one new file; returns its path."""
    directory = stream_dir(workdir, stream)
    directory.mkdir(parents=True, exist_ok=True)
    frame = frame.select([pl.col(name).cast(dtype) for name, dtype in SCHEMAS[stream].items()])
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}.parquet"
    temporary = directory / f".{name}.tmp"
    frame.write_parquet(temporary)
    with temporary.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, directory / name)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return directory / name


def read_all(workdir: Path, stream: str) -> pl.DataFrame:
    """Every event of a stream, in write order (an empty frame with the schema when there are none)."""
    files = sorted(stream_dir(workdir, stream).glob("[0-9]*.parquet"))
    if not files:
        return pl.DataFrame(schema=SCHEMAS[stream])
    return pl.concat([pl.read_parquet(f) for f in files], how="vertical_relaxed")


class EventFollower:
    """Reads the files of a stream that appeared since the last call (files written by this process can be
    skipped: it applied them when it wrote them)."""

    def __init__(self, workdir: Path, stream: str, start_at_end: bool = False) -> None:
        # Held by a writer of this process from append to mark_seen, so poll never reads its file first.
        self.lock = threading.Lock()
        self.directory = stream_dir(workdir, stream)
        self.stream = stream
        self.seen: set[str] = set()
        if start_at_end and self.directory.is_dir():
            self.seen = {f.name for f in self.directory.glob("[0-9]*.parquet")}

    def mark_seen(self, path: Path) -> None:
        self.seen.add(path.name)

    def poll(self) -> pl.DataFrame | None:
        if not self.directory.is_dir():
            return None
        with self.lock:
            new = sorted(f for f in self.directory.glob("[0-9]*.parquet") if f.name not in self.seen)
            if not new:
                return None
            frames = [pl.read_parquet(f) for f in new]
            self.seen.update(f.name for f in new)
        return pl.concat(frames, how="vertical_relaxed")
