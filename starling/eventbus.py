"""The event log behind one interface, chosen by one setting (``STARLING_EVENT_BUS``, :func:`open_event_log`):

- empty (the default): the file log of :mod:`starling.events` under WORKDIR/events, unchanged: fsynced
  parquet files, segments, compaction. Movie ids come from the process that takes the upsert.
- ``redis://[:password@]host:port/db`` (or ``rediss://``, ``unix://``): a shared bus on Redis Streams, so
  that several recommend replicas write and every follower (candidates, recall, rerank, the ranker, each
  recommend replica) reads the same events; movie ids come from one Redis counter.

Redis layout (``P`` = ``STARLING_EVENT_BUS_PREFIX``, default ``starling:``):

- ``P{events:<stream>}``: the stream. **One entry per append** (a RecordFeedback batch, an upsert) with two
  fields: ``b``, the batch as an Arrow IPC record-batch message (columnar: no per-row encoding, the list
  columns such as genres and the 384-float text vector keep their types, and a batch is all or nothing, as
  one file of the file log is), and ``s``, the fingerprint of its Arrow schema.
- ``P{events:<stream>}:schemas``: hash fingerprint -> the Arrow schema message. A reader joins the schema
  and the record batches of a run of entries into one IPC stream and decodes them in one call; a column
  added later (events.OPTIONAL_COLUMNS) reads as null in older entries, as with old parquet files.
- ``P{events:<stream>}:append:<token>``: the entry id of an append, kept 60 s, so that an append retried
  after a lost reply adds no second entry (the append is one Lua script: look up the token, XADD, store it).
- ``P{ids}:<name>``: the id counter (:meth:`RedisEventLog.next_id`).

An append returns once Redis has executed the XADD: with ``appendonly yes`` and ``appendfsync always`` the
entry is on disk before that reply; with ``everysec`` a Redis crash loses up to the last second. Followers
read with XREAD BLOCK from their last entry id (one round trip per poll interval when idle, the event as
soon as it is written otherwise). Nothing is trimmed unless ``STARLING_EVENT_BUS_MAXLEN`` is set (XADD
MAXLEN ~): restarts and training read the whole stream, as they read every file of the file log.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import logging
import threading
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import polars as pl
import pyarrow as pa

from starling import events
from starling.config import Settings, get_settings
from starling.errors import StarlingError

log = logging.getLogger("starling.eventbus")

REDIS_SCHEMES = ("redis", "rediss", "unix")


class Follower(Protocol):
    """Reads the events of one stream appended since its last poll."""

    stream: str
    lock: threading.Lock  # a writer of this process holds it from append to mark_seen
    waits: bool  # poll itself waits up to the poll interval for new events (the caller need not sleep)

    def poll(self) -> pl.DataFrame | None:
        """The new events in write order (cast to the stream's schema); None when there are none."""
        ...

    def mark_seen(self, token: str) -> None:
        """Skip the append ``token`` (from :meth:`EventLog.append`): this process applied it itself."""
        ...


class EventLog(Protocol):
    """Durable, ordered streams of events (events.RATING_STREAM, events.MOVIE_STREAM) and id allocation."""

    description: str  # for logs and errors (a Redis URL without its password)

    def append(self, stream: str, frame: pl.DataFrame) -> str:
        """Append ``frame`` (cast to the stream's schema) durably; returns a token a follower can skip."""
        ...

    def read_all(self, stream: str) -> pl.DataFrame:
        """Every event of the stream in write order (an empty frame with the schema when there are none)."""
        ...

    def follower(self, stream: str, start_at_end: bool = False) -> Follower: ...

    def next_id(self, name: str, above: int) -> int:
        """An id greater than ``above`` and than every id this allocator gave before."""
        ...

    def compact(self, stream: str) -> None:
        """Keep restart time bounded (the file log folds old files into segments; a no-op for Redis)."""
        ...


def append_own(log_: EventLog, follower: Follower, frame: pl.DataFrame) -> str:
    """Append ``frame`` to the follower's stream and mark it seen: the writer applies its events itself, so
    its own follower must not apply them a second time."""
    with follower.lock:
        token = log_.append(follower.stream, frame)
        follower.mark_seen(token)
    return token


# ------------------------------------------------------------------------------------------------ file log
class FileEventLog:
    """The file log (starling/events.py) under ``workdir``, as it always was."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = Path(workdir)
        self.description = f"file log {events.stream_dir(self.workdir, '')}"
        self._ids: dict[str, int] = {}
        self._ids_lock = threading.Lock()

    def append(self, stream: str, frame: pl.DataFrame) -> str:
        return events.append(self.workdir, stream, frame).name

    def read_all(self, stream: str) -> pl.DataFrame:
        return events.read_all(self.workdir, stream)

    def follower(self, stream: str, start_at_end: bool = False) -> events.EventFollower:
        return events.EventFollower(self.workdir, stream, start_at_end=start_at_end)

    def next_id(self, name: str, above: int) -> int:
        """Per process (ids given here are remembered, so concurrent upserts of one process differ); several
        writing processes must pass explicit ids."""
        with self._ids_lock:
            value = max(int(above), self._ids.get(name, 0)) + 1
            self._ids[name] = value
            return value

    def compact(self, stream: str) -> None:
        events.compact(self.workdir, stream)


# ------------------------------------------------------------------------------------------- Redis Streams
_EOS = b"\xff\xff\xff\xff\x00\x00\x00\x00"  # end of an Arrow IPC stream
PAGE = 5000  # entries per XRANGE / XREAD call
APPEND_TOKEN_TTL_S = 60
APPEND_TRIES = 3

# KEYS: stream, token key. ARGV: batch, schema fingerprint, maxlen (0 = no trim), token ttl.
_APPEND_SCRIPT = """
local done = redis.call('GET', KEYS[2])
if done then return done end
local id
if tonumber(ARGV[3]) > 0 then
  id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'b', ARGV[1], 's', ARGV[2])
