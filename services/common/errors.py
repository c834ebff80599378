"""Request errors raised by service logic; the shared interceptor turns them into gRPC status codes.

Logic stays free of gRPC: it raises ``InvalidArgument("k must be 1..500, got 0")`` and the caller sees
``INVALID_ARGUMENT`` with that message.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import grpc
import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp


class RequestError(Exception):
    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN


class InvalidArgument(RequestError):
    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(RequestError):
    code = grpc.StatusCode.NOT_FOUND


class Unavailable(RequestError):
    code = grpc.StatusCode.UNAVAILABLE


class Unimplemented(RequestError):
    code = grpc.StatusCode.UNIMPLEMENTED


MAX_K = 500


def check_k(k: int, field: str = "k") -> int:
    if not 1 <= k <= MAX_K:
        raise InvalidArgument(f"{field} must be between 1 and {MAX_K}, got {k}")
    return k


def check_id(value: int, field: str) -> int:
    if value < 0:
        raise InvalidArgument(f"{field} must be >= 0, got {value}")
    return value


def check_ids(values: Sequence[int], field: str, limit: int = 10_000) -> np.ndarray:
    """The ids as an int64 array; rejects oversized lists and negative ids."""
    if len(values) > limit:
        raise InvalidArgument(f"{field} holds {len(values)} ids; at most {limit} are accepted")
    ids = np.asarray(values, dtype=np.int64)
    if ids.size and ids.min() < 0:
        raise InvalidArgument(f"{field} must hold ids >= 0, got {int(ids.min())}")
    return ids


# google.protobuf.Timestamp's valid range: 0001-01-01T00:00:00Z .. 9999-12-31T23:59:59.999999999Z.
TIMESTAMP_MIN_S = -62_135_596_800
TIMESTAMP_MAX_S = 253_402_300_799
NANOS_MAX = 999_999_999


def check_time(timestamp: Timestamp, field: str) -> dt.datetime:
    """A Timestamp within the protobuf spec's range (year 1..9999, nanos 0..999,999,999), as a UTC datetime."""
    if not 0 <= timestamp.nanos <= NANOS_MAX:
        raise InvalidArgument(f"{field}.nanos must be 0..{NANOS_MAX}, got {timestamp.nanos}")
    if not TIMESTAMP_MIN_S <= timestamp.seconds <= TIMESTAMP_MAX_S:
        raise InvalidArgument(
            f"{field}.seconds must be within years 1..9999 ({TIMESTAMP_MIN_S}..{TIMESTAMP_MAX_S}), "
            f"got {timestamp.seconds}"
        )
    return timestamp.ToDatetime(dt.UTC)
