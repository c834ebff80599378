"""Authentication and authorization of gRPC calls, as one interceptor for every service.

Writes need a bearer token whose key holds the method's scope (:data:`WRITE_SCOPES`); the public reads are
open unless ``STARLING_AUTH_READS`` is set, then they need scope ``read``. Health checks, reflection and the
internal stages stay open (probes, grpcurl; the stages are reachable from recommend only). Missing or unknown token: UNAUTHENTICATED; a known key without the scope: PERMISSION_DENIED.
The keys file is re-read when it changes, so adding or revoking a key needs no restart.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc

from starling.auth import CATALOG_WRITE, FEEDBACK_WRITE, READ, KeysFile, parse_bearer

log = logging.getLogger("starling.auth")

WRITE_SCOPES: dict[str, str] = {
    "/starling.v1.RecommendService/RecordFeedback": FEEDBACK_WRITE,
    "/starling.v1.CatalogService/UpsertMovie": CATALOG_WRITE,
}
# Reads that STARLING_AUTH_READS guards: the public services'. The internal stages (candidates, recall, rerank,
# ranker) answer only recommend, on loopback locally and behind NetworkPolicies in Kubernetes.
PUBLIC_PREFIXES = ("/starling.v1.RecommendService/", "/starling.v1.CatalogService/")


def bearer_token(metadata: Any) -> str | None:
    for key, value in metadata or ():
        if key == "authorization":
            return parse_bearer(str(value))
    return None


def _refusal(code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def refuse(_request: bytes, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    return grpc.unary_unary_rpc_method_handler(refuse)  # no deserializer: the request is never decoded


class AuthInterceptor(grpc.aio.ServerInterceptor):
    def __init__(self, keys_path: Path, auth_reads: bool = False) -> None:
        self.keys = KeysFile(keys_path)
        self.auth_reads = auth_reads

    def required_scope(self, method: str) -> str | None:
        if method in WRITE_SCOPES:
            return WRITE_SCOPES[method]
        if self.auth_reads and method.startswith(PUBLIC_PREFIXES):
            return READ
        return None

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        scope = self.required_scope(method)
        if scope is None:
            return await continuation(handler_call_details)
        name = method.rpartition("/")[2]
        token = bearer_token(handler_call_details.invocation_metadata)
        if token is None:
            return _refusal(
                grpc.StatusCode.UNAUTHENTICATED,
                f"{name} needs an API key with scope {scope!r}: send metadata 'authorization: Bearer <token>' "
                "(STARLING_API_TOKEN, or WORKDIR/secrets/api-token locally)",
            )
        key = self.keys.ring().find(token)
        if key is None:
            return _refusal(grpc.StatusCode.UNAUTHENTICATED, f"{name}: unknown or revoked API key")
        if scope not in key.scopes:
            return _refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{name} needs scope {scope!r}; key {key.name!r} has {sorted(key.scopes)}",
            )
        return await continuation(handler_call_details)


class AdminOnlyInterceptor(grpc.aio.ServerInterceptor):
    """On the public port, refuse the methods served only on the admin port (PERMISSION_DENIED, naming it)."""

    def __init__(self, admin_methods: dict[str, int]) -> None:
        self.admin_methods = admin_methods  # full method name -> admin port

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        if method in self.admin_methods:
            return _refusal(
                grpc.StatusCode.PERMISSION_DENIED,
                f"{method.rpartition('/')[2]} is served on the admin port {self.admin_methods[method]} "
                "(STARLING_ADMIN_PORT), not on the public one",
            )
        return await continuation(handler_call_details)
