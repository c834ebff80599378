"""The event log behind one interface (starling/eventbus.py): the file log and the Redis Streams bus give the
same answers; against the real Redis on 127.0.0.1:6379, each test under its own key prefix (deleted after).

The slow tests start the whole stack on the Redis bus plus a second recommend replica, as real processes:
feedback sent to one replica reaches the other's answer within a second, concurrent upserts over both get
distinct ids, and a replica killed with SIGKILL while feedback streams in loses no acknowledged event."""

from __future__ import annotations

import datetime as dt
import os
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pyarrow as pa
import pytest

from starling import events
from starling.config import Settings
from starling.errors import StarlingError
from starling.eventbus import (
    FileEventLog,
    RedisEventLog,
    _open,
    append_own,
    open_event_log,
)

REDIS_URL = "redis://127.0.0.1:6379/0"


def _prefix() -> str:
    return f"starling-test-{uuid.uuid4().hex}:"


def _drop(log_: RedisEventLog) -> None:
    keys = log_.keys()
    if keys:
        log_.client.delete(*keys)


@pytest.fixture
def bus() -> Iterator[RedisEventLog]:
    log_ = RedisEventLog(REDIS_URL, _prefix(), block_s=0.2)
    try:
        yield log_
    finally:
        _drop(log_)


@pytest.fixture(params=["file", "redis"])
def event_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FileEventLog | RedisEventLog]:
    if request.param == "file":
        yield FileEventLog(tmp_path)
        return
    log_ = RedisEventLog(REDIS_URL, _prefix(), block_s=0.2)
    try:
        yield log_
    finally:
        _drop(log_)


def _ratings(users: list[int], kind: str = "rating", request_id: str | None = None) -> pl.DataFrame:
    n = len(users)
    return pl.DataFrame(
        {
            "user_id": users,
            "movie_id": [u * 10 + 1 for u in users],
            "rating": [4.5 if kind == "rating" else None] * n,
            "event_timestamp": [
                dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(seconds=u) for u in users
            ],
            "kind": [kind] * n,
            "request_id": [request_id] * n,
        },
        schema_overrides=events.SCHEMAS[events.RATING_STREAM],
    )


def _movie(movie_id: int, content: list[float] | None) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "movie_id": [movie_id],
            "title": [f"Movie {movie_id}"],
            "release_year": [2026],
            "genres": [["Drama", "Horror"]],
            "content": [content],
        },
        schema=events.SCHEMAS[events.MOVIE_STREAM],
    )


# ------------------------------------------------------------------------------------- the one interface
def test_the_setting_picks_the_log_and_a_bad_uri_names_it(tmp_path: Path) -> None:
    assert isinstance(open_event_log(tmp_path, Settings(event_bus="")), FileEventLog)
    assert open_event_log(tmp_path, Settings()) is open_event_log(tmp_path, Settings()), "one per process"
    with pytest.raises(StarlingError, match=r"STARLING_EVENT_BUS='http://redis:6379'.*redis://"):
        open_event_log(tmp_path, Settings(event_bus="http://redis:6379"))
    with pytest.raises(
        StarlingError, match=re.escape("STARLING_EVENT_BUS=redis://:***@127.0.0.1:1/0: cannot reach")
    ) as caught:
        open_event_log(tmp_path, Settings(event_bus="redis://:secret@127.0.0.1:1/0"))
    assert "secret" not in str(caught.value)
    bus = open_event_log(tmp_path, Settings(event_bus=REDIS_URL, event_bus_prefix=_prefix()))
    try:
        assert isinstance(bus, RedisEventLog) and bus.description == REDIS_URL
    finally:
        _drop(bus)
        _open.cache_clear()


def test_both_logs_give_back_what_was_appended_in_order(event_log, tmp_path: Path) -> None:
    """Nulls, optional columns a writer left out, list columns (genres, the text vector) and an empty batch
    come back exactly as the file log gives them."""
    reference = FileEventLog(tmp_path / "reference")
    vector = np.linspace(-1, 1, 384, dtype=np.float32).tolist()
    for log_ in {id(event_log): event_log, id(reference): reference}.values():
        log_.append(events.RATING_STREAM, _ratings([1, 2]))
        log_.append(events.RATING_STREAM, _ratings([3], kind="click", request_id="abc123").drop("request_id"))
        log_.append(events.RATING_STREAM, _ratings([4], kind="watch", request_id="r-4"))
        log_.append(events.RATING_STREAM, _ratings([]))
        log_.append(events.MOVIE_STREAM, _movie(200_001, vector))
        log_.append(events.MOVIE_STREAM, _movie(200_002, None))
    ratings = event_log.read_all(events.RATING_STREAM)
    assert ratings.schema == pl.Schema(events.SCHEMAS[events.RATING_STREAM])
    assert ratings.equals(reference.read_all(events.RATING_STREAM))
    assert ratings["user_id"].to_list() == [1, 2, 3, 4]
    assert ratings["request_id"].to_list() == [None, None, None, "r-4"]
    movies = event_log.read_all(events.MOVIE_STREAM)
    assert movies.equals(reference.read_all(events.MOVIE_STREAM))
    assert movies["content"][0].to_list() == vector and movies["content"][1] is None
    assert movies["genres"][0].to_list() == ["Drama", "Horror"]


