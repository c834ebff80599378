"""Load shedding: at most ``limit`` calls in flight per process; beyond it, RESOURCE_EXHAUSTED at once.

Queueing past a saturated server only turns every answer late (past the callers' deadlines); refusing the
excess quickly keeps the admitted calls fast and tells clients to back off. Health checks and reflection are
never refused, so probes keep telling the truth under load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc

EXEMPT_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class InFlightLimitInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.in_flight = 0  # one event loop per process: no lock needed

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if (
            self.limit <= 0
            or handler is None
            or handler.unary_unary is None
            or method.startswith(EXEMPT_PREFIXES)
        ):
            return handler
        behavior = handler.unary_unary

        async def limited(request: Any, context: grpc.aio.ServicerContext) -> Any:
            if self.in_flight >= self.limit:
                await context.abort(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"overloaded: {self.in_flight} calls in flight (limit {self.limit}); retry with backoff",
                )
            self.in_flight += 1
            try:
                return await behavior(request, context)
            finally:
                self.in_flight -= 1

        return grpc.unary_unary_rpc_method_handler(
            limited,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
