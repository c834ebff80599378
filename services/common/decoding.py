"""Malformed requests are bad input: an interceptor that decodes request bytes itself.

grpc-python decodes a request before any handler runs, and a payload that is not a valid message of the
method's type surfaces as UNKNOWN (aio) or INTERNAL (sync). With this interceptor the handler receives the
raw bytes, decodes them with the method's own deserializer, and answers INVALID_ARGUMENT naming the message
type when that fails. Works on any unary-unary servicer, KServe's included.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from google.protobuf.message import DecodeError


def _message_name(deserializer: Callable[[bytes], Any]) -> str:
    owner = getattr(deserializer, "__self__", None)  # SomeMessage.FromString is a bound classmethod
    descriptor = getattr(owner, "DESCRIPTOR", None)
    return descriptor.full_name if descriptor is not None else "the method's request message"


class MalformedRequestInterceptor(grpc.aio.ServerInterceptor):
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None or handler.request_deserializer is None:
            return handler
        behavior, deserialize = handler.unary_unary, handler.request_deserializer
        message = _message_name(deserialize)

        async def decoding(raw: bytes, context: grpc.aio.ServicerContext) -> Any:
            try:
                request = deserialize(raw)
            except (DecodeError, ValueError, TypeError) as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    f"malformed request: {len(raw)} bytes that are not a valid {message} ({exc})",
                )
            response = behavior(request, context)
            return await response if inspect.isawaitable(response) else response

        return grpc.unary_unary_rpc_method_handler(
            decoding, request_deserializer=None, response_serializer=handler.response_serializer
        )