else
  id = redis.call('XADD', KEYS[1], '*', 'b', ARGV[1], 's', ARGV[2])
end
redis.call('SET', KEYS[2], id, 'EX', ARGV[4])
return id
"""
# KEYS: counter. ARGV: floor. The counter is raised to the floor first (SET), then incremented: atomic.
_NEXT_ID_SCRIPT = """
local current = tonumber(redis.call('GET', KEYS[1]) or '0')
if current < tonumber(ARGV[1]) then redis.call('SET', KEYS[1], ARGV[1]) end
return redis.call('INCR', KEYS[1])
"""


def _id_key(entry_id: str) -> tuple[int, int]:
    milliseconds, sequence = entry_id.split("-")
    return int(milliseconds), int(sequence)


def _compact_type(dtype: pa.DataType) -> pa.DataType:
    """32-bit offsets instead of 64-bit ones (smaller entries; a batch stays far below 2 GiB)."""
    if pa.types.is_large_string(dtype) or pa.types.is_string_view(dtype):
        return pa.string()
    if pa.types.is_large_list(dtype) or pa.types.is_list_view(dtype):
        return pa.list_(_compact_type(dtype.value_type))
    return dtype


def redacted(url: str) -> str:
    """``url`` without its password."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username or ''}:***@{parts.hostname or ''}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


