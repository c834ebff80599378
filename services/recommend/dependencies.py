"""Whether recommend's stages are up, for operators: the health of ``starling.v1.RecommendService``.

Every ``interval_s`` recommend asks each stage for its health (standard gRPC health; the ranker's v2
ServerReady) and reports, through the standard health service:

- ``""`` (the process): SERVING while it can answer. Recommend answers with fallbacks when a stage is down,
  so liveness and the chart's readiness probe use this one and keep routing traffic;
- ``starling.v1.RecommendService``: SERVING only while every stage is up, NOT_SERVING (degraded) otherwise.

plus the gauge ``starling_dependency_up{stage}`` for dashboards and alerts. A change is logged once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import Gauge

DEPENDENCY_UP = Gauge(
    "starling_dependency_up", "1 while recommend's stage answers its health check, else 0.", ["stage"]
)
log = logging.getLogger("starling.recommend.dependencies")

Probe = Callable[[], Awaitable[bool]]


def grpc_health_probe(channel: grpc.aio.Channel, timeout_s: float) -> Probe:
    stub = health_pb2_grpc.HealthStub(channel)

    async def probe() -> bool:
        reply = await stub.Check(health_pb2.HealthCheckRequest(), timeout=timeout_s)
        return reply.status == health_pb2.HealthCheckResponse.SERVING

    return probe


class DependencyMonitor:
    def __init__(self, probes: dict[str, Probe], service_name: str, interval_s: float = 0.5) -> None:
        self.probes = probes
        self.service_name = service_name
        self.interval_s = interval_s
        self.up: dict[str, bool] = {}

    async def check(self) -> dict[str, bool]:
        async def one(probe: Probe) -> bool:
            try:
                return bool(await probe())
            except Exception:  # unreachable, timed out, or answering errors: down
                return False

        results = await asyncio.gather(*(one(probe) for probe in self.probes.values()))
        return dict(zip(self.probes, results, strict=True))

    async def run(self, health_servicer: health.aio.HealthServicer) -> None:
        """Forever: probe every stage, publish the gauge, flip the service's health on a change."""
        while True:
            current = await self.check()
            for stage, up in current.items():
                DEPENDENCY_UP.labels(stage).set(1 if up else 0)
            if current != self.up:
                down = sorted(stage for stage, up in current.items() if not up)
                status = (
                    health_pb2.HealthCheckResponse.NOT_SERVING
                    if down
                    else health_pb2.HealthCheckResponse.SERVING
                )
                await health_servicer.set(self.service_name, status)
                log.warning("dependencies changed", extra={"down": down, "serving": not down})
                self.up = current
            await asyncio.sleep(self.interval_s)