def test_followers_see_each_new_event_once_and_skip_their_own(event_log) -> None:
    writer = event_log.follower(events.RATING_STREAM)  # the writing process's own follower
    other = event_log.follower(events.RATING_STREAM)  # another follower (another process, on Redis)
    event_log.append(events.RATING_STREAM, _ratings([1]))
    assert writer.poll()["user_id"].to_list() == [1]
    late = event_log.follower(events.RATING_STREAM, start_at_end=True)
    append_own(event_log, writer, _ratings([2, 3]))
    assert writer.poll() is None, "the writer applied its own events already"
    assert other.poll()["user_id"].to_list() == [1, 2, 3]
    assert late.poll()["user_id"].to_list() == [2, 3], "a follower started at the end sees later events"
    assert other.poll() is None and late.poll() is None
    event_log.append(events.RATING_STREAM, _ratings([4]))
    assert [f.poll()["user_id"].to_list() for f in (writer, other, late)] == [[4], [4], [4]]


def test_ids_are_distinct_under_concurrency_and_above_the_floor(event_log) -> None:
    """200 allocations from 16 threads (on Redis: over two clients, as two replicas) are distinct and above
    the largest id each caller knew."""
    logs = [event_log, event_log]
    if isinstance(event_log, RedisEventLog):
        logs[1] = RedisEventLog(REDIS_URL, event_log.prefix)
    floors = [193_609 + (i % 3) for i in range(200)]
    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(lambda i: logs[i % 2].next_id("movie_id", floors[i]), range(200)))
    assert len(set(ids)) == 200 and all(i > f for i, f in zip(ids, floors, strict=True))
    assert event_log.next_id("movie_id", 500_000) == 500_001, "an id someone else used raises the floor"
    assert event_log.next_id("movie_id", 10) == 500_002


# ---------------------------------------------------------------------------------------- Redis specifics
def test_a_waiting_follower_gets_an_event_as_soon_as_it_is_written(bus: RedisEventLog) -> None:
    follower = bus.follower(events.RATING_STREAM)
    assert follower.waits
    started = time.monotonic()
    assert follower.poll() is None
    assert 0.15 < time.monotonic() - started < 1.0, "an idle poll waits (XREAD BLOCK) about block_s"
    threading.Timer(0.05, lambda: bus.append(events.RATING_STREAM, _ratings([7]))).start()
    started = time.monotonic()
    assert follower.poll()["user_id"].to_list() == [7]
    assert time.monotonic() - started < 0.15


def test_entries_written_before_a_column_existed_read_it_as_null(bus: RedisEventLog) -> None:
    """An older writer's schema (no request_id) is kept beside the current one: both decode."""
    old = _ratings([1, 2]).drop("request_id").to_arrow()
    old = old.cast(
        pa.schema([pa.field(f.name, pa.string() if f.name == "kind" else f.type) for f in old.schema])
    )
    key = bus.stream_key(events.RATING_STREAM)
    bus.client.hset(f"{key}:schemas", "old", old.schema.serialize().to_pybytes())
    bus.client.xadd(key, {"b": old.to_batches()[0].serialize().to_pybytes(), "s": "old"})
    bus.append(events.RATING_STREAM, _ratings([3], request_id="abc"))
    read = bus.read_all(events.RATING_STREAM)
    assert read["user_id"].to_list() == [1, 2, 3] and read["request_id"].to_list() == [None, None, "abc"]
    assert read.schema == pl.Schema(events.SCHEMAS[events.RATING_STREAM])


def test_an_append_retried_after_a_lost_reply_adds_one_entry(bus: RedisEventLog) -> None:
    body, fingerprint = bus._encode(events.RATING_STREAM, _ratings([1]))
    keys = [bus.stream_key(events.RATING_STREAM), f"{bus.stream_key(events.RATING_STREAM)}:append:t1"]
    first = bus._append(keys=keys, args=[body, fingerprint, 0, 60])
    assert bus._append(keys=keys, args=[body, fingerprint, 0, 60]) == first
    assert bus.client.xlen(keys[0]) == 1