class RedisEventLog:
    """The event log on Redis Streams (layout in the module docstring); thread-safe."""

    def __init__(self, url: str, prefix: str = "starling:", maxlen: int = 0, block_s: float = 0.2) -> None:
        import redis
        from redis.backoff import ExponentialBackoff
        from redis.retry import Retry

        self.description = redacted(url)
        self.prefix = prefix
        self.maxlen = int(maxlen)
        self.block_ms = max(1, int(block_s * 1000))
        try:
            self.client = redis.Redis.from_url(
                url,
                socket_connect_timeout=5,
                socket_timeout=10 + block_s,
                health_check_interval=30,
                retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 3),
            )
            self.client.ping()
        except (ValueError, redis.RedisError) as exc:
            raise StarlingError(f"STARLING_EVENT_BUS={self.description}: cannot reach Redis ({exc})") from exc
        self._append = self.client.register_script(_APPEND_SCRIPT)
        self._next_id = self.client.register_script(_NEXT_ID_SCRIPT)
        self._schemas: dict[tuple[str, str], bytes] = {}  # (stream, fingerprint) -> schema message
        self._registered: set[tuple[str, str]] = set()
        self._warn_about_durability()

    # -------------------------------------------------------------------------------------------- keys
    def stream_key(self, stream: str) -> str:
        return f"{self.prefix}{{events:{stream}}}"

    def keys(self) -> list[str]:
        """Every key of this log (for clean-up)."""
        return [k.decode() for k in self.client.scan_iter(match=f"{self.prefix}{{*", count=1000)]

    def _warn_about_durability(self) -> None:
        try:
            config = self.client.config_get("append*")
        except Exception:  # CONFIG is often disabled on managed Redis: nothing to check
            return
        if config.get("appendonly") != "yes":
            log.warning(
                "the event bus's Redis does not write an append-only file: acknowledged events are lost "
                "if it restarts (set appendonly yes, appendfsync always)",
                extra={"event_bus": self.description},
            )

    # ------------------------------------------------------------------------------------------ encoding
    def _encode(self, stream: str, frame: pl.DataFrame) -> tuple[bytes, str]:
        """(record batch messages, schema fingerprint) of the frame, its schema registered once."""
        frame = events._with_optional_columns(frame, stream).select(
            [pl.col(name).cast(dtype) for name, dtype in events.SCHEMAS[stream].items()]
        )
        table = frame.to_arrow()
        schema = pa.schema([pa.field(f.name, _compact_type(f.type)) for f in table.schema])
        table = table.cast(schema).combine_chunks()
        batches = table.to_batches() or [pa.RecordBatch.from_pylist([], schema=schema)]
        schema_message = schema.serialize().to_pybytes()
        fingerprint = hashlib.sha256(schema_message).hexdigest()[:16]
        if (stream, fingerprint) not in self._registered:
            self.client.hsetnx(f"{self.stream_key(stream)}:schemas", fingerprint, schema_message)
            self._registered.add((stream, fingerprint))
            self._schemas[(stream, fingerprint)] = schema_message
        return b"".join(batch.serialize().to_pybytes() for batch in batches), fingerprint

    def _schema(self, stream: str, fingerprint: str) -> bytes:
        if (stream, fingerprint) not in self._schemas:
            stored = self.client.hgetall(f"{self.stream_key(stream)}:schemas")
            self._schemas.update({(stream, k.decode()): v for k, v in stored.items()})
        if (stream, fingerprint) not in self._schemas:
            raise StarlingError(
                f"{self.description}: schema {fingerprint} of stream {stream!r} is missing from "
                f"{self.stream_key(stream)}:schemas"
            )
        return self._schemas[(stream, fingerprint)]

    def decode(self, stream: str, entries: Iterable[tuple[str, dict[bytes, bytes]]]) -> pl.DataFrame:
        """The events of ``entries`` (XRANGE/XREAD items) in order: each run of entries with one schema is
        decoded as one Arrow IPC stream."""
        frames = []
        for fingerprint, run in itertools.groupby(entries, key=lambda entry: entry[1][b"s"].decode()):
            body = b"".join(fields[b"b"] for _, fields in run)
            table = pa.ipc.open_stream(self._schema(stream, fingerprint) + body + _EOS).read_all()
            frame = events._with_optional_columns(pl.from_arrow(table), stream)
            frames.append(
                frame.select([pl.col(name).cast(dtype) for name, dtype in events.SCHEMAS[stream].items()])
            )
        if not frames:
            return pl.DataFrame(schema=events.SCHEMAS[stream])
        return pl.concat(frames)

    # ------------------------------------------------------------------------------------------- EventLog
    def append(self, stream: str, frame: pl.DataFrame) -> str:
        """XADD the batch; returns its entry id once Redis executed it. A lost reply is retried with the
        same token, which adds no second entry."""
        import redis

        body, fingerprint = self._encode(stream, frame)
        key = self.stream_key(stream)
        token_key = f"{key}:append:{uuid.uuid4().hex}"
        for attempt in range(APPEND_TRIES):
            try:
                entry_id = self._append(
                    keys=[key, token_key], args=[body, fingerprint, self.maxlen, APPEND_TOKEN_TTL_S]
                )
                return entry_id.decode()
            except (redis.ConnectionError, redis.TimeoutError):
                if attempt == APPEND_TRIES - 1:
                    raise
                time.sleep(0.1 * (attempt + 1))
        raise AssertionError("unreachable")

    def entries_after(
        self, stream: str, after: str, block_ms: int = 0
    ) -> list[tuple[str, dict[bytes, bytes]]]:
        """Every entry after id ``after`` (XREAD pages; the first waits up to ``block_ms`` when there are
        none)."""
        key = self.stream_key(stream)
        found: list[tuple[str, dict[bytes, bytes]]] = []
        block = block_ms or None
        while True:
            reply = self.client.xread({key: after}, count=PAGE, block=block)
            page = [(entry_id.decode(), fields) for entry_id, fields in reply[0][1]] if reply else []
            found += page
            if len(page) < PAGE:
                return found
            after, block = page[-1][0], None

    def read_all(self, stream: str) -> pl.DataFrame:
        key = self.stream_key(stream)
        entries: list[tuple[str, dict[bytes, bytes]]] = []
        start = "-"
        while True:
            page = [(i.decode(), fields) for i, fields in self.client.xrange(key, start, "+", count=PAGE)]
            entries += page
            if len(page) < PAGE:
                return self.decode(stream, entries)
            start = f"({page[-1][0]}"

    def last_entry_id(self, stream: str) -> str:
        newest = self.client.xrevrange(self.stream_key(stream), "+", "-", count=1)
        return newest[0][0].decode() if newest else "0-0"

    def follower(self, stream: str, start_at_end: bool = False) -> RedisFollower:
        return RedisFollower(self, stream, self.last_entry_id(stream) if start_at_end else "0-0")

    def next_id(self, name: str, above: int) -> int:
        """INCR of one counter for every replica, first raised to ``above`` (the largest id the caller
        knows), so an id is never given twice nor equal to a known one."""
        return int(self._next_id(keys=[f"{self.prefix}{{ids}}:{name}"], args=[int(above)]))

    def compact(self, stream: str) -> None:
        """Nothing to fold: a stream is one key (trimming is XADD's MAXLEN, STARLING_EVENT_BUS_MAXLEN)."""


