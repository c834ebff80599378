"""`starling bench events`: the file log against the Redis Streams bus (starling/eventbus.py), as JSON.

- Throughput: one thread appends one-event batches (a rating from the web page is one call), then 100-event
  batches, back to back; every append durable as the service acknowledges it (file: the parquet file and its
  directory fsynced; Redis: the XADD's reply).
- Visibility: a writer appends one event every ``every_s``; a follower in another process, run as the services
  run it (file: a poll every STARLING_EVENT_POLL_S; Redis: XREAD BLOCK), notes when it sees each one; the
  latency is seen minus appended (one machine, one clock).

The file log is written into a temporary directory and the Redis keys get a prefix of their own, deleted at the
end: the benchmark never touches a stack's events.
"""

from __future__ import annotations

import datetime as dt
import multiprocessing as mp
import os
import platform
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from starling import events
from starling.config import get_settings
from starling.eventbus import EventLog, FileEventLog, RedisEventLog

FIRST_VISIBILITY_USER = 10_000_000  # the visibility events' user ids start here (throughput's below)


def _frame(n: int, first_user: int) -> pl.DataFrame:
    """``n`` rating events of distinct users: each event's user id names it."""
    return pl.DataFrame(
        {
            "user_id": np.arange(first_user, first_user + n, dtype=np.int64),
            "movie_id": np.ones(n, dtype=np.int64),
            "rating": np.full(n, 4.0, dtype=np.float32),
        }
    ).with_columns(
        event_timestamp=pl.lit(dt.datetime.now(dt.UTC)),
        kind=pl.lit("rating"),
        request_id=pl.lit(None, dtype=pl.String),
    )


def _open(kind: str, where: str, url: str, poll_s: float) -> EventLog:
    return FileEventLog(Path(where)) if kind == "file" else RedisEventLog(url, where, block_s=poll_s)


def _throughput(log: EventLog, appends: int, batch: int) -> float:
    started = time.perf_counter()
    for i in range(appends):  # one append per call, as the service makes them
        log.append(events.RATING_STREAM, _frame(batch, i * batch))
    return appends * batch / (time.perf_counter() - started)


def _follow(kind: str, where: str, url: str, poll_s: float, expected: int, ready: Any, out: Any) -> None:
    """In another process: follow the ratings stream and report when each user id was first seen (ns)."""
    follower = _open(kind, where, url, poll_s).follower(events.RATING_STREAM, start_at_end=True)
    ready.set()
    seen: dict[int, int] = {}
    deadline = time.monotonic() + 60 + expected
    while len(seen) < expected and time.monotonic() < deadline:
        got = follower.poll()
        now = time.time_ns()
        if got is not None:
            users = got["user_id"].unique().to_numpy()
            seen.update(dict.fromkeys(users[~np.isin(users, list(seen))].tolist(), now))
        if not follower.waits:
            time.sleep(poll_s)
    out.put(seen)


def _visibility(kind: str, where: str, url: str, poll_s: float, n: int, every_s: float) -> dict[str, Any]:
    context = mp.get_context("spawn")
    ready, out = context.Event(), context.Queue()
    reader = context.Process(target=_follow, args=(kind, where, url, poll_s, n, ready, out))
    reader.start()
    ready.wait(60)
    time.sleep(0.5)
    log = _open(kind, where, url, poll_s)
    appended = np.zeros(n, dtype=np.int64)
    for i in range(n):  # paced: one event every every_s
        log.append(events.RATING_STREAM, _frame(1, FIRST_VISIBILITY_USER + i))
        appended[i] = time.time_ns()
        time.sleep(every_s)
    seen = out.get(timeout=120 + n)
    reader.join(30)
    users = FIRST_VISIBILITY_USER + np.arange(n)
    found = np.isin(users, list(seen))
    seen_ns = np.array([seen[int(u)] for u in users[found]], dtype=np.int64)
    latency = (seen_ns - appended[found]) / 1e6
    quantiles = np.percentile(latency, [50, 95, 99]) if len(latency) else [float("nan")] * 3
    return {
        "events": n,
        "seen": int(found.sum()),
        "p50_ms": round(float(quantiles[0]), 2),
        "p95_ms": round(float(quantiles[1]), 2),
        "p99_ms": round(float(quantiles[2]), 2),
        "max_ms": round(float(latency.max()), 2) if len(latency) else float("nan"),
    }


def bench_events(
    redis_url: str = "redis://127.0.0.1:6379/0",
    appends: int = 1000,
    visibility_events: int = 200,
    every_s: float = 0.05,
) -> dict[str, Any]:
    """Both logs' figures (see the module docstring); Redis keys under a fresh prefix, deleted afterwards."""
    poll_s = get_settings().event_poll_s
    prefix = f"starling-bench-{uuid.uuid4().hex}:"
    results: dict[str, Any] = {}
    redis_log = RedisEventLog(redis_url, prefix, block_s=poll_s)
    with tempfile.TemporaryDirectory(prefix="starling-bench-events-") as directory:
        try:
            for kind, where in (("file", directory), ("redis", prefix)):
                log = _open(kind, where, redis_url, poll_s)
                results[kind] = {
                    "events_per_s_one_per_append": round(_throughput(log, appends, 1)),
                    "events_per_s_100_per_append": round(_throughput(log, max(appends // 10, 1), 100)),
                }
            stream = redis_log.stream_key(events.RATING_STREAM)
            memory = redis_log.client.memory_usage(stream, samples=0) or 0
            results["redis"]["bytes_per_entry"] = round(memory / max(redis_log.client.xlen(stream), 1))
            for kind, where in (("file", directory), ("redis", prefix)):
                results[kind]["visibility"] = _visibility(
                    kind, where, redis_url, poll_s, visibility_events, every_s
                )
        finally:
            keys = redis_log.keys()
            if keys:
                redis_log.client.delete(*keys)
    return {
        "benchmark": "events",
        "poll_s": poll_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
        **results,
    }
