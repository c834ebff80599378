"""Real-time feedback: check events, drop duplicates, append to the durable event log, update the user's
history and push the user's recomputed features to the Feast online store.

Features are recomputed with the one feature definition (starling.features.build.compute_entity_features)
over the user's ratings, each movie at its latest rating, so online values equal what the next
`features build` computes. The user's embedding is the mean of their liked movies' embeddings, which recall
derives from the same history, so the next Recommend reflects the feedback without retraining.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.errors import NANOS_MAX, TIMESTAMP_MAX_S, InvalidArgument
from services.common.following import apply_rating_events
from services.common.history import UserHistory
from services.common.jsonlog import ThrottledLog
from services.common.observability import count_feedback
from starling import events
from starling.eventbus import EventLog, Follower, append_own, open_event_log
from starling.features.build import compute_entity_features
from starling.featurestore import USER_PUSH_SOURCE
from starling.v1 import recommend_pb2

MAX_EVENTS = 1000
PUSH_LOG = ThrottledLog(logging.getLogger("starling.recommend.feedback"))
# Real-time feedback older than this is a client bug (an unset clock, a 0 timestamp), not history: history
# enters through `starling data ingest`.
EARLIEST_EVENT = dt.datetime(1995, 1, 1, tzinfo=dt.UTC)
EARLIEST_EVENT_S = int(EARLIEST_EVENT.timestamp())
KIND_NAMES = {
    recommend_pb2.FEEDBACK_KIND_RATING: "rating",
    recommend_pb2.FEEDBACK_KIND_CLICK: "click",
    recommend_pb2.FEEDBACK_KIND_WATCH: "watch",
}
_KIND_LOOKUP = np.array(["", "rating", "click", "watch"], dtype=object)  # indexed by FeedbackKind
KEY = ["user_id", "movie_id", "event_timestamp"]
MAX_REQUEST_ID = 64
REQUEST_ID_PATTERN = rf"^[A-Za-z0-9_-]{{0,{MAX_REQUEST_ID}}}$"


@dataclass(frozen=True)
class FeedbackBatch:
    """Request events as columns."""

    user_ids: np.ndarray
    movie_ids: np.ndarray
    kinds: np.ndarray  # int (FeedbackKind)
    ratings: np.ndarray  # float32
    has_time: np.ndarray  # bool
    seconds: np.ndarray  # int64, as sent (0 where not given)
    nanos: np.ndarray  # int64, as sent
    request_ids: np.ndarray  # str (object): the Recommend answer each responds to; "" when not sent

    @property
    def times_us(self) -> np.ndarray:
        """int64 microseconds since the epoch; 0 where not given; clipped where out of range (rejected)."""
        seconds = np.clip(self.seconds, 0, TIMESTAMP_MAX_S)
        return np.where(self.has_time, seconds * 1_000_000 + np.clip(self.nanos, 0, NANOS_MAX) // 1000, 0)

    @classmethod
    def from_events(cls, events_: Sequence[recommend_pb2.FeedbackEvent]) -> FeedbackBatch:
        if len(events_) > MAX_EVENTS:
            raise InvalidArgument(f"events holds {len(events_)} events; at most {MAX_EVENTS} per call")
        return cls(  # decoding protobuf messages needs one attribute read per event and field
            user_ids=np.fromiter((e.user_id for e in events_), dtype=np.int64, count=len(events_)),
            movie_ids=np.fromiter((e.movie_id for e in events_), dtype=np.int64, count=len(events_)),
            kinds=np.fromiter((e.kind for e in events_), dtype=np.int64, count=len(events_)),
            ratings=np.fromiter((e.rating for e in events_), dtype=np.float32, count=len(events_)),
            has_time=np.fromiter((e.HasField("time") for e in events_), dtype=bool, count=len(events_)),
            seconds=np.fromiter((e.time.seconds for e in events_), dtype=np.int64, count=len(events_)),
            nanos=np.fromiter((e.time.nanos for e in events_), dtype=np.int64, count=len(events_)),
            request_ids=np.array([e.request_id for e in events_], dtype=object),
        )


def rejection_reasons(batch: FeedbackBatch, catalog: Catalog, now_us: int, max_future_us: int) -> np.ndarray:
    """One reason per event ("" = acceptable); the first failed check wins."""
    n = len(batch.user_ids)
    reasons = np.full(n, "", dtype=object)

    def reject(mask: np.ndarray, message: np.ndarray | str) -> None:
        target = mask & (reasons == "")
        reasons[target] = message[target] if isinstance(message, np.ndarray) else message

    ids = lambda name, values: np.char.add(f"{name} ", values.astype(str)).astype(object)  # noqa: E731
    reject(batch.user_ids < 0, ids("user_id must be >= 0, got", batch.user_ids))
    reject(batch.movie_ids < 0, ids("movie_id must be >= 0, got", batch.movie_ids))
    reject(
        catalog.positions(batch.movie_ids) < 0,
        np.char.add(ids("movie_id", batch.movie_ids).astype(str), " is not in the catalog").astype(object),
    )
    reject(~np.isin(batch.kinds, list(KIND_NAMES)), "kind must be FEEDBACK_KIND_RATING, _CLICK or _WATCH")
    is_rating = batch.kinds == recommend_pb2.FEEDBACK_KIND_RATING
    on_scale = (batch.ratings >= 0.5) & (batch.ratings <= 5.0) & (np.mod(batch.ratings * 2, 1) == 0)
    reject(
        is_rating & ~on_scale,
        np.char.add(ids("rating", batch.ratings).astype(str), " outside 0.5..5 in steps of 0.5").astype(
            object
        ),
    )
    well_formed = pl.Series(batch.request_ids, dtype=pl.String).str.contains(REQUEST_ID_PATTERN).to_numpy()
    reject(
        ~well_formed,
        f"request_id must be at most {MAX_REQUEST_ID} letters, digits, '-' or '_' (a RecommendResponse.request_id)",
    )
    given = batch.has_time
    reject(given & ((batch.nanos < 0) | (batch.nanos > NANOS_MAX)), f"time.nanos must be 0..{NANOS_MAX}")
    reject(
        given & (batch.seconds > (now_us + max_future_us) // 1_000_000),
        f"time is more than {max_future_us // 1_000_000} s in the future",
    )
    reject(
        given & (batch.seconds < EARLIEST_EVENT_S),
        f"time is before {EARLIEST_EVENT:%Y-%m-%d}, the earliest feedback accepted",
    )
    return reasons


class FeedbackRecorder:
    def __init__(
        self,
        workdir: Path,
        catalog: Catalog,
        movies: pl.DataFrame,
        history: UserHistory,
        store,
        max_future_s: float,
        follower: Follower,
        event_log: EventLog | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.event_log = event_log or open_event_log(self.workdir)  # where ``follower`` reads
        self.catalog = catalog
        self.movies = movies
        self.history = history
        self.store = store
        self.max_future_us = int(max_future_s * 1_000_000)
        self.follower = follower
        base = pl.read_parquet(self.workdir / "ratings.parquet", columns=KEY)
        logged = self.event_log.read_all(events.RATING_STREAM).select(KEY)
        self.known = pl.concat([base, logged]).unique()
        self.lock = threading.Lock()
        self.pending: set[int] = set()  # users whose online features still lag the log (a push failed)
        # Called with the events of each batch once they are durable (the experiment counters).
        self.on_recorded: Callable[[pl.DataFrame], None] | None = None

    def record(self, request: recommend_pb2.RecordFeedbackRequest) -> recommend_pb2.RecordFeedbackResponse:
        with self.lock:  # one batch at a time: duplicates are judged against everything recorded before
            return self._record(request)

    def apply_logged(self, logged: pl.DataFrame) -> int:
        """Events of the log this process did not write (recorded before a restart, by a crashed process or by
        another replica): into the history, and the raters' features recomputed and pushed online. Pushing is
        idempotent (features are recomputed from the whole history), so replaying the whole log on start-up
        repairs any push that a crash cut off."""
        with self.lock:
            added = apply_rating_events(self.history, logged)
            self.known = pl.concat(
                [self.known, logged.select(KEY)]
            )  # a semi-join reads it: repeats are harmless
            raters = logged.filter(pl.col("kind") == "rating")["user_id"].unique().to_numpy()
            self.push_or_defer(raters)
            return added

    def retry_pending(self) -> None:
        """Push the users a failed push left behind (called periodically)."""
        with self.lock:
            if self.pending:
                self.push_or_defer(np.empty(0, np.int64))

    def push_or_defer(self, user_ids: np.ndarray) -> None:
        """Push the users' features (and any pending); on failure keep them pending: the events are durable,
        so the answer stays a success and the online store catches up on a later try."""
        users = np.union1d(np.asarray(user_ids, dtype=np.int64), np.fromiter(self.pending, np.int64))
        if not len(users):
            return
        try:
            self.push_user_features(users)
            self.pending.clear()
        except Exception as exc:  # the online store is down or refused: retried by retry_pending
            self.pending.update(users.tolist())
            PUSH_LOG.warning(
                "push", "online feature push failed; will retry", users=len(users), error=str(exc)
            )

    def _record(self, request: recommend_pb2.RecordFeedbackRequest) -> recommend_pb2.RecordFeedbackResponse:
        batch = FeedbackBatch.from_events(request.events)
        now_us = int(dt.datetime.now(dt.UTC).timestamp() * 1_000_000)
        reasons = rejection_reasons(batch, self.catalog, now_us, self.max_future_us)
        accepted = reasons == ""
        times_us = batch.times_us
        frame = pl.DataFrame(
            {
                "user_id": batch.user_ids,
                "movie_id": batch.movie_ids,
                "rating": np.where(batch.kinds == recommend_pb2.FEEDBACK_KIND_RATING, batch.ratings, np.nan),
                "event_timestamp": np.where(times_us > 0, times_us, now_us),
                "kind": _KIND_LOOKUP[np.where(np.isin(batch.kinds, list(KIND_NAMES)), batch.kinds, 0)],
                "request_id": batch.request_ids,
            },
            schema_overrides={"request_id": pl.String, "kind": pl.String},
        ).with_columns(
            pl.col("request_id").replace("", None),
            pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")),
            pl.col("rating").cast(pl.Float32),
            pl.int_range(pl.len()).alias("index"),
        )
        # duplicates: of what is known already, or of an earlier event in this batch
        seen_before = frame.join(self.known, on=KEY, how="semi")["index"].to_numpy()
        first_in_batch = (
            frame.filter(pl.col("index").is_in(np.flatnonzero(accepted).tolist()))
            .unique(KEY, keep="first", maintain_order=True)["index"]
            .to_numpy()
        )
        duplicate = accepted & (
            np.isin(np.arange(len(frame)), seen_before) | ~np.isin(np.arange(len(frame)), first_in_batch)
        )
        fresh = frame.filter(pl.Series(accepted & ~duplicate)).drop("index")
        if fresh.height:
            append_own(self.event_log, self.follower, fresh)  # durable (or accepted by Redis) before we reply
            self.known = pl.concat([self.known, fresh.select(KEY)])
            rated = fresh.filter(pl.col("kind") == "rating").sort("event_timestamp", maintain_order=True)
            if rated.height:
                self.history.add(
                    rated["user_id"].to_numpy(),
                    rated["movie_id"].to_numpy(),
                    rated["rating"].to_numpy(),
                    rated["event_timestamp"].dt.epoch("us").to_numpy(),
                )
                self.push_or_defer(np.unique(rated["user_id"].to_numpy()))
            if self.on_recorded is not None:
                self.on_recorded(fresh)
        count_feedback(
            accepted=int((accepted & ~duplicate).sum()),
            duplicate=int(duplicate.sum()),
            rejected=int((~accepted).sum()),
        )
        results = [
            recommend_pb2.FeedbackResult(accepted=bool(ok), duplicate=bool(dup), reason=str(reason))
            for ok, dup, reason in zip(accepted.tolist(), duplicate.tolist(), reasons.tolist(), strict=True)
        ]
        return recommend_pb2.RecordFeedbackResponse(
            results=results, accepted=int(accepted.sum()), rejected=int((~accepted).sum())
        )

    def user_ratings_frame(self, user_ids: np.ndarray) -> pl.DataFrame:
        """The users' ratings, each movie once at its latest rating (input of the feature definition)."""
        parts = [self.history.latest(int(user)) for user in user_ids.tolist()]  # one slice per user
        return pl.DataFrame(
            {
                "user_id": np.repeat(user_ids, [len(p[0]) for p in parts]),
                "movie_id": np.concatenate([p[0] for p in parts]),
                "rating": np.concatenate([p[1] for p in parts]),
                "event_timestamp": np.concatenate([p[2] for p in parts]),
            }
        ).with_columns(
            pl.col("event_timestamp").cast(pl.Datetime("us", "UTC")), pl.col("rating").cast(pl.Float32)
        )

    def push_user_features(self, user_ids: np.ndarray) -> pl.DataFrame:
        """Recompute the users' features from their full histories and push them to the online store."""
        ratings = self.user_ratings_frame(user_ids)
        movies = self.movies.join(ratings.select("movie_id").unique(), on="movie_id", how="semi")
        users, _ = compute_entity_features(ratings, movies)
        users = users.with_columns(
            pl.lit(dt.datetime.now(dt.UTC)).dt.cast_time_unit("us").alias("event_timestamp")
        )
        self.store.push(USER_PUSH_SOURCE, users.to_pandas())
        return users