class RedisFollower:
    """Follows a Redis stream from an entry id (XREAD BLOCK); skips the entries this process appended."""

    waits = True

    def __init__(self, log_: RedisEventLog, stream: str, after: str = "0-0") -> None:
        self.log = log_
        self.stream = stream
        self.lock = threading.Lock()
        self.after = after
        self._own: set[str] = set()
        self._polling = threading.Lock()  # one poll at a time moves ``after``

    def mark_seen(self, token: str) -> None:
        self._own.add(token)

    def poll(self) -> pl.DataFrame | None:
        with self._polling:
            entries = self.log.entries_after(self.stream, self.after, self.log.block_ms)
            if not entries:
                return None
            # Read without the lock, filtered under it: a writer that added one of these entries held the
            # lock from before its XADD until mark_seen, so its mark is in by now.
            with self.lock:
                last = _id_key(entries[-1][0])
                fresh = [entry for entry in entries if entry[0] not in self._own]
                self._own = {token for token in self._own if _id_key(token) > last}
            self.after = entries[-1][0]
            return self.log.decode(self.stream, fresh) if fresh else None


# ------------------------------------------------------------------------------------------------ factory
def open_event_log(workdir: Path, settings: Settings | None = None) -> EventLog:
    """The event log the settings name (``STARLING_EVENT_BUS``), one instance per process and workdir; a
    StarlingError naming the setting when it is not a supported URL or Redis cannot be reached."""
    settings = settings or get_settings()
    return _open(
        Path(workdir).resolve(),
        settings.event_bus.strip(),
        settings.event_bus_prefix,
        settings.event_bus_maxlen,
        settings.event_poll_s,
    )


@functools.lru_cache(maxsize=16)
def _open(workdir: Path, url: str, prefix: str, maxlen: int, block_s: float) -> EventLog:
    if not url:
        return FileEventLog(workdir)
    if urlsplit(url).scheme not in REDIS_SCHEMES:
        raise StarlingError(
            f"STARLING_EVENT_BUS={redacted(url)!r}: expected empty (the file log under WORKDIR/events) or a "
            "Redis URL, redis://[:password@]host:port/db (rediss:// for TLS, unix:// for a socket)"
        )
    return RedisEventLog(url, prefix, maxlen, block_s)
