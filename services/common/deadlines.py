"""Deadline propagation: a downstream call never outlives the caller's own deadline."""

from __future__ import annotations

import grpc

# Time kept back for the caller's own work after a downstream call returns.
RESERVE_S = 0.002


def downstream_timeout(context: grpc.aio.ServicerContext | None, stage_budget_s: float) -> float:
    """The timeout for a downstream call: the stage's budget, cut to what is left of the incoming deadline."""
    if context is None:
        return stage_budget_s
    remaining = context.time_remaining()
    if remaining is None:
        return stage_budget_s
    return max(0.0, min(stage_budget_s, remaining - RESERVE_S))
