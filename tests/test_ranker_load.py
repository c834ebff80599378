"""The ranker under load, as plain logic: batching of queued requests (services/ranker/batching.py) and the
cache of users' online features (services/ranker/user_cache.py). The real ModelServer is exercised with both
in tests/test_ranker.py."""

from __future__ import annotations

import asyncio
import threading

import numpy as np
import pytest
import torch

from services.ranker.batching import MicroBatcher
from services.ranker.user_cache import UserFeatureCache


def _encoded(rows: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"user": rng.integers(0, 9, (rows, 1)), "numeric": rng.random((rows, 3)).astype(np.float32)}


def _row_score(model: object, encoded: dict[str, np.ndarray]) -> np.ndarray:
    return encoded["numeric"].sum(axis=1) + encoded["user"][:, 0]


def test_requests_queued_behind_a_pass_are_scored_together_and_each_gets_its_own_rows() -> None:
    passes: list[int] = []
    release = threading.Event()

    def score(model: object, encoded: dict[str, np.ndarray]) -> np.ndarray:
        passes.append(len(encoded["user"]))
        release.wait(5)  # the first pass stays busy until every request has queued
        return _row_score(model, encoded)

    model_a, model_b = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    requests = [(model_a, _encoded(rows, seed)) for seed, rows in enumerate((3, 5, 1, 7, 2))]
    requests.append((model_b, _encoded(4, 99)))  # another model: never in the same pass

    async def run() -> list[np.ndarray]:
        batcher = MicroBatcher(score, max_rows=10)
        first = asyncio.create_task(batcher.submit(*requests[0]))
        await asyncio.sleep(0.05)  # the first pass has started, alone
        rest = [asyncio.create_task(batcher.submit(*request)) for request in requests[1:]]
        await asyncio.sleep(0.05)
        release.set()
        return await asyncio.gather(first, *rest)

    results = asyncio.run(run())
    for (model, encoded), scores in zip(requests, results, strict=True):
        np.testing.assert_array_equal(scores, _row_score(model, encoded))
    # alone (3 rows); then model A's queued 5 + 1 (7 more would pass 10 rows), 7 + 2; then model B's 4
    assert passes == [3, 6, 9, 4]


def test_a_failed_pass_fails_only_its_requests_and_the_batcher_goes_on() -> None:
    calls = 0

    def score(model: object, encoded: dict[str, np.ndarray]) -> np.ndarray:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("CUDA out of memory")
        return _row_score(model, encoded)

    async def run() -> None:
        batcher = MicroBatcher(score, max_rows=100)
        with pytest.raises(RuntimeError, match="out of memory"):
            await batcher.submit(None, _encoded(2, 0))
        encoded = _encoded(2, 1)
        np.testing.assert_array_equal(await batcher.submit(None, encoded), _row_score(None, encoded))

    asyncio.run(run())


def test_cached_users_are_read_once_until_they_rate_or_expire() -> None:
    now = [100.0]
    reads: list[int] = []

    def read(user_id: int) -> tuple[dict[str, object], bool]:
        reads.append(user_id)
        return {"user_rating_count": len(reads)}, True

    cache = UserFeatureCache(read, ttl_s=30, settle_s=5, max_users=2, clock=lambda: now[0])
    assert cache.get(1) == ({"user_rating_count": 1}, True)
    assert cache.get(1)[0]["user_rating_count"] == 1 and reads == [1]
    cache.rated([1])  # their features are being pushed: read again, and not kept while they settle
    assert cache.get(1)[0]["user_rating_count"] == 2
    assert cache.get(1)[0]["user_rating_count"] == 3
    now[0] += 5
    assert cache.get(1)[0]["user_rating_count"] == 4  # settled: kept again
    assert cache.get(1)[0]["user_rating_count"] == 4
    now[0] += 30
    assert cache.get(1)[0]["user_rating_count"] == 5  # expired
    cache.get(2), cache.get(3)  # at most 2 users: 1 is the oldest and goes
    cache.get(1)
    assert reads == [1, 1, 1, 1, 1, 2, 3, 1]
    assert (cache.hits, cache.misses) == (2, 8)


def test_a_read_that_raced_a_rating_event_is_not_kept() -> None:
    cache: UserFeatureCache

    def read(user_id: int) -> tuple[dict[str, object], bool]:
        cache.rated([user_id])  # the event arrives while the (stale) row is being read
        return {"stale": True}, True

    cache = UserFeatureCache(read, ttl_s=30, settle_s=5, max_users=10)
    cache.get(7)
    assert cache.misses == 1 and cache.get(7) and cache.misses == 2