def test_bench_events_measures_both_logs_and_leaves_no_keys() -> None:
    import redis

    from starling.eventbus_bench import bench_events

    report = bench_events(REDIS_URL, appends=20, visibility_events=8, every_s=0.02)
    for kind in ("file", "redis"):
        figures = report[kind]
        assert figures["events_per_s_one_per_append"] > 0 and figures["events_per_s_100_per_append"] > 0
        visibility = figures["visibility"]
        assert visibility["seen"] == visibility["events"] == 8, visibility
        assert 0 <= visibility["p50_ms"] <= visibility["p99_ms"] <= visibility["max_ms"], visibility
    assert report["redis"]["bytes_per_entry"] > 0
    assert not redis.Redis.from_url(REDIS_URL).keys("starling-bench-*"), "the benchmark deletes its keys"


def test_maxlen_trims_the_stream(bus: RedisEventLog) -> None:
    trimmed = RedisEventLog(REDIS_URL, bus.prefix, maxlen=100)
    for user in range(300):
        trimmed.append(events.RATING_STREAM, _ratings([user]))
    assert 100 <= bus.client.xlen(bus.stream_key(events.RATING_STREAM)) < 300
    assert bus.read_all(events.RATING_STREAM)["user_id"].to_list()[-1] == 299


# ------------------------------------------------------------------------ two recommend replicas, real stack
@pytest.fixture(scope="module")
def replicas(
    ml_small_trained: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, ...]]:
    """The stack on the Redis bus (recommend A supervised: restarted when killed) plus recommend B on its own
    ports, both reaching the same stages."""
    from conftest import running_stack

    from starling.local import RECOMMEND_SERVICE, copy_workdir, free_port, start_replica, wait_healthy

    workdir = copy_workdir(ml_small_trained, tmp_path_factory.mktemp("bus"))
    prefix = _prefix()
    try:
        with running_stack(
            workdir, event_bus=REDIS_URL, event_bus_prefix=prefix, content_on_upsert=False
        ) as a:
            b = a.model_copy(update={"recommend_port": free_port(True), "admin_port": free_port()})
            replica = start_replica(workdir, "recommend", b, workdir / "run" / "logs" / "recommend-b.log")
            try:
                wait_healthy("recommend", b.recommend_port, 120, RECOMMEND_SERVICE, replica)
                yield a, b
            finally:
                replica.terminate()
                try:
                    replica.wait(15)
                except Exception:
                    replica.kill()
    finally:
        _drop(RedisEventLog(REDIS_URL, prefix))


def _stubs(settings: Settings):
    from starling.auth import authorized_channel, client_token
    from starling.v1 import catalog_pb2_grpc, recommend_pb2_grpc

    token = client_token(settings)
    public = authorized_channel(f"127.0.0.1:{settings.recommend_port}", token)
    admin = authorized_channel(f"127.0.0.1:{settings.admin_port}", token)
    return (
        recommend_pb2_grpc.RecommendServiceStub(public),
        catalog_pb2_grpc.CatalogServiceStub(public),
        catalog_pb2_grpc.CatalogServiceStub(admin),
    )


def _rated(catalog, user: int) -> set[int]:
    from starling.v1 import catalog_pb2

    reply = catalog.ListUserRatings(catalog_pb2.ListUserRatingsRequest(user_id=user, limit=500), timeout=10)
    return {r.movie.movie_id for r in reply.ratings}


@pytest.mark.slow
def test_a_rating_sent_to_one_replica_changes_the_others_answer_within_a_second(replicas) -> None:
    from starling.v1 import recommend_pb2

    a, b = replicas
    recommend_a, _, _ = _stubs(a)
    recommend_b, catalog_b, _ = _stubs(b)
    user = 5
    before = [
        item.movie_id
        for item in recommend_b.Recommend(
            recommend_pb2.RecommendRequest(user_id=user, k=20), timeout=10
        ).items
    ]
    rated = before[:5]
    reply = recommend_a.RecordFeedback(
        recommend_pb2.RecordFeedbackRequest(
            events=[
                recommend_pb2.FeedbackEvent(
                    user_id=user, movie_id=m, kind=recommend_pb2.FEEDBACK_KIND_RATING, rating=1.0
                )
                for m in rated
            ]
        ),
        timeout=10,
    )
    assert reply.accepted == len(rated)
    sent = time.monotonic()
    while True:
        after = recommend_b.Recommend(recommend_pb2.RecommendRequest(user_id=user, k=20), timeout=10)
        answer = [item.movie_id for item in after.items]
        if (
            not set(answer) & set(rated) and set(rated) <= _rated(catalog_b, user)
        ) or time.monotonic() - sent > 1.0:
            break
        time.sleep(0.02)
    elapsed = time.monotonic() - sent
    assert not set(answer) & set(rated), "B's answer still holds movies the user just rated on A"
    assert set(rated) <= _rated(catalog_b, user), "B's history has the ratings A recorded"
    assert answer != before and not after.degraded
    assert elapsed <= 1.0
    print(f"B's answer changed {elapsed * 1000:.0f} ms after A acknowledged the ratings")


