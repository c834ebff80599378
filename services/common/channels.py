"""Client channel options of the orchestrator's calls to its stages.

gRPC's default reconnect backoff starts at 1 s and grows to 120 s, so a stage that was down for a while is
reached again only many seconds after it is healthy. Stages are on the same host or in the same cluster:
retry the connection every 100 ms growing to at most 1 s. (No keepalive pings: servers with gRPC's default
ping policy answer frequent pings with GOAWAY; per-call deadlines bound a call to a vanished peer.)
"""

from __future__ import annotations

STAGE_CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.min_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
)
