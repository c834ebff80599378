"""The durable event log of real-time feedback and catalog changes, in the offline store's layout.

Each write is one parquet file under WORKDIR/events/<stream>/, written to a temporary name, fsynced and
renamed (then the directory is fsynced): once :func:`append` returns, the events survive a crash. Files are
named by write time, so readers (services following the log, the next training run) take them in order.

:func:`compact` (``starling events compact``; recommend runs it in the background) folds the files older than
a minute into one *segment* (``<first>~<last>.segment.parquet``) whose rows carry the name of the file they
came from (``_source``) and their row in it (``_row``), then deletes those files. Readers skip a file that a
segment holds and drop repeated (``_source``, ``_row``) pairs, so a crash between writing a segment and
deleting its files, or two compactions at once, never duplicates an event; a follower that had applied a
file already skips its rows in the segment. Restart time stays bounded by the number of segments plus a
minute of single files. :func:`verify` (``starling events verify``) checks every file against its schema.

Streams:
- ``ratings``: user_id, movie_id, rating (float32; NaN for implicit kinds), event_timestamp (UTC), kind
  ("rating", "click", "watch"), request_id (the Recommend answer the event responds to; null when not sent,
  and in files written before the column existed);
- ``movies``: movie_id, title, release_year, genres (catalog upserts), content (the text vector UpsertMovie
  computed, starling/content.py; null when it did not).
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
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
        "request_id": pl.String(),
    },
    MOVIE_STREAM: {
        "movie_id": pl.Int64(),
        "title": pl.String(),
        "release_year": pl.Int32(),
        "genres": pl.List(pl.String()),
        "content": pl.List(pl.Float32()),
    },
}
# Columns added after files were first written: an older file without them reads as nulls.
OPTIONAL_COLUMNS: dict[str, frozenset[str]] = {
    RATING_STREAM: frozenset({"request_id"}),
    MOVIE_STREAM: frozenset(),
}
_sequence = itertools.count()


def stream_dir(workdir: Path, stream: str) -> Path:
    return Path(workdir) / "events" / stream


def append(workdir: Path, stream: str, frame: pl.DataFrame) -> Path:
    """Durably append ``frame`` (cast to the stream's schema; optional columns it lacks are null) as one new
    file; returns its path."""
    directory = stream_dir(workdir, stream)
    directory.mkdir(parents=True, exist_ok=True)
    frame = _with_optional_columns(frame, stream).select(
        [pl.col(name).cast(dtype) for name, dtype in SCHEMAS[stream].items()]
    )
    name = f"{time.time_ns():020d}-{os.getpid()}-{next(_sequence):06d}.parquet"
    return _write_durably(directory, name, frame)


def _with_optional_columns(frame: pl.DataFrame, stream: str) -> pl.DataFrame:
    """``frame`` with the stream's optional columns it lacks, as nulls of their type."""
    lacking = [name for name in OPTIONAL_COLUMNS[stream] if name not in frame.columns]
    return frame.with_columns(pl.lit(None, SCHEMAS[stream][name]).alias(name) for name in lacking)


def _write_durably(directory: Path, name: str, frame: pl.DataFrame) -> Path:
    temporary = directory / f".{name}.tmp"
    frame.write_parquet(temporary)
    with temporary.open("rb+") as handle:
        os.fsync(handle.fileno())
    os.replace(temporary, directory / name)
    _fsync_dir(directory)
    return directory / name


def _fsync_dir(directory: Path) -> None:
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


SEGMENT_SUFFIX = ".segment.parquet"
SOURCE, ROW = "_source", "_row"


def is_segment(path: Path) -> bool:
    return path.name.endswith(SEGMENT_SUFFIX)


def _log_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("[0-9]*.parquet")) if directory.is_dir() else []


def _with_provenance(path: Path, stream: str) -> pl.DataFrame:
    """A file's rows with (_source, _row): a segment has them; a single file gets its own name. Optional
    columns the file lacks are added as nulls."""
    frame = _with_optional_columns(pl.read_parquet(path), stream)
    if is_segment(path):
        return frame
    return frame.with_columns(
        pl.lit(path.name).alias(SOURCE), pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW)
    )


def _read(
    files: list[Path], stream: str, skip_sources: set[str] | frozenset[str] = frozenset()
) -> pl.DataFrame | None:
    """The files' events in order, each (_source, _row) once and none from ``skip_sources``."""
    if not files:
        return None
    columns = [*SCHEMAS[stream], SOURCE, ROW]
    frame = pl.concat([_with_provenance(f, stream).select(columns) for f in files], how="vertical_relaxed")
    if skip_sources:
        frame = frame.filter(~pl.col(SOURCE).is_in(list(skip_sources)))
    return frame.unique([SOURCE, ROW], keep="first", maintain_order=True).sort(
        [SOURCE, ROW], maintain_order=True
    )


def _covered(files: list[Path]) -> set[str]:
    """Names of the single files that some segment among ``files`` holds."""
    segments = [f for f in files if is_segment(f)]
    if not segments:
        return set()
    return set(pl.concat([pl.read_parquet(f, columns=[SOURCE]) for f in segments])[SOURCE].unique().to_list())


