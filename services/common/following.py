"""Keep a service's in-memory user histories current by following the feedback event log."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import polars as pl

from services.common.history import UserHistory
from starling.events import RATING_STREAM, EventFollower

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


async def follow_ratings(
    workdir: Path, history: UserHistory, interval_s: float, follower: EventFollower | None = None
) -> None:
    """Forever: every ``interval_s``, apply rating events that appeared in the log (all of them at first)."""
    follower = follower or EventFollower(workdir, RATING_STREAM)
    while True:
        try:
            events = await asyncio.to_thread(follower.poll)
            if events is not None:
                log.info("applied feedback", extra={"ratings": apply_rating_events(history, events)})
        except Exception:  # a bad file must not stop the follower; it is logged and skipped
            log.exception("could not apply feedback events")
        await asyncio.sleep(interval_s)


def start_following(
    workdir: Path, history: UserHistory, interval_s: float, follower: EventFollower | None = None
) -> asyncio.Task:
    """Start :func:`follow_ratings` on the running loop (keep the returned task referenced)."""
    return asyncio.get_running_loop().create_task(follow_ratings(workdir, history, interval_s, follower))
