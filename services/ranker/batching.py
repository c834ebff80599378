"""Batching under load: requests that arrive while the ranker is busy are scored together in one forward pass.

The batcher never holds a request back to wait for others: when nothing is being scored, a request is scored
at once (alone; at concurrency 1 it pays only the hand-over to a worker thread). While a forward pass runs in
that thread, the event loop keeps decoding and preprocessing the next requests, and they queue; when the pass
ends, everything queued for the same model is concatenated, up to ``max_rows`` rows, and scored in the next
pass. Each request gets back exactly its own rows' scores.

Scoring a request alone on the event loop instead would look cheaper, but it never batches: preprocess and the
forward pass do not yield, so while one runs no other request is even decoded.

Rows are scored independently by every ranking model in eval mode, so a batched score is the same function of
the row as an unbatched one (up to float rounding of a larger matrix product).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from torch import nn

from services.common.observability import RANKER_BATCH_REQUESTS

Encoded = Mapping[str, np.ndarray]
Score = Callable[[nn.Module, Encoded], np.ndarray]


def concat_encoded(batches: list[Encoded]) -> dict[str, np.ndarray]:
    """The requests' encoded rows stacked, key by key (every request carries the same keys)."""
    if len(batches) == 1:
        return dict(batches[0])
    return {key: np.concatenate([batch[key] for batch in batches]) for key in batches[0]}


def split_scores(scores: np.ndarray, sizes: list[int]) -> list[np.ndarray]:
    """``scores`` of the stacked rows cut back into each request's, in order."""
    return np.split(scores, np.cumsum(sizes)[:-1])


def rows_of(encoded: Encoded) -> int:
    return len(next(iter(encoded.values())))


@dataclass
class _Pending:
    model: nn.Module
    encoded: Encoded
    future: asyncio.Future


class MicroBatcher:
    """Scores encoded requests with ``score`` (blocking: run in a worker thread), batching the ones that
    queue while a pass runs. One batcher per event loop."""

    def __init__(self, score: Score, max_rows: int) -> None:
        self.score = score
        self.max_rows = max_rows
        self._queue: list[_Pending] = []
        self._busy = False

    async def submit(self, model: nn.Module, encoded: Encoded) -> np.ndarray:
        future = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(model, encoded, future))
        if not self._busy:
            self._busy = True
            asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[_Pending]:
        """The first queued request and the ones after it for the same model, in order, up to ``max_rows``
        rows (a request alone may have more)."""
        first = self._queue[0]
        taken, rows = [], 0
        for pending in self._queue:
            if pending.model is not first.model:
                continue
            size = rows_of(pending.encoded)
            if taken and rows + size > self.max_rows:
                break  # first come, first scored: no later request overtakes it
            taken.append(pending)
            rows += size
        self._queue = [pending for pending in self._queue if all(pending is not t for t in taken)]
        return taken

    async def _drain(self) -> None:
        try:
            while self._queue:
                taken = self._take()
                sizes = [rows_of(p.encoded) for p in taken]
                RANKER_BATCH_REQUESTS.observe(len(taken))
                try:
                    scores = await asyncio.to_thread(
                        self.score, taken[0].model, concat_encoded([p.encoded for p in taken])
                    )
                except Exception as exc:  # every request of the pass fails alike
                    for pending in taken:
                        if not pending.future.done():
                            pending.future.set_exception(exc)
                    continue
                for pending, part in zip(taken, split_scores(scores, sizes), strict=True):
                    if not pending.future.done():  # a cancelled request (its deadline) has no one waiting
                        pending.future.set_result(part)
        finally:
            self._busy = False