# A compaction may fold and delete files between a reader's listing and its reads (what it deletes is in a
# segment by then): the reader lists again, at most this many times.
READ_ATTEMPTS = 8


def _listed_and_read(
    list_files: Callable[[], list[Path]], stream: str, skip_sources: set[str] | frozenset[str] = frozenset()
) -> tuple[list[Path], set[str], pl.DataFrame | None]:
    """(files listed, single files their segments cover, their events), listing again when a compaction
    removed a listed file before it was read."""
    for attempt in range(READ_ATTEMPTS):
        files = list_files()
        try:
            covered = _covered(files)
            frame = _read([f for f in files if is_segment(f) or f.name not in covered], stream, skip_sources)
            return files, covered, frame
        except FileNotFoundError:
            if attempt == READ_ATTEMPTS - 1:
                raise
            time.sleep(0.01 * (attempt + 1))
    raise AssertionError("unreachable")


def read_all(workdir: Path, stream: str) -> pl.DataFrame:
    """Every event of a stream, in write order (an empty frame with the schema when there are none); safe
    while a compaction runs."""
    directory = stream_dir(workdir, stream)
    _, _, frame = _listed_and_read(lambda: _log_files(directory), stream)
    if frame is None:
        return pl.DataFrame(schema=SCHEMAS[stream])
    return frame.drop(SOURCE, ROW)


def compact(
    workdir: Path, stream: str, min_age_s: float = 60.0, min_files: int = 2, max_segments: int = 8
) -> Path | None:
    """Fold the single files older than ``min_age_s`` into one segment (and the segments too, once there
    are ``max_segments``); returns the new segment (None: nothing to do)."""
    directory = stream_dir(workdir, stream)
    cutoff_ns = time.time_ns() - int(min_age_s * 1e9)
    files = _log_files(directory)
    segments = [f for f in files if is_segment(f)]
    covered = _covered(segments)
    old = [f for f in files if not is_segment(f) and int(f.name.split("-", 1)[0]) < cutoff_ns]
    stale = [f for f in old if f.name in covered]  # a crash left them after their segment was written
    old = [f for f in old if f.name not in covered]
    folded = old + (segments if len(segments) >= max_segments else [])
    if len(old) < min_files and len(folded) == len(old):
        for f in stale:
            f.unlink(missing_ok=True)
        return None
    frame = _read(folded, stream)
    sources = frame[SOURCE]
    name = (
        f"{sources.min().removesuffix('.parquet')}~{sources.max().removesuffix('.parquet')}{SEGMENT_SUFFIX}"
    )
    segment = _write_durably(directory, name, frame)
    for f in [*folded, *stale]:  # the segment is durable: what it holds may go (a crash here is harmless)
        if f != segment:
            f.unlink(missing_ok=True)
    _fsync_dir(directory)
    return segment


def verify(workdir: Path, stream: str) -> dict[str, object]:
    """Counts, and every problem found (unreadable file, wrong columns, an event twice)."""
    files = _log_files(stream_dir(workdir, stream))
    problems: list[str] = []
    for f in files:
        try:
            columns = set(pl.read_parquet_schema(f))
        except Exception as exc:
            problems.append(f"{f.name}: unreadable ({exc})")
            continue
        missing = sorted(set(SCHEMAS[stream]) - OPTIONAL_COLUMNS[stream] - columns)
        if missing:
            problems.append(f"{f.name}: missing columns {missing}")
    events = read_all(workdir, stream).height if not problems else None
    return {
        "stream": stream,
        "files": sum(not is_segment(f) for f in files),
        "segments": sum(is_segment(f) for f in files),
        "events": events,
        "problems": problems,
    }


class EventFollower:
    """Reads the files of a stream that appeared since the last call (files written by this process can be
    skipped: it applied them when it wrote them). The file implementation of starling.eventbus.Follower."""

    waits = False  # poll returns at once: the follow loop sleeps between polls

    def __init__(self, workdir: Path, stream: str, start_at_end: bool = False) -> None:
        # Held by a writer of this process from append to mark_seen, so poll never reads its file first.
        self.lock = threading.Lock()
        self.directory = stream_dir(workdir, stream)
        self.stream = stream
        self.seen: set[str] = set()  # names of single files applied, and of segments read
        if start_at_end:
            files = _log_files(self.directory)
            self.seen = {f.name for f in files} | _covered(files)

    def mark_seen(self, path: Path | str) -> None:
        """Skip this file (a path, or the name :func:`append` gave it) in later polls."""
        self.seen.add(Path(path).name)

    def poll(self) -> pl.DataFrame | None:
        """The events of files (and segment rows) not seen yet, in order; None when there are none."""
        with self.lock:
            new, covered, frame = _listed_and_read(
                lambda: [f for f in _log_files(self.directory) if f.name not in self.seen],
                self.stream,
                skip_sources=self.seen,
            )
            if not new:
                return None
            self.seen.update(f.name for f in new)
            self.seen.update(covered)
        if frame is None or frame.height == 0:
            return None
        return frame.drop(SOURCE, ROW)
