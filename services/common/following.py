"""Keep a service's in-memory state current by following the event log (starling/eventbus.py: the file log
or the Redis bus): rating feedback into user histories, catalog upserts into the catalog."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import polars as pl

from services.common.history import UserHistory
from starling.eventbus import Follower, open_event_log
from starling.events import MOVIE_STREAM, RATING_STREAM

log = logging.getLogger("starling.following")
# Polls that wait for events (the Redis bus's XREAD BLOCK) run here, not in the loop's default executor,
# which they would otherwise keep busy.
_WAITING_POLLS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="event-follow")


def apply_rating_events(history: UserHistory, events: pl.DataFrame) -> int:
    """Add the explicit ratings among ``events`` to ``history``; returns how many were added."""
    ratings = events.filter(pl.col("kind") == "rating").sort("event_timestamp", maintain_order=True)
    if ratings.height:
        history.add(
            ratings["user_id"].to_numpy(),
            ratings["movie_id"].to_numpy(),
            ratings["rating"].to_numpy(),
            ratings["event_timestamp"].dt.epoch("us").to_numpy(),
        )
    return ratings.height


async def follow(follower: Follower, apply: Callable[[pl.DataFrame], object], interval_s: float) -> None:
    """Forever: every ``interval_s``, hand the stream's new events (all of them at first) to ``apply``; a
    follower that waits for events itself (``waits``) is polled again at once."""
    loop = asyncio.get_running_loop()
    while True:
        failed = False
        try:
            if follower.waits:
                events = await loop.run_in_executor(_WAITING_POLLS, follower.poll)
            else:
                events = await asyncio.to_thread(follower.poll)
            if events is not None:
                applied = apply(events)
                if inspect.isawaitable(applied):
                    await applied
                log.info("applied events", extra={"stream": follower.stream, "events": events.height})
        except Exception:  # a bad file must not stop the follower; it is logged and skipped
            log.exception("could not apply events", extra={"stream": follower.stream})
            failed = True
        if failed or not follower.waits:
            await asyncio.sleep(interval_s)


def start_following(
    workdir: Path, history: UserHistory, interval_s: float, follower: Follower | None = None
) -> asyncio.Task:
    """Follow rating feedback into ``history`` on the running loop (keep the returned task referenced)."""
    follower = follower or open_event_log(workdir).follower(RATING_STREAM)
    return asyncio.get_running_loop().create_task(
        follow(follower, lambda events: apply_rating_events(history, events), interval_s)
    )


def start_following_catalog(
    workdir: Path,
    apply_movies: Callable[[pl.DataFrame], object],
    interval_s: float,
    follower: Follower | None = None,
) -> asyncio.Task:
    """Follow catalog upserts (the movies stream) into ``apply_movies`` on the running loop."""
    follower = follower or open_event_log(workdir).follower(MOVIE_STREAM)
    return asyncio.get_running_loop().create_task(follow(follower, apply_movies, interval_s))


async def every(interval_s: float, job: Callable[[], object]) -> None:
    """Forever: every ``interval_s``, run ``job`` in a worker thread; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.exception("periodic job failed", extra={"job": getattr(job, "__qualname__", str(job))})
