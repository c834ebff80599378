"""The exposure log: every list the recommend service served, for experiment reports, attribution and replay.

One JSON object per line under WORKDIR/events/exposures/, one file per writing process at a time
(``<start ns>-<pid>.jsonl``), rotated when a file passes ``max_segment_bytes``; the oldest files are deleted
when there are more than ``max_segments`` (bounded disk). A record:

    {"request_id": "9f…", "time_us": 1764547200000000, "user_id": 1, "k": 10, "model_version": "2026…",
     "experiments": [{"experiment": "ranker-ab", "arm": "control"}],
     "items": [318, 2571, …], "item_arms": ["", "", …]}

``item_arms[i]`` names the arm whose list contributed ``items[i]`` in an interleaving experiment ("" otherwise).

Durability: :meth:`ExposureLog.append` writes the line to the file (``write`` to the kernel) before it
returns, so it survives a crash of the process (``kill -9``) once the reply is sent; with ``fsync=True`` it
also survives a crash of the machine, at the cost of one fsync per served list. A line cut short by a crash in
the middle of ``write`` is skipped by :func:`read_exposures`.
"""

from __future__ import annotations

import io
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import polars as pl

EXPOSURE_STREAM = "exposures"
SUFFIX = ".jsonl"
SCHEMA: dict[str, pl.DataType] = {
    "request_id": pl.String(),
    "time_us": pl.Int64(),
    "user_id": pl.Int64(),
    "k": pl.Int32(),
    "model_version": pl.String(),
    "experiments": pl.List(pl.Struct({"experiment": pl.String(), "arm": pl.String()})),
    "items": pl.List(pl.Int64()),
    "item_arms": pl.List(pl.String()),
}


def exposure_dir(workdir: Path) -> Path:
    return Path(workdir) / "events" / EXPOSURE_STREAM


class ExposureLog:
    """Appends exposure records as JSON lines (thread-safe); see the module's docstring."""

    def __init__(
        self,
        directory: Path,
        max_segment_bytes: int = 64 * 1024 * 1024,
        max_segments: int = 64,
        fsync: bool = False,
    ) -> None:
        self.directory = Path(directory)
        self.max_segment_bytes = max_segment_bytes
        self.max_segments = max_segments
        self.fsync = fsync
        self._lock = threading.Lock()
        self._file: io.BufferedWriter | None = None
        self._written = 0

    def append(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, separators=(",", ":")) + "\n").encode()
        with self._lock:
            if self._file is None or self._written >= self.max_segment_bytes:
                self._rotate()
            assert self._file is not None
            self._file.write(line)
            self._file.flush()  # in the kernel before the reply: a killed process loses nothing
            if self.fsync:
                os.fsync(self._file.fileno())
            self._written += len(line)

    def _rotate(self) -> None:
        if self._file is not None:
            self._file.close()
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.directory / f"{time.time_ns():020d}-{os.getpid()}{SUFFIX}"
        self._file = path.open("ab")
        self._written = 0
        for old in segments(self.directory)[: -self.max_segments]:
            old.unlink(missing_ok=True)

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def segments(directory: Path) -> list[Path]:
    """The log's files, oldest first."""
    return sorted(Path(directory).glob(f"*{SUFFIX}")) if Path(directory).is_dir() else []


def read_exposures(workdir: Path, experiment: str | None = None) -> pl.DataFrame:
    """Every exposure record (columns of ``SCHEMA`` plus ``time``, a UTC datetime), oldest file first; with
    ``experiment``, only the lists served to users in it. A line cut short by a crash is skipped."""
    chunks = []
    for path in segments(exposure_dir(workdir)):
        data = path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        if complete:
            chunks.append(complete)
    if not chunks:
        frame = pl.DataFrame(schema=SCHEMA)
    else:
        frame = pl.read_ndjson(io.BytesIO(b"".join(chunks)), schema=SCHEMA)
    frame = frame.with_columns(time=pl.from_epoch("time_us", time_unit="us").dt.replace_time_zone("UTC"))
    if experiment is not None:
        frame = frame.filter(
            pl.col("experiments").list.eval(pl.element().struct.field("experiment") == experiment).list.any()
        )
    return frame
