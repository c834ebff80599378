"""The HTTP gateway: pages, a JSON API under /api that maps 1:1 onto the public gRPC services, /healthz and
/metrics. Transport only: it checks that the input is well-formed (numeric ids, a JSON body of the right
shape), converts to and from protobuf, and turns gRPC status codes into HTTP ones. Everything else (ranges
of k and limit, known movies, the feedback rules) is the services' call.

| route | gRPC |
|---|---|
| GET  /api/users/{user_id}/recommendations?k=&genre=&exclude= | RecommendService.Recommend |
| GET  /api/users/{user_id}/ratings?limit=&offset=&movie= | CatalogService.ListUserRatings (paged) |
| GET  /api/movies?q=&limit=&offset= | CatalogService.SearchMovies (title search, paged) |
| GET  /api/popular?genre=&limit=&offset= | CatalogService.ListPopularMovies (home page rows) |
| GET  /api/movies/{movie_id} | CatalogService.GetMovie |
| GET  /api/movies/{movie_id}/similar?k= | RecommendService.SimilarItems |
| POST /api/session {user_id} | (signs the browser in as user_id: a signed SameSite cookie) |
| POST /api/feedback {user_id, movie_id, rating} or {user_id, movie_id, kind: "click"/"watch"} | RecordFeedback |

Writes are guarded (services/web/security.py): same-site JSON only, and the session's own user (or an API key
with feedback:write); the gateway calls RecordFeedback with its own API key.

Errors are JSON ``{"error": message, "code": name}``: malformed input 400 (code BAD_REQUEST); gRPC
INVALID_ARGUMENT 400, NOT_FOUND 404, UNAVAILABLE 503, DEADLINE_EXCEEDED 504, others 502; a feedback event
the service rejects 400 (code REJECTED) with its reason.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from services.web.security import SECURITY, Forbidden, WebSecurity, security_headers
from starling.auth import bearer_metadata
from starling.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommend_pb2, recommend_pb2_grpc

log = logging.getLogger("starling.web")

STATIC_DIR = Path(__file__).resolve().parent / "static"
INT64_MAX = 2**63 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
DEFAULT_K = 12
DEFAULT_RATINGS_LIMIT = 20
FEEDBACK_KINDS = {
    "rating": recommend_pb2.FEEDBACK_KIND_RATING,
    "click": recommend_pb2.FEEDBACK_KIND_CLICK,
    "watch": recommend_pb2.FEEDBACK_KIND_WATCH,
}
HTTP_STATUS_OF_GRPC = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 413,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

HTTP_LATENCY = Histogram(
    "starling_http_request_seconds",
    "Time to answer one HTTP request of the web gateway, by route.",
    ["method", "route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
HTTP_RESPONSES = Counter(
    "starling_http_responses_total",
    "HTTP responses of the web gateway, by route and status.",
    ["route", "status"],
)


class GatewayError(Exception):
    """An error the gateway answers itself, with its HTTP status and a code name."""

    status = 502
    code = "BAD_GATEWAY"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code or self.code


class BadRequest(GatewayError):
    """Malformed input: the message says what is wrong and where."""

    status = 400
    code = "BAD_REQUEST"


class Backend:
    """The gRPC stubs the handlers call, on one channel, with one deadline per call."""

    def __init__(self, target: str, timeout_s: float, token: str | None = None) -> None:
        self.target = target
        self.timeout_s = timeout_s
        self.write_metadata = bearer_metadata(token)  # the gateway's API key, sent with writes
        self.channel = grpc.aio.insecure_channel(target)
        self.recommend = recommend_pb2_grpc.RecommendServiceStub(self.channel)
        self.catalog = catalog_pb2_grpc.CatalogServiceStub(self.channel)

    async def close(self) -> None:
        await self.channel.close()


BACKEND = web.AppKey("backend", Backend)


# --- input parsing ---------------------------------------------------------------------------------------


def parse_id(text: str, what: str) -> int:
    """A path or body id: a non-negative integer that fits int64."""
    if not (text.isascii() and text.isdigit()) or int(text) > INT64_MAX:
        raise BadRequest(f"{what} must be an integer from 0 to {INT64_MAX}, got {text!r}")
    return int(text)


def query_int(request: web.Request, name: str, default: int) -> int:
    """An integer query parameter (its range is the service's to check)."""
    text = request.query.get(name)
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequest(f"query parameter {name} must be an integer, got {text!r}") from None
    if not INT32_MIN <= value <= INT32_MAX:
        raise BadRequest(f"query parameter {name} must be within {INT32_MIN}..{INT32_MAX}, got {text}")
    return value


def body_id(body: dict[str, Any], field: str) -> int:
    value = body.get(field)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= INT64_MAX:
        raise BadRequest(f"{field} must be an integer from 0 to {INT64_MAX}, got {json.dumps(value)}")
    return value


def parse_feedback(body: Any) -> recommend_pb2.FeedbackEvent:
    """One feedback event from the JSON body: a rating (0.5..5 in steps of 0.5), a click or a watch; with
    ``request_id``, the recommendations answer it responds to (the service checks its form)."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body must be a JSON object, got {type(body).__name__}")
    unknown = sorted(set(body) - {"user_id", "movie_id", "kind", "rating", "request_id"})
    if unknown:
        raise BadRequest(f"unknown fields {unknown}; expected user_id, movie_id, rating, kind or request_id")
    user_id, movie_id = body_id(body, "user_id"), body_id(body, "movie_id")
    request_id = body.get("request_id", "")
    if not isinstance(request_id, str):
        raise BadRequest(f"request_id must be a string, got {json.dumps(request_id)}")
    kind = body.get("kind", "rating")
    if kind not in FEEDBACK_KINDS:
        raise BadRequest(f"kind must be one of {sorted(FEEDBACK_KINDS)}, got {json.dumps(kind)}")
    rating = body.get("rating")
    if kind != "rating":
        if rating is not None:
            raise BadRequest(f"rating is only for kind 'rating', not {kind!r}")
        return recommend_pb2.FeedbackEvent(
            user_id=user_id, movie_id=movie_id, kind=FEEDBACK_KINDS[kind], request_id=request_id
        )
    if (
        isinstance(rating, bool)
        or not isinstance(rating, int | float)
        or not math.isfinite(rating)
        or not 0.5 <= rating <= 5
        or rating * 2 != round(rating * 2)
    ):
        raise BadRequest(f"rating must be a number from 0.5 to 5 in steps of 0.5, got {json.dumps(rating)}")
    return recommend_pb2.FeedbackEvent(
        user_id=user_id,
        movie_id=movie_id,
        kind=recommend_pb2.FEEDBACK_KIND_RATING,
        rating=float(rating),
        request_id=request_id,
    )


# --- protobuf -> JSON --------------------------------------------------------------------------------------


def item_json(item: recommend_pb2.RecommendedItem) -> dict[str, Any]:
    return {
        "movie_id": item.movie_id,
        "title": item.title,
        "release_year": item.release_year or None,
        "genres": list(item.genres),
        "score": round(item.score, 4),
        "match": round(item.match, 4),
        "channel": item.channel,
        "reason": {
            "kind": recommend_pb2.ReasonKind.Name(item.reason.kind).removeprefix("REASON_KIND_").lower(),
            "text": item.reason.text,
            "because_movie_id": item.reason.because_movie_id or None,
            "genre": item.reason.genre or None,
        },
    }


def movie_json(movie: catalog_pb2.Movie) -> dict[str, Any]:
    return {
        "movie_id": movie.movie_id,
        "title": movie.title,
        "release_year": movie.release_year or None,
        "genres": list(movie.genres),
        "rating_count": movie.rating_count,
        "avg_rating": round(movie.avg_rating, 3) if movie.rating_count else None,
    }


# --- handlers ------------------------------------------------------------------------------------------------


async def recommendations(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    user_id = parse_id(request.match_info["user_id"], "user id")
    exclude = [parse_id(text, "exclude") for text in request.query.getall("exclude", [])]
    context = common_pb2.RecommendContext(genres=request.query.getall("genre", []), exclude_movie_ids=exclude)
    reply = await backend.recommend.Recommend(
        recommend_pb2.RecommendRequest(
            user_id=user_id, k=query_int(request, "k", DEFAULT_K), context=context
        ),
        timeout=backend.timeout_s,
    )
    return web.json_response(
        {
            "user_id": user_id,
            "items": [item_json(item) for item in reply.items],
            "model_version": reply.model_version,
            "request_id": reply.request_id,
            "degraded": [{"stage": d.stage, "reason": d.reason} for d in reply.degraded],
        }
    )


async def user_ratings(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    user_id = parse_id(request.match_info["user_id"], "user id")
    offset = query_int(request, "offset", 0)
    movie_id = parse_id(request.query["movie"], "movie") if "movie" in request.query else 0
    reply = await backend.catalog.ListUserRatings(
        catalog_pb2.ListUserRatingsRequest(
            user_id=user_id,
            limit=query_int(request, "limit", DEFAULT_RATINGS_LIMIT),
            offset=offset,
            movie_id=movie_id,
        ),
        timeout=backend.timeout_s,
    )
    ratings = [
        {"movie": movie_json(r.movie), "rating": r.rating, "time_unix_ms": r.time_unix_ms}
        for r in reply.ratings
    ]
    return web.json_response({"user_id": user_id, "total": reply.total, "offset": offset, "ratings": ratings})


async def movie(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    movie_id = parse_id(request.match_info["movie_id"], "movie id")
    reply = await backend.catalog.GetMovie(
        catalog_pb2.GetMovieRequest(movie_id=movie_id), timeout=backend.timeout_s
    )
    return web.json_response(movie_json(reply))


async def search(request: web.Request) -> web.Response:
    """Title search: ?q= (case- and accent-insensitive), &limit= (1..100, default 20), &offset=."""
    backend = request.app[BACKEND]
    query = request.query.get("q", "")
    offset = query_int(request, "offset", 0)
    reply = await backend.catalog.SearchMovies(
        catalog_pb2.SearchMoviesRequest(query=query, limit=query_int(request, "limit", 20), offset=offset),
        timeout=backend.timeout_s,
    )
    return web.json_response(
        {
            "query": query,
            "total": reply.total,
            "offset": offset,
            "movies": [movie_json(m) for m in reply.movies],
        }
    )


async def popular(request: web.Request) -> web.Response:
    """The most rated movies: ?genre= (one genre, or all), &limit= (1..100, default 20), &offset=."""
    backend = request.app[BACKEND]
    genre = request.query.get("genre", "")
    offset = query_int(request, "offset", 0)
    reply = await backend.catalog.ListPopularMovies(
        catalog_pb2.ListPopularMoviesRequest(
            genre=genre, limit=query_int(request, "limit", 20), offset=offset
        ),
        timeout=backend.timeout_s,
    )
    return web.json_response(
        {
            "genre": genre or None,
            "total": reply.total,
            "offset": offset,
            "movies": [movie_json(m) for m in reply.movies],
            "genres": list(reply.genres),
        }
    )


async def similar(request: web.Request) -> web.Response:
    backend = request.app[BACKEND]
    movie_id = parse_id(request.match_info["movie_id"], "movie id")
    reply = await backend.recommend.SimilarItems(
        recommend_pb2.SimilarItemsRequest(movie_id=movie_id, k=query_int(request, "k", DEFAULT_K)),
        timeout=backend.timeout_s,
    )
    return web.json_response({"movie_id": movie_id, "items": [item_json(item) for item in reply.items]})


async def json_body(request: web.Request) -> Any:
    try:
        return await request.json()
    except (ValueError, RecursionError) as exc:  # RecursionError: nesting deeper than the parser goes
        raise BadRequest(f"request body is not valid JSON: {str(exc)[:200]}") from None


async def session(request: web.Request) -> web.Response:
    """Sign this browser in as ``user_id`` (open sign-in: the demo has no accounts)."""
    security = request.app[SECURITY]
    security.check_same_site(request)
    if not security.open_sign_in:
        raise Forbidden(403, "SIGN_IN_CLOSED", "open sign-in is off (STARLING_WEB_OPEN_SIGN_IN=0)")
    body = await json_body(request)
    if not isinstance(body, dict) or set(body) != {"user_id"}:
        raise BadRequest('request body must be {"user_id": <id>}')
    user_id = body_id(body, "user_id")
    response = web.json_response({"user_id": user_id})
    security.set_session(request, response, user_id)
    return response


async def feedback(request: web.Request) -> web.Response:
    backend, security = request.app[BACKEND], request.app[SECURITY]
    security.check_same_site(request)
    event = parse_feedback(await json_body(request))
    writer = security.writer(request)
    if writer is not None and event.user_id != writer:
        raise Forbidden(403, "WRONG_USER", f"signed in as user {writer}, not user {event.user_id}")
    reply = await backend.recommend.RecordFeedback(
        recommend_pb2.RecordFeedbackRequest(events=[event]),
        timeout=backend.timeout_s,
        metadata=backend.write_metadata,
    )
    if len(reply.results) != 1:
        raise GatewayError(f"RecordFeedback returned {len(reply.results)} results for 1 event")
    result = reply.results[0]
    if not (result.accepted or result.duplicate):
        raise BadRequest(f"feedback rejected: {result.reason}", code="REJECTED")
    return web.json_response(
        {
            "accepted": result.accepted,
            "duplicate": result.duplicate,
            "user_id": event.user_id,
            "movie_id": event.movie_id,
        }
    )


async def healthz(request: web.Request) -> web.Response:
    """Liveness of the gateway itself; the gRPC services have their own health checks."""
    return web.json_response({"status": "ok", "backend": request.app[BACKEND].target})


async def metrics(_: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def page(name: str) -> Callable[[web.Request], Awaitable[web.FileResponse]]:
    """A static HTML page; its script reads the ids from the URL and calls /api (and shows API errors)."""

    async def handler(_: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / name, headers={"Cache-Control": "no-cache"})

    return handler


# --- errors and metrics ----------------------------------------------------------------------------------


def error_response(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


@web.middleware
async def errors_and_metrics(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Turns gateway and gRPC errors into JSON responses, and counts every request by route template."""
    route = request.match_info.route.resource.canonical if request.match_info.route.resource else "unmatched"
    started = time.perf_counter()
    try:
        response = await handler(request)
    except (GatewayError, Forbidden) as exc:
        response = error_response(exc.status, exc.code, str(exc))
    except grpc.aio.AioRpcError as exc:
        status = HTTP_STATUS_OF_GRPC.get(exc.code(), 502)
        message = exc.details() or exc.code().name
        if exc.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and message.startswith("overloaded"):
            status = 429  # shed by the service's in-flight limit (not a message over the size limit)
        if status >= 500:
            message = f"{request.app[BACKEND].target}: {message}"
            log.warning(
                "backend error", extra={"route": route, "grpc_code": exc.code().name, "detail": message}
            )
        response = error_response(status, exc.code().name, message)
    except web.HTTPException as exc:
        if not request.path.startswith("/api/"):
            raise
        response = error_response(
            exc.status, exc.reason.upper().replace(" ", "_"), f"{exc.reason}: {request.path}"
        )
    except Exception:
        log.exception("unexpected error", extra={"route": route})
        response = error_response(500, "INTERNAL", "internal error in the web gateway; see its log")
    HTTP_LATENCY.labels(request.method, route).observe(time.perf_counter() - started)
    HTTP_RESPONSES.labels(route, str(response.status)).inc()
    return response


# --- the application ---------------------------------------------------------------------------------------


def create_app(
    recommend_target: str, security: WebSecurity, timeout_s: float = 5.0, token: str | None = None
) -> web.Application:
    """The gateway onto the gRPC services at ``recommend_target`` (host:port); the channel opens on start-up.
    ``token``: the gateway's own API key, sent with RecordFeedback."""
    app = web.Application(middlewares=[security_headers, errors_and_metrics])
    app[SECURITY] = security

    async def open_backend(app: web.Application) -> None:
        app[BACKEND] = Backend(recommend_target, timeout_s, token)

    async def close_backend(app: web.Application) -> None:
        await app[BACKEND].close()

    app.on_startup.append(open_backend)
    app.on_cleanup.append(close_backend)
    app.router.add_get("/", page("index.html"))
    app.router.add_get("/users/{user_id}", page("user.html"))
    app.router.add_get("/movies/{movie_id}", page("movie.html"))
    app.router.add_static("/static/", STATIC_DIR)
    app.router.add_get("/api/users/{user_id}/recommendations", recommendations)
    app.router.add_get("/api/users/{user_id}/ratings", user_ratings)
    app.router.add_get("/api/movies", search)
    app.router.add_get("/api/popular", popular)
    app.router.add_get("/api/movies/{movie_id}", movie)
    app.router.add_get("/api/movies/{movie_id}/similar", similar)
    app.router.add_post("/api/session", session)
    app.router.add_post("/api/feedback", feedback)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app
