"""Keep a service's in-memory state current by following the event log (starling/events.py):
rating feedback into user histories, catalog upserts into the catalog."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Callable
from pathlib import Path

import polars as pl

from services.common.history import UserHistory
from starling.events import MOVIE_STREAM, RATING_STREAM, EventFollower

log = logging.getLogger("starling.following")


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


async def follow(follower: EventFollower, apply: Callable[[pl.DataFrame], object], interval_s: float) -> None:
    """Forever: every ``interval_s``, hand the stream's new events (all of them at first) to ``apply``."""
    while True:
        try:
            events = await asyncio.to_thread(follower.poll)
            if events is not None:
                applied = apply(events)
                if inspect.isawaitable(applied):
                    await applied
                log.info("applied events", extra={"stream": follower.stream, "events": events.height})
        except Exception:  # a bad file must not stop the follower; it is logged and skipped
            log.exception("could not apply events", extra={"stream": follower.stream})
        await asyncio.sleep(interval_s)


def start_following(
    workdir: Path, history: UserHistory, interval_s: float, follower: EventFollower | None = None
) -> asyncio.Task:
    """Follow rating feedback into ``history`` on the running loop (keep the returned task referenced)."""
    follower = follower or EventFollower(workdir, RATING_STREAM)
    return asyncio.get_running_loop().create_task(
        follow(follower, lambda events: apply_rating_events(history, events), interval_s)
    )


def start_following_catalog(
    workdir: Path,
    apply_movies: Callable[[pl.DataFrame], object],
    interval_s: float,
    follower: EventFollower | None = None,
) -> asyncio.Task:
    """Follow catalog upserts (the movies stream) into ``apply_movies`` on the running loop."""
    follower = follower or EventFollower(workdir, MOVIE_STREAM)
    return asyncio.get_running_loop().create_task(follow(follower, apply_movies, interval_s))


async def every(interval_s: float, job: Callable[[], object]) -> None:
    """Forever: every ``interval_s``, run ``job`` in a worker thread; a failure is logged, not fatal."""
    while True:
        await asyncio.sleep(interval_s)
        try:
            await asyncio.to_thread(job)
        except Exception:
            log.exception("periodic job failed", extra={"job": getattr(job, "__qualname__", str(job))})
