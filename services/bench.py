"""`starling bench serve`: drive RecommendService over gRPC and report latency and throughput as JSON.

For each concurrency level, that many client tasks send `Recommend` back to back for ``duration`` seconds
(users drawn from the catalog's raters, k = 20). End-to-end latency is measured by the client; per-stage
latency comes from the orchestrator's trailing metadata (``starling-stage-ms``). The services must be up
(`starling up`), or are started from WORKDIR for the run and stopped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import platform
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import polars as pl

from services.recommend.server import STAGE_TIMINGS_KEY
from starling.config import get_settings
from starling.errors import StarlingError
from starling.v1 import recommend_pb2, recommend_pb2_grpc

WARMUP_REQUESTS = 50


def _quantiles(values_ms: list[float]) -> dict[str, float]:
    if not values_ms:
        return {"p50_ms": float("nan"), "p95_ms": float("nan"), "p99_ms": float("nan")}
    p50, p95, p99 = np.percentile(np.asarray(values_ms), [50, 95, 99])
    return {"p50_ms": round(float(p50), 3), "p95_ms": round(float(p95), 3), "p99_ms": round(float(p99), 3)}


async def _drive(
    target: str, users: np.ndarray, k: int, duration_s: float, concurrency: int, seed: int
) -> dict[str, Any]:
    latencies: list[float] = []
    stages: dict[str, list[float]] = {}
    errors: dict[str, int] = {}
    degraded = 0
    rng = np.random.default_rng(seed)
    picks = rng.choice(users, size=1_000_000)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)

        async def one(i: int) -> None:
            nonlocal degraded
            call = stub.Recommend(
                recommend_pb2.RecommendRequest(user_id=int(picks[i % len(picks)]), k=k), timeout=5
            )
            start = time.perf_counter()
            try:
                response = await call
            except grpc.aio.AioRpcError as exc:
                errors[exc.code().name] = errors.get(exc.code().name, 0) + 1
                return
            latencies.append((time.perf_counter() - start) * 1000.0)
            degraded += bool(response.degraded)
            for key, value in await call.trailing_metadata() or ():
                if key == STAGE_TIMINGS_KEY and value:
                    for part in value.split(","):
                        stage, ms = part.split("=")
                        stages.setdefault(stage, []).append(float(ms))

        for i in range(WARMUP_REQUESTS):
            await one(i)
        latencies.clear()
        stages.clear()
        counter = iter(range(WARMUP_REQUESTS, 10**12))
        deadline = time.perf_counter() + duration_s

        async def worker() -> None:
            while time.perf_counter() < deadline:
                await one(next(counter))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "errors": errors,
        "degraded_responses": degraded,
        "requests_per_second": round(len(latencies) / elapsed, 1),
        **_quantiles(latencies),
        "stages": {
            stage: {k: v for k, v in _quantiles(ms).items() if k != "p95_ms"} for stage, ms in stages.items()
        },
    }


def bench_serve(
    workdir: Path, duration_s: float, concurrency: list[int], k: int = 20, target: str | None = None
) -> dict[str, Any]:
    from starling.local import down, is_healthy, up

    settings = get_settings()
    if duration_s <= 0 or not concurrency or min(concurrency) < 1:
        raise StarlingError("--duration must be > 0 and --concurrency a list of integers >= 1")
    target = target or f"127.0.0.1:{settings.recommend_port}"
    started_here = False
    if not is_healthy("recommend", int(target.rsplit(":", 1)[1])):
        up(workdir)
        started_here = True
    try:
        users = (
            pl.read_parquet(workdir / "ratings.parquet", columns=["user_id"])["user_id"].unique().to_numpy()
        )
        runs = [asyncio.run(_drive(target, users, k, duration_s, c, seed=c)) for c in concurrency]
    finally:
        if started_here:
            down(workdir)
    return {
        "benchmark": "serve",
        "target": target,
        "k": k,
        "candidates": settings.recall_size,
        "duration_s": duration_s,
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus, {platform.system()}",
        "runs": runs,
    }
