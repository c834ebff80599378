"""A small RecommendService client for the CLI (`starling recommend`, `starling similar`)."""

from __future__ import annotations

import grpc

from starling.errors import StarlingError
from starling.v1 import common_pb2, recommend_pb2, recommend_pb2_grpc


def _call(target: str, method: str, request, timeout: float):
    with grpc.insecure_channel(target) as channel:
        stub = recommend_pb2_grpc.RecommendServiceStub(channel)
        try:
            return getattr(stub, method)(request, timeout=timeout)
        except grpc.RpcError as exc:
            if exc.code() == grpc.StatusCode.UNAVAILABLE and _nothing_listens(exc.details() or ""):
                raise StarlingError(
                    f"nothing listens on {target} — run `starling up WORKDIR` (or pass --target)"
                ) from exc
            raise StarlingError(f"{method} at {target}: {exc.code().name}: {exc.details()}") from exc


def _nothing_listens(details: str) -> bool:
    return any(sign in details for sign in ("Connection refused", "failed to connect", "Failed to connect"))


def recommend(
    target: str,
    user_id: int,
    k: int,
    genres: list[str] | None = None,
    exclude: list[int] | None = None,
    timeout: float = 5.0,
) -> recommend_pb2.RecommendResponse:
    context = common_pb2.RecommendContext(genres=genres or [], exclude_movie_ids=exclude or [])
    return _call(
        target, "Recommend", recommend_pb2.RecommendRequest(user_id=user_id, k=k, context=context), timeout
    )


def similar(target: str, movie_id: int, k: int, timeout: float = 5.0) -> recommend_pb2.SimilarItemsResponse:
    return _call(target, "SimilarItems", recommend_pb2.SimilarItemsRequest(movie_id=movie_id, k=k), timeout)


def format_items(items) -> str:
    """A table: rank, match (0-100%, Recommend only), raw score, recall channel, year, title and why."""
    lines = [f"{'#':>3}  {'match':>5}  {'score':>6}  {'channel':<10}  {'year':>4}  title  (why)"]
    for rank, item in enumerate(items, start=1):
        year = item.release_year or ""
        match = f"{item.match:.0%}" if item.match else ""
        why = f"  ({item.reason.text})" if item.reason.text else ""
        lines.append(
            f"{rank:>3}  {match:>5}  {item.score:6.3f}  {item.channel:<10}  {year:>4}  {item.title}{why}"
        )
    return "\n".join(lines)


def as_json_text(message) -> str:
    """The response as JSON with the proto field names (what `--json` prints)."""
    from google.protobuf.json_format import MessageToJson

    return MessageToJson(message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True)
