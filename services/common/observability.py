"""Prometheus metrics for every gRPC service: a server interceptor and the /metrics HTTP endpoint.

The interceptor also turns an unexpected exception into ``INTERNAL`` with a logged traceback, so that
no request can take a service down.

Counters that alerts and dashboard panels divide or rate (fallbacks per stage, feedback outcomes) are
exported at 0 from start-up, so that a panel shows 0 rather than "No data" until the first event. The
feature freshness gauge, set by the ranker only, is exported only by a process that sets it: an unset 0 from
every other process would read as "features materialized in 1970".
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from services.common.errors import RequestError

log = logging.getLogger("starling.grpc")

# Buckets in seconds, dense between 0.5 ms and 250 ms where the stages live.
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.004,
    0.006,
    0.008,
    0.01,
    0.015,
    0.02,
    0.025,
    0.035,
    0.05,
    0.075,
    0.1,
    0.15,
    0.25,
    0.5,
    1.0,
    2.5,
)

SERVER_LATENCY = Histogram(
    "starling_grpc_server_handling_seconds",
    "Time to handle one gRPC call, by method.",
    ["grpc_service", "grpc_method"],
    buckets=LATENCY_BUCKETS,
)
SERVER_HANDLED = Counter(
    "starling_grpc_server_handled_total",
    "gRPC calls completed, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
STAGE_LATENCY = Histogram(
    "starling_stage_seconds",
    "Time spent in one pipeline stage of a recommendation (client side, including the network).",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
STAGE_FALLBACKS = Counter(
    "starling_stage_fallbacks_total",
    "Requests served with a fallback because a stage failed or timed out, by stage and reason.",
    ["stage", "reason"],
)
# The (stage, reason) pairs recommend reports for the usual failures (services/recommend/server.py): the gRPC
# code of the failed stage call, "skipped" when the ranker had no input (recall fell back), and the reason of
# the features fallback. Other reasons (a client-side exception's name) appear when they first happen.
FALLBACK_REASONS: dict[str, tuple[str, ...]] = {
    "candidates": ("UNAVAILABLE", "DEADLINE_EXCEEDED"),
    "recall": ("UNAVAILABLE", "DEADLINE_EXCEEDED"),
    "ranker": ("UNAVAILABLE", "DEADLINE_EXCEEDED", "skipped", "INVALID_REPLY"),
    "rerank": ("UNAVAILABLE", "DEADLINE_EXCEEDED"),
    "features": ("missing",),
}
FEEDBACK_EVENTS = Counter(
    "starling_feedback_events_total",
    "Feedback events RecordFeedback received, by outcome: accepted (recorded), duplicate (already known, "
    "dropped) or rejected (invalid).",
    ["outcome"],
)
FEEDBACK_OUTCOMES = ("accepted", "duplicate", "rejected")
EXPOSURES = Counter(
    "starling_exposures_logged",
    "Served lists appended to the exposure log (written), or not (failed: the list was still served).",
    ["outcome"],
)
EXPERIMENT_EXPOSURES = Counter(
    "starling_experiment_exposures",
    "Lists served to users in an experiment, by experiment and arm (an interleaving experiment's lists: arm "
    "'interleaved').",
    ["experiment", "arm"],
)
EXPERIMENT_FEEDBACK = Counter(
    "starling_experiment_feedback",
    "Feedback events accepted from users in an experiment, by experiment, arm and signal (like: a rating of "
    "3.5 or more, or a watch; rating; click). The arm is the one of the list the event names by request_id when "
    "this process served it (in an interleaving experiment, the arm that contributed the movie), else the "
    "user's assigned arm.",
    ["experiment", "arm", "signal"],
)
EXPERIMENT_SIGNALS = ("like", "rating", "click")
MODEL_INFO = Gauge("starling_model_info", "1 for the model version currently served.", ["version"])
RANKER_BATCH_REQUESTS = Histogram(
    "starling_ranker_batch_requests",
    "Requests the ranker scored together in one forward pass (more than 1 only under load: see "
    "services/ranker/batching.py).",
    buckets=(1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64),
)


class ExportedOnceSetGauge(Gauge):
    """An unlabelled gauge that joins ``registry`` (and so /metrics) on its first ``set``/``inc``.

    A plain unlabelled gauge is exported at 0 by every process that imports this module; for a timestamp that
    reads as a value, not as "unknown"."""

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry = REGISTRY) -> None:
        super().__init__(name, documentation, registry=None)
        self._target_registry = registry
        self._exported = False
        self._export_lock = threading.Lock()

    def _export(self) -> None:
        with self._export_lock:
            if not self._exported:
                self._target_registry.register(self)
                self._exported = True

    def set(self, value: float) -> None:
        super().set(value)
        self._export()

    def inc(self, amount: float = 1) -> None:
        super().inc(amount)
        self._export()


FEATURE_FRESHNESS = ExportedOnceSetGauge(
    "starling_feature_materialized_timestamp_seconds",
    "Unix time of the latest Feast materialization that the serving process has loaded (the ranker).",
)
# "component", not "service": prometheus-operator gives every ServiceMonitor target a `service` label (the
# Service's name), which would push ours aside into `exported_service`.
BUILD_INFO = Gauge(
    "starling_build_info", "Always 1; labels tell the component and version.", ["component", "version"]
)


def init_counters() -> None:
    """Create every known label set of the fallback and feedback counters at 0 (idempotent)."""
    for stage, reasons in FALLBACK_REASONS.items():
        for reason in reasons:
            STAGE_FALLBACKS.labels(stage, reason)
    for outcome in FEEDBACK_OUTCOMES:
        FEEDBACK_EVENTS.labels(outcome)
    for outcome in ("written", "failed"):
        EXPOSURES.labels(outcome)


def count_feedback(accepted: int, duplicate: int, rejected: int) -> None:
    """Count one RecordFeedback batch: new events recorded, duplicates dropped, invalid events rejected."""
    for outcome, n in (("accepted", accepted), ("duplicate", duplicate), ("rejected", rejected)):
        if n:
            FEEDBACK_EVENTS.labels(outcome).inc(n)


init_counters()


def _split_method(full_method: str) -> tuple[str, str]:
    """'/starling.v1.RecommendService/Recommend' -> ('starling.v1.RecommendService', 'Recommend')."""
    _, _, rest = full_method.partition("/")
    service, _, method = rest.partition("/")
    return service, method


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Observes latency and status code of every unary call; maps uncaught exceptions to INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        service, method = _split_method(handler_call_details.method)
        behavior = handler.unary_unary

        async def observed(request: Any, context: grpc.aio.ServicerContext) -> Any:
            start = time.perf_counter()
            code = grpc.StatusCode.OK
            try:
                response = await behavior(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except RequestError as exc:
                code = exc.code
                await context.abort(exc.code, str(exc))
            except Exception as exc:
                code = grpc.StatusCode.INTERNAL
                log.exception("unhandled error in %s/%s", service, method)
                await context.abort(
                    grpc.StatusCode.INTERNAL, f"internal error in {method}: {type(exc).__name__}"
                )
            finally:
                SERVER_LATENCY.labels(service, method).observe(time.perf_counter() - start)
                SERVER_HANDLED.labels(service, method, code.name).inc()

        return grpc.unary_unary_rpc_method_handler(
            observed,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def start_metrics_server(port: int, host: str = "0.0.0.0") -> int:
    """Serve /metrics on ``port`` (0 = any free port); returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return server.server_port