@pytest.mark.slow
def test_concurrent_upserts_over_both_replicas_get_distinct_ids(replicas) -> None:
    from starling.v1 import catalog_pb2

    settings = replicas
    admins = [_stubs(s)[2] for s in settings]
    readers = [_stubs(s)[1] for s in settings]
    largest = pl.read_parquet(settings[0].workdir / "movies.parquet")["movie_id"].max()

    def upsert(i: int) -> int:
        movie = catalog_pb2.Movie(title=f"Bus movie {i}", release_year=2026, genres=["Drama"])
        reply = admins[i % 2].UpsertMovie(catalog_pb2.UpsertMovieRequest(movie=movie), timeout=60)
        assert reply.created
        return reply.movie.movie_id

    with ThreadPoolExecutor(32) as pool:
        ids = list(pool.map(upsert, range(200)))
    assert len(set(ids)) == 200 and min(ids) > largest
    deadline = time.monotonic() + 5
    missing: list[tuple[int, int]] = []
    for replica, reader in enumerate(readers):  # each replica knows every movie, whichever took it
        for movie_id in ids:
            while True:
                try:
                    reader.GetMovie(catalog_pb2.GetMovieRequest(movie_id=movie_id), timeout=10)
                    break
                except grpc.RpcError as error:
                    if error.code() != grpc.StatusCode.NOT_FOUND or time.monotonic() > deadline:
                        missing.append((replica, movie_id))
                        break
                    time.sleep(0.05)
    assert not missing
    logged = RedisEventLog(REDIS_URL, settings[0].event_bus_prefix).read_all(events.MOVIE_STREAM)
    assert sorted(logged["movie_id"].to_list()) == sorted(ids)


@pytest.mark.slow
def test_a_replica_killed_mid_stream_loses_no_acknowledged_event(replicas) -> None:
    """Feedback streams into A (four senders, one event per call, so calls are in flight at the kill) until A
    is SIGKILLed; every event A acknowledged is in the stream, B has it, and A, restarted by the supervisor,
    has it too."""
    from starling.local import is_healthy, read_state
    from starling.v1 import recommend_pb2

    a, b = replicas
    recommend_a, _, _ = _stubs(a)
    _, catalog_b, _ = _stubs(b)
    user = 4_242_424
    movies = pl.read_parquet(a.workdir / "movies.parquet")["movie_id"].sort().head(2000).to_list()
    acknowledged: list[int] = []
    stop = threading.Event()

    def stream(share: list[int]) -> None:
        for movie in share:
            event = recommend_pb2.FeedbackEvent(
                user_id=user, movie_id=movie, kind=recommend_pb2.FEEDBACK_KIND_RATING, rating=4.0
            )
            try:
                reply = recommend_a.RecordFeedback(
                    recommend_pb2.RecordFeedbackRequest(events=[event]), timeout=5
                )
            except grpc.RpcError:
                if stop.is_set():
                    return
                continue
            if reply.accepted == 1:
                acknowledged.append(movie)

    senders = [threading.Thread(target=stream, args=(movies[i::4],)) for i in range(4)]
    for sender in senders:
        sender.start()
    while len(acknowledged) < 200 and all(sender.is_alive() for sender in senders):
        time.sleep(0.01)
    (killed,) = [p for p in read_state(a.workdir) if p.name == "recommend"]
    os.kill(killed.pid, signal.SIGKILL)
    stop.set()
    for sender in senders:
        sender.join(30)
    assert not any(sender.is_alive() for sender in senders) and len(acknowledged) >= 200
    acked = set(acknowledged)

    logged = RedisEventLog(REDIS_URL, a.event_bus_prefix).read_all(events.RATING_STREAM)
    assert acked <= set(logged.filter(pl.col("user_id") == user)["movie_id"].to_list())
    deadline = time.monotonic() + 5
    while not acked <= _rated(catalog_b, user) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert acked <= _rated(catalog_b, user), "B lost events A acknowledged"

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        (now,) = [p for p in read_state(a.workdir) if p.name == "recommend"]
        if now.pid != killed.pid and is_healthy("recommend", a.recommend_port):
            break
        time.sleep(0.2)
    else:
        pytest.fail("recommend A was not restarted and healthy within 120 s")
    _, catalog_a, _ = _stubs(a)
    assert acked <= _rated(catalog_a, user), "the restarted A lost events it had acknowledged"
    print(
        f"{len(acked)} acknowledged before the kill, all kept; {len(logged.filter(pl.col('user_id') == user))} logged"
    )
