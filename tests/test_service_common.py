"""services/common against a real grpc.aio server: health, reflection, metrics, error mapping, deadlines, drain."""

from __future__ import annotations

import asyncio
import json
import logging
import urllib.request

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from services.common.deadlines import downstream_timeout
from services.common.jsonlog import JsonFormatter
from services.common.reflection import V1_SERVICE_NAME
from services.common.server import start_service

PROBE_SERVICE = "starling.test.Probe"


async def _register_probe(server: grpc.aio.Server) -> list[str]:
    """A raw-bytes service: /Timeout answers the propagated downstream timeout, /Boom raises."""

    async def timeout(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return f"{downstream_timeout(context, 10.0):.3f}".encode()

    async def boom(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        raise RuntimeError("kaboom")

    async def slow(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        await asyncio.sleep(0.5)
        return b"done"

    handlers = {
        "Timeout": grpc.unary_unary_rpc_method_handler(timeout),
        "Boom": grpc.unary_unary_rpc_method_handler(boom),
        "Slow": grpc.unary_unary_rpc_method_handler(slow),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(PROBE_SERVICE, handlers),))
    return [PROBE_SERVICE]


async def reflection_v1(channel: grpc.aio.Channel, symbol: str) -> set[str]:
    """What a client that speaks only grpc.reflection.v1 sees: the services listed, and that ``symbol``'s
    file is described (its messages built from the v1 descriptor, as a generic client would)."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    pool = descriptor_pool.Default()
    request_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionRequest")
    )
    response_type = message_factory.GetMessageClass(
        pool.FindMessageTypeByName("grpc.reflection.v1.ServerReflectionResponse")
    )
    call = channel.stream_stream(
        f"/{V1_SERVICE_NAME}/ServerReflectionInfo",
        request_serializer=request_type.SerializeToString,
        response_deserializer=response_type.FromString,
    )
    requests = [request_type(list_services=""), request_type(file_containing_symbol=symbol)]
    replies = [reply async for reply in call(iter(requests), timeout=10)]
    names = {service.name for service in replies[0].list_services_response.service}
    described = descriptor_pb2.FileDescriptorProto.FromString(
        replies[1].file_descriptor_response.file_descriptor_proto[0]
    )
    assert any(f"{described.package}.{s.name}" == symbol for s in described.service), described.name
    return names


def _metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


def test_server_health_reflection_metrics_errors_and_drain() -> None:
    async def scenario() -> None:
        running = await start_service("probe", _register_probe, port=0, metrics_port=0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=PROBE_SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
            with pytest.raises(grpc.aio.AioRpcError) as missing:
                await health.Check(health_pb2.HealthCheckRequest(service="nope"))
            assert missing.value.code() == grpc.StatusCode.NOT_FOUND

            reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
            responses = reflection.ServerReflectionInfo(
                iter([reflection_pb2.ServerReflectionRequest(list_services="")])
            )
            async for response in responses:
                names = {s.name for s in response.list_services_response.service}
                assert {PROBE_SERVICE, "grpc.health.v1.Health"} <= names
                break
            assert await reflection_v1(channel, "grpc.health.v1.Health") >= {PROBE_SERVICE, V1_SERVICE_NAME}

            call_timeout = channel.unary_unary(f"/{PROBE_SERVICE}/Timeout")
            assert float(await call_timeout(b"")) == pytest.approx(10.0)
            propagated = float(await call_timeout(b"", timeout=0.5))
            assert 0.3 < propagated < 0.5, "the caller's deadline must cut the downstream budget"

            with pytest.raises(grpc.aio.AioRpcError) as boom:
                await channel.unary_unary(f"/{PROBE_SERVICE}/Boom")(b"")
            assert boom.value.code() == grpc.StatusCode.INTERNAL
            assert "RuntimeError" in boom.value.details()

            text = _metrics(running.metrics_port)
            assert 'starling_grpc_server_handled_total{grpc_code="OK",grpc_method="Timeout"' in text
            assert 'grpc_code="INTERNAL",grpc_method="Boom"' in text
            assert 'grpc_code="NOT_FOUND",grpc_method="Check"' in text
            assert "starling_grpc_server_handling_seconds_bucket" in text

            # The server survived the exception and still answers.
            assert (
                await health.Check(health_pb2.HealthCheckRequest())
            ).status == health_pb2.HealthCheckResponse.SERVING
            await running.health.enter_graceful_shutdown()
            reply = await health.Check(health_pb2.HealthCheckRequest(service=PROBE_SERVICE))
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
        await running.server.stop(0.1)

    asyncio.run(scenario())


def test_json_log_lines_carry_extra_fields_and_tracebacks() -> None:
    formatter = JsonFormatter("probe")
    record = logging.makeLogRecord(
        {"msg": "served %d", "args": (3,), "levelname": "INFO", "name": "x", "user_id": 7}
    )
    entry = json.loads(formatter.format(record))
    assert entry["message"] == "served 3" and entry["service"] == "probe" and entry["user_id"] == 7
    try:
        raise ValueError("bad")
    except ValueError:
        import sys

        record = logging.makeLogRecord({"msg": "oops", "levelname": "ERROR", "exc_info": sys.exc_info()})
    assert "ValueError: bad" in json.loads(formatter.format(record))["exception"]


def test_throttled_log_folds_repeats_into_one_line_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from services.common.jsonlog import ThrottledLog

    throttled = ThrottledLog(logging.getLogger("starling.test"), interval_s=60)
    with caplog.at_level(logging.WARNING, logger="starling.test"):
        logged = [throttled.warning("ranker:UNAVAILABLE", "stage fell back") for _ in range(500)]
        logged.append(throttled.warning("recall:UNAVAILABLE", "stage fell back"))
    assert logged.count(True) == 2 and len(caplog.records) == 2
    throttled.interval_s = 0
    assert throttled.warning("ranker:UNAVAILABLE", "stage fell back")
    assert caplog.records[-1].repeats_since_last_line == 499


def test_calls_beyond_the_in_flight_limit_are_refused_at_once_and_probes_still_answer() -> None:
    async def scenario() -> None:
        running = await start_service("probe", _register_probe, port=0, metrics_port=0, max_in_flight=3)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            slow = channel.unary_unary(f"/{PROBE_SERVICE}/Slow")

            async def one() -> tuple[str, float]:
                started = asyncio.get_running_loop().time()
                try:
                    await slow(b"", timeout=5)
                    code = "OK"
                except grpc.aio.AioRpcError as exc:
                    code = exc.code().name
                    assert "overloaded: 3 calls in flight (limit 3)" in exc.details()
                return code, asyncio.get_running_loop().time() - started

            burst = asyncio.gather(*(one() for _ in range(12)))
            await asyncio.sleep(0.1)
            health = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=1
            )
            assert health.status == health_pb2.HealthCheckResponse.SERVING, "probes are never shed"
            results = await burst
            codes = [code for code, _ in results]
            assert codes.count("OK") == 3 and codes.count("RESOURCE_EXHAUSTED") == 9
            assert max(seconds for code, seconds in results if code != "OK") < 0.4, "refused at once"
            assert (await slow(b"", timeout=5)) == b"done", "capacity is back once calls finish"
        await running.drain_and_stop(0)

    asyncio.run(scenario())


@pytest.mark.parametrize("largest", [50, 10**15])  # compact ids: a table; sparse ids: a binary search
def test_id_index_finds_each_id_and_nothing_else(largest: int) -> None:
    import numpy as np

    from services.common.id_index import IdIndex

    rng = np.random.default_rng(3)
    sorted_ids = np.unique(np.r_[0, largest, rng.integers(0, largest, 30)]).astype(np.int64)
    index = IdIndex(sorted_ids)
    assert (index.table is not None) == (largest == 50)
    asked = np.r_[sorted_ids[::-1], -1, -(2**62), largest + 1, 2**62, rng.integers(0, largest, 200)]
    expected = np.array(
        [np.flatnonzero(sorted_ids == i)[0] if i in sorted_ids else -1 for i in asked.tolist()]
    )
    assert (index.positions(asked) == expected).all()
    pairs = asked[: len(asked) // 2 * 2].reshape(-1, 2)
    assert (index.positions(pairs) == expected[: pairs.size].reshape(-1, 2)).all()
    assert IdIndex(np.empty(0, np.int64)).positions([1, 2]).tolist() == [-1, -1]


def test_a_long_historys_latest_ratings_are_kept_until_the_users_next_rating() -> None:
    import numpy as np
    import polars as pl

    from services.common import history as history_module
    from services.common.history import KEEP_LATEST_FROM, UserHistory, latest_ratings

    n = KEEP_LATEST_FROM + 10
    ratings = pl.DataFrame(
        {
            "user_id": [1] * n + [2] * 3,
            "movie_id": [*range(n), 5, 6, 5],  # user 2 re-rated movie 5
            "rating": [4.0] * n + [1.0, 2.0, 3.0],
            "event_timestamp": pl.Series([*range(n), 10, 11, 12]).cast(pl.Datetime("us", "UTC")),
        }
    )
    history = UserHistory.from_frame(ratings, 3.5)
    first = history.latest(1)
    assert history.latest(1) is first, "a long history's answer is kept"
    assert not first[0].flags.writeable, "and shared read-only"
    assert history.latest(2) is not history.latest(2), "a short one is not kept"
    assert history.latest(2)[1].tolist() == [3.0, 2.0]
    history.add(np.array([1]), np.array([7]), np.array([1.0], np.float32), np.array([n + 5]))
    movies, stars, _ = history.latest(1)
    assert movies[0] == 7 and stars[0] == 1.0 and len(movies) == n, "a rating replaces what was kept"
    for array, expected in zip(history.latest(1), latest_ratings(*history.history_of(1)), strict=True):
        assert (array == expected).all()
    # bounded: the least recently asked history goes first
    many = pl.concat([ratings.with_columns(user_id=pl.lit(u, pl.Int64)) for u in range(10, 15)])
    crowded = UserHistory.from_frame(many, 3.5)
    limit, history_module.KEEP_LATEST_USERS = history_module.KEEP_LATEST_USERS, 3
    try:
        for user in range(10, 15):
            crowded.latest(user)
        assert list(crowded.kept_latest) == [12, 13, 14]
    finally:
        history_module.KEEP_LATEST_USERS = limit
