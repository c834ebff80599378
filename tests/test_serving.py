"""End to end: `starling up` starts every service as a real process on free ports; a client calls the public
RecommendService. Covers the round trip, SimilarItems, each bad input, health, /metrics, and the fallbacks
when the ranker or recall is killed."""

from __future__ import annotations

import datetime as dt
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc

from starling.auth import authorized_channel, client_token
from starling.config import Settings
from starling.local import read_state
from starling.v1 import catalog_pb2, catalog_pb2_grpc, common_pb2, recommend_pb2, recommend_pb2_grpc

pytestmark = pytest.mark.slow


# A user with ratings (so candidates and recall know them) whose features were never materialized.
UNMATERIALIZED_USER = 777_777


@pytest.fixture(scope="module")
def stack(
    ml_small_trained: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Settings, recommend_pb2_grpc.RecommendServiceStub]]:
    import polars as pl
    from conftest import copy_workdir, running_stack

    workdir = copy_workdir(ml_small_trained, tmp_path_factory.mktemp("serving"))
    ratings = pl.read_parquet(workdir / "ratings.parquet")
    late = ratings.head(1).with_columns(
        user_id=pl.lit(UNMATERIALIZED_USER, dtype=pl.Int64), rating=pl.lit(5.0, dtype=pl.Float32)
    )
    pl.concat([ratings, late]).write_parquet(workdir / "ratings.parquet")

    # Killed stages stay dead (fallback tests). Recall searches vectors in Milvus (milvus-lite) here; the other
    # stacks of the tests search in memory, the default for a catalog this size.
    with running_stack(workdir, supervise=False, recall_vector_search="milvus") as settings:
        channel = authorized_channel(f"127.0.0.1:{settings.recommend_port}", client_token(settings))
        try:
            names = [p.name for p in read_state(workdir)]
            assert names == ["candidates", "recall", "rerank", "ranker", "recommend", "web"]
            yield settings, recommend_pb2_grpc.RecommendServiceStub(channel)
        finally:
            channel.close()


def _request(user_id: int = 1, k: int = 20, **context) -> recommend_pb2.RecommendRequest:
    return recommend_pb2.RecommendRequest(
        user_id=user_id, k=k, context=common_pb2.RecommendContext(**context)
    )


def test_recommend_round_trip(stack) -> None:
    settings, stub = stack
    response = stub.Recommend(_request(1, 20), timeout=10)
    assert len(response.items) == 20 and not response.degraded, response.degraded
    assert response.model_version and response.request_id
    ids = [item.movie_id for item in response.items]
    assert len(set(ids)) == 20
    import polars as pl

    rated = set(
        pl.read_parquet(settings.workdir / "ratings.parquet").filter(pl.col("user_id") == 1)["movie_id"]
    )
    assert not set(ids) & rated, "already-rated movies must not be recommended"
    assert all(item.title and item.channel for item in response.items)
    assert {item.channel for item in response.items} <= {
        "ease",
        "item2item",
        "embedding",
        "new",
        "genre",
        "popular",
    }

    comedies = stub.Recommend(_request(1, 10, genres=["Comedy"], exclude_movie_ids=ids[:5]), timeout=10)
    assert all("Comedy" in item.genres for item in comedies.items)
    assert not {item.movie_id for item in comedies.items} & set(ids[:5])

    cold = stub.Recommend(_request(10_000_000, 10), timeout=10)
    assert len(cold.items) == 10 and {item.channel for item in cold.items} == {"cold_start"}
    assert not [d for d in cold.degraded if d.stage != "features"]


def test_each_item_says_why_and_how_well_it_matches(stack) -> None:
    """Reasons come from evidence: a "because you liked" movie is one of the user's recent likes; a genre
    reason names one of the item's genres; match is 0..1 and highest for the first item."""
    import polars as pl

    settings, stub = stack
    kinds = recommend_pb2.ReasonKind
    ratings = pl.read_parquet(settings.workdir / "ratings.parquet")
    catalog = _catalog_stub(settings)
    for user_id in (1, 414, 68):  # a heavy rater, the heaviest, and another
        liked = ratings.filter((pl.col("user_id") == user_id) & (pl.col("rating") >= 3.5))
        recent_likes = set(liked.sort("event_timestamp", descending=True).head(50)["movie_id"].to_list())
        response = stub.Recommend(_request(user_id, 20), timeout=10)
        reasons = [item.reason for item in response.items]
        assert all(r.text and r.kind != kinds.REASON_KIND_UNSPECIFIED for r in reasons), reasons
        because = [r for r in reasons if r.kind == kinds.REASON_KIND_BECAUSE_YOU_LIKED]
        assert because, f"user {user_id}: no item is explained by a liked movie"
        assert {r.because_movie_id for r in because} <= recent_likes
        for r in because:
            title = catalog.GetMovie(
                catalog_pb2.GetMovieRequest(movie_id=r.because_movie_id), timeout=10
            ).title
            assert r.text == f"Because you liked {title}"
        for item in response.items:
            if item.reason.kind == kinds.REASON_KIND_POPULAR_IN_GENRE:
                assert (
                    item.reason.genre in item.genres and item.reason.text == f"Popular in {item.reason.genre}"
                )
        matches = [item.match for item in response.items]
        assert all(0.0 <= m <= 1.0 for m in matches) and matches[0] >= matches[-1] and matches[0] > 0.5

    cold = stub.Recommend(_request(30_000_001, 5, genres=["Animation"]), timeout=10)
    assert {(i.reason.kind, i.reason.text) for i in cold.items} == {
        (kinds.REASON_KIND_POPULAR_IN_GENRE, "Popular in Animation")
    }
    anonymous = stub.Recommend(_request(30_000_001, 5), timeout=10)
    assert {(i.reason.kind, i.reason.text) for i in anonymous.items} == {
        (kinds.REASON_KIND_POPULAR, "Popular now")
    }
    similar = stub.SimilarItems(recommend_pb2.SimilarItemsRequest(movie_id=1, k=3), timeout=10)
    assert {(i.reason.kind, i.reason.because_movie_id, i.reason.text) for i in similar.items} == {
        (kinds.REASON_KIND_SIMILAR_TO, 1, "Similar to Toy Story")
    }


def test_cli_prints_json_for_recommend_and_similar(stack) -> None:
    import json

    from click.testing import CliRunner

    from starling.cli import cli

    settings, _ = stack
    target = f"127.0.0.1:{settings.recommend_port}"
    result = CliRunner().invoke(cli, ["recommend", "1", "--k", "3", "--json", "--target", target])
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output)
    assert len(reply["items"]) == 3 and reply["model_version"] and reply["degraded"] == []
    assert {"movie_id", "title", "score", "channel", "genres", "release_year"} <= set(reply["items"][0])
    similar = json.loads(
        CliRunner().invoke(cli, ["similar", "1", "--k", "2", "--json", "--target", target]).output
    )
    assert len(similar["items"]) == 2


def test_the_offline_replay_answers_what_the_stack_serves(stack) -> None:
    """One pipeline, two callers: `starling evaluate` replays the services' own logic (training/replay.py) on
    the state they serve; for sampled users and contexts its lists equal the live Recommend answers."""
    import numpy as np
    import polars as pl

    from services.rerank.logic import load_rules
    from starling.content import artifact_content
    from training.artifacts import load_artifact, resolve_artifact
    from training.replay import OfflinePipeline, Ranker, served_snapshot

    settings, stub = stack
    artifact = load_artifact(resolve_artifact(settings.workdir))
    snapshot = served_snapshot(
        settings.workdir,
        artifact.recall_state,
        settings.like_threshold,
        artifact_content(artifact.path, artifact.manifest),
    )
    ranker = Ranker.build(artifact.model(), artifact.spec, snapshot)
    pipeline = OfflinePipeline(snapshot, ranker, load_rules(), settings.recall_size)
    users = pl.read_parquet(settings.workdir / "ratings.parquet")["user_id"].unique().sort()
    sampled = [*users.sample(12, seed=7).to_list(), UNMATERIALIZED_USER, 10_000_003]
    requests = [(user, 10, (), ()) for user in sampled]
    requests += [
        (1, 20, ("Comedy", "Drama"), (296, 318)),
        (414, 5, ("Horror",), ()),
        (10_000_004, 10, ("Animation",), ()),
    ]
    for user, k, genres, exclude in requests:
        live = stub.Recommend(
            _request(user, k, genres=list(genres), exclude_movie_ids=list(exclude)), timeout=10
        )
        assert not [d for d in live.degraded if d.stage != "features"], live.degraded
        offline = pipeline.recommend(user, k, genres, np.array(exclude, dtype=np.int64))
        assert [item.movie_id for item in live.items] == offline.movie_ids.tolist(), (user, genres)
        assert [item.channel for item in live.items] == offline.final_channels.tolist(), user
        np.testing.assert_allclose(
            [item.score for item in live.items], offline.final_scores, rtol=1e-5, atol=1e-6
        )


def test_missing_online_features_fall_back_to_defaults(stack) -> None:
    _, stub = stack
    response = stub.Recommend(_request(UNMATERIALIZED_USER, 10), timeout=10)
    assert len(response.items) == 10
    assert [d.stage for d in response.degraded] == ["features"], response.degraded
    assert "defaults" in response.degraded[0].reason


def test_similar_items(stack) -> None:
    _, stub = stack
    response = stub.SimilarItems(recommend_pb2.SimilarItemsRequest(movie_id=1, k=5), timeout=10)
    assert len(response.items) == 5 and 1 not in [i.movie_id for i in response.items]
    with pytest.raises(grpc.RpcError) as err:
        stub.SimilarItems(recommend_pb2.SimilarItemsRequest(movie_id=99_999_999, k=5), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND and "99999999" in err.value.details()


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (_request(1, 0), "k must be between 1 and 500"),
        (_request(1, 501), "k must be between 1 and 500"),
        (_request(-5, 10), "user_id must be >= 0"),
        (_request(1, 10, exclude_movie_ids=[-3]), "exclude_movie_ids must hold ids >= 0"),
        (_request(1, 10, exclude_movie_ids=list(range(10_001))), "at most 10000"),
        (_request(1, 10, genres=["Space Opera"]), "unknown genre"),
        (recommend_pb2.SimilarItemsRequest(movie_id=1, k=0), "k must be between 1 and 500"),
        (recommend_pb2.SimilarItemsRequest(movie_id=-1, k=3), "movie_id must be >= 0"),
        (_request(1, 10, time=Timestamp(seconds=2**62)), "context.time.seconds must be within years 1..9999"),
        (_request(1, 10, time=Timestamp(seconds=0, nanos=-5)), "context.time.nanos must be 0..999999999"),
    ],
)
def test_bad_input_is_invalid_argument(stack, request_, message: str) -> None:
    _, stub = stack
    method = stub.Recommend if isinstance(request_, recommend_pb2.RecommendRequest) else stub.SimilarItems
    with pytest.raises(grpc.RpcError) as err:
        method(request_, timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in err.value.details()


def test_internal_stages_check_timestamps_too(stack) -> None:
    from starling.v1 import rerank_pb2, rerank_pb2_grpc

    settings, _ = stack
    with grpc.insecure_channel(f"127.0.0.1:{settings.rerank_port}") as channel:
        rerank = rerank_pb2_grpc.RerankServiceStub(channel)
        request = rerank_pb2.RerankRequest(user_id=1, k=2, movie_ids=[1, 2, 3], scores=[0.3, 0.2, 0.1])
        request.channels.extend(["popular"] * 3)
        assert len(rerank.Rerank(request, timeout=10).movie_ids) == 2
        for bad, message in [
            (Timestamp(seconds=2**63 - 1), "time.seconds must be within years 1..9999"),
            (Timestamp(seconds=0, nanos=2**31 - 1), "time.nanos must be 0..999999999"),
        ]:
            request.time.CopyFrom(bad)
            with pytest.raises(grpc.RpcError) as err:
                rerank.Rerank(request, timeout=10)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_oversized_request_is_rejected_and_service_survives(stack) -> None:
    _, stub = stack
    with pytest.raises(grpc.RpcError) as err:
        stub.Recommend(_request(1, 10, genres=["x" * 5_000_000]), timeout=10)
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(stub.Recommend(_request(1, 5), timeout=10).items) == 5


def test_writes_need_an_api_key_with_their_scope_and_reads_stay_open(stack) -> None:
    from starling.auth import add_key, keys_file

    settings, _ = stack
    target = f"127.0.0.1:{settings.recommend_port}"
    feedback = recommend_pb2.RecordFeedbackRequest(events=[_rating(1, 1, 4.0)])
    upsert = catalog_pb2.UpsertMovieRequest(movie=catalog_pb2.Movie(title="Nobody's Movie", genres=["Drama"]))
    feedback_only = add_key(keys_file(settings), "feedback-only", ["feedback:write"])

    def call(token: str | None, write: str, port: int | None = None) -> grpc.StatusCode:
        port = port or (settings.recommend_port if write == "feedback" else settings.admin_port)
        channel = authorized_channel(f"127.0.0.1:{port}", token)
        try:
            if write == "feedback":
                recommend_pb2_grpc.RecommendServiceStub(channel).RecordFeedback(feedback, timeout=10)
            else:
                catalog_pb2_grpc.CatalogServiceStub(channel).UpsertMovie(upsert, timeout=10)
            return grpc.StatusCode.OK
        except grpc.RpcError as exc:
            return exc.code()
        finally:
            channel.close()

    assert {w: call(None, w) for w in ("feedback", "catalog")} == dict.fromkeys(
        ("feedback", "catalog"), grpc.StatusCode.UNAUTHENTICATED
    )
    assert call("stk_" + "x" * 43, "feedback") == grpc.StatusCode.UNAUTHENTICATED
    assert call(feedback_only, "catalog") == grpc.StatusCode.PERMISSION_DENIED
    assert call(feedback_only, "feedback") == grpc.StatusCode.OK
    # catalog writes are not served on the public port at all, whatever the key
    assert (
        call(client_token(settings), "catalog", settings.recommend_port) == grpc.StatusCode.PERMISSION_DENIED
    )
    stored = (settings.workdir / "secrets" / "api_keys.json").read_text()
    assert feedback_only not in stored and "sha256" in stored, "keys are stored hashed"
    assert oct((settings.workdir / "secrets" / "api-token").stat().st_mode & 0o777) == "0o600"
    with grpc.insecure_channel(target) as anonymous:  # reads need no key (STARLING_AUTH_READS=0)
        reply = recommend_pb2_grpc.RecommendServiceStub(anonymous).Recommend(_request(1, 5), timeout=10)
        assert len(reply.items) == 5


@pytest.mark.parametrize("payload", [b"\xff\xff\xff\xff\x0f", b"\x0a\x05abc", b"\x08" + b"\xff" * 11])
def test_malformed_bytes_are_invalid_argument_on_every_method(stack, payload: bytes) -> None:
    """Bytes that are not a valid message of the method's type, to every public and internal method."""
    settings, stub = stack
    methods = {
        settings.recommend_port: [
            "/starling.v1.RecommendService/Recommend",
            "/starling.v1.RecommendService/SimilarItems",
            "/starling.v1.RecommendService/RecordFeedback",
            "/starling.v1.CatalogService/GetMovie",
            "/starling.v1.CatalogService/ListUserRatings",
        ],
        settings.admin_port: ["/starling.v1.CatalogService/UpsertMovie"],
        settings.candidates_port: ["/starling.v1.CandidateService/GetCandidates"],
        settings.recall_port: [
            "/starling.v1.RecallService/Recall",
            "/starling.v1.RecallService/SimilarMovies",
        ],
        settings.rerank_port: ["/starling.v1.RerankService/Rerank"],
        settings.ranker_grpc_port: ["/inference.GRPCInferenceService/ModelInfer"],
    }
    token = client_token(settings)
    for port, names in methods.items():
        with authorized_channel(f"127.0.0.1:{port}", token) as channel:
            for name in names:
                raw = channel.unary_unary(name, request_serializer=None, response_deserializer=None)
                with pytest.raises(grpc.RpcError) as refused:
                    raw(payload, timeout=10)
                assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (
                    name,
                    refused.value.details(),
                )
                assert "malformed request" in refused.value.details()
    assert len(stub.Recommend(_request(1, 5), timeout=10).items) == 5, "every service still answers"


def test_health_and_metrics(stack) -> None:
    settings, stub = stack
    stub.Recommend(_request(1, 5), timeout=10)
    for name in ("recommend", "candidates", "recall", "rerank"):
        port = getattr(settings, f"{name}_port")
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, name
        with urllib.request.urlopen(f"http://127.0.0.1:{port + 1000}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        assert "starling_grpc_server_handling_seconds_bucket" in text, name
    with urllib.request.urlopen(
        f"http://127.0.0.1:{settings.recommend_port + 1000}/metrics", timeout=5
    ) as resp:
        text = resp.read().decode()
    assert (
        'grpc_method="Recommend"' in text
        and 'starling_stage_seconds_bucket{le="0.001",stage="ranker"}' in text
    )
    assert "starling_model_info{" in text


def _catalog_stub(settings: Settings, admin: bool = False) -> catalog_pb2_grpc.CatalogServiceStub:
    """CatalogService on the public port (reads), or on the admin port (``admin``: with UpsertMovie)."""
    port = settings.admin_port if admin else settings.recommend_port
    return catalog_pb2_grpc.CatalogServiceStub(
        authorized_channel(f"127.0.0.1:{port}", client_token(settings))
    )


def _rating(user_id: int, movie_id: int, rating: float, **fields) -> recommend_pb2.FeedbackEvent:
    return recommend_pb2.FeedbackEvent(
        user_id=user_id, movie_id=movie_id, kind=recommend_pb2.FEEDBACK_KIND_RATING, rating=rating, **fields
    )


def test_feedback_moves_recommendations_toward_what_was_just_rated_within_a_second(stack) -> None:
    """Twelve 5-star ratings of popular horror films: within a second they leave the answer, and the answer
    moves into their co-like neighbourhood (the movies most liked by the people who liked them). Genre labels
    are not the measure: the films people who love *Alien* and *Psycho* also love are mostly not labelled
    Horror."""
    import numpy as np
    import polars as pl

    from training.artifacts import load_artifact, resolve_artifact

    settings, stub = stack
    user, genre = 5, "Horror"
    before = stub.Recommend(_request(user, 20), timeout=10)
    movies = pl.read_parquet(settings.workdir / "movies.parquet")
    ratings = pl.read_parquet(settings.workdir / "ratings.parquet")
    rated = set(ratings.filter(pl.col("user_id") == user)["movie_id"].to_list())
    popular = ratings.group_by("movie_id").len().sort("len", descending=True)
    horror = (
        popular.join(movies.filter(pl.col("genres").list.contains(genre)), on="movie_id")
        .filter(~pl.col("movie_id").is_in(list(rated)))["movie_id"]
        .head(12)
        .to_list()
    )
    state = load_artifact(resolve_artifact(settings.workdir)).recall_state
    nearest = state.neighbour_ids[np.searchsorted(state.movie_ids, horror), :10]
    neighbourhood = set(nearest[nearest >= 0].tolist())

    def in_neighbourhood(reply: recommend_pb2.RecommendResponse) -> int:
        return sum(item.movie_id in neighbourhood for item in reply.items)

    reply = stub.RecordFeedback(
        recommend_pb2.RecordFeedbackRequest(events=[_rating(user, m, 5.0) for m in horror]), timeout=10
    )
    assert reply.accepted == len(horror) and reply.rejected == 0
    assert all(r.accepted and not r.duplicate for r in reply.results)

    deadline = time.monotonic() + 1.0
    while True:
        after = stub.Recommend(_request(user, 20), timeout=10)
        rated_now = {item.movie_id for item in after.items} & set(horror)
        moved = in_neighbourhood(after) > in_neighbourhood(before)
        if (moved and not rated_now) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert not rated_now, "movies just rated must leave the recommendations"
    assert moved, (in_neighbourhood(before), in_neighbourhood(after))
    assert not after.degraded

    history = _catalog_stub(settings).ListUserRatings(
        catalog_pb2.ListUserRatingsRequest(user_id=user, limit=12)
    )
    assert {r.movie.movie_id for r in history.ratings} == set(horror), "the newest ratings come first"
    assert all(r.rating == 5.0 for r in history.ratings)


def test_bad_feedback_events_are_rejected_one_by_one_and_good_ones_kept(stack) -> None:
    settings, stub = stack
    past = Timestamp(seconds=1_600_000_000)
    future = Timestamp(seconds=int(time.time()) + 86_400)
    events = [
        _rating(6, 1, 4.0, time=past),  # good
        _rating(6, 99_999_999, 4.0),  # unknown movie
        _rating(6, 2, 7.0),  # out of range
        _rating(6, 3, 4.0, time=future),  # far future
        _rating(-1, 1, 4.0),  # bad user id
        recommend_pb2.FeedbackEvent(
            user_id=6, movie_id=2, kind=recommend_pb2.FEEDBACK_KIND_WATCH
        ),  # good, implicit
        _rating(6, 1, 4.0, time=past),  # duplicate of the first
        _rating(6, 4, 4.0, time=Timestamp(seconds=2**63 - 1)),  # beyond year 9999
        _rating(6, 4, 4.0, time=Timestamp(seconds=1_600_000_000, nanos=-1)),  # nanos out of range
        _rating(6, 4, 4.0, time=Timestamp(seconds=1_600_000_000, nanos=1_000_000_000)),
        _rating(6, 4, 4.0, time=Timestamp(seconds=-(2**63))),
        _rating(6, 4, 4.0, time=Timestamp(seconds=0)),  # 1970-01-01: an unset clock
    ]
    reply = stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=events), timeout=10)
    accepted = [r.accepted for r in reply.results]
    assert accepted == [True, False, False, False, False, True, True] + [False] * 5
    reasons = [r.reason for r in reply.results]
    assert "not in the catalog" in reasons[1] and "outside 0.5..5" in reasons[2]
    assert "in the future" in reasons[3] and "user_id must be >= 0" in reasons[4]
    assert "in the future" in reasons[7] and "nanos must be 0..999999999" in reasons[8] == reasons[9]
    assert "before 1995-01-01" in reasons[10] and "before 1995-01-01" in reasons[11]
    assert [r.duplicate for r in reply.results] == [False] * 6 + [True] + [False] * 5
    assert (reply.accepted, reply.rejected) == (3, 9)

    import polars as pl

    from starling.events import RATING_STREAM, read_all

    logged = read_all(settings.workdir, RATING_STREAM).filter(pl.col("user_id") == 6)
    assert sorted(logged["kind"].to_list()) == ["rating", "watch"], (
        "accepted events are in the durable log, once"
    )
    again = stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=events[:1]), timeout=10)
    assert again.results[0].duplicate and again.results[0].accepted

    with pytest.raises(grpc.RpcError) as err:
        stub.RecordFeedback(recommend_pb2.RecordFeedbackRequest(events=[events[0]] * 1001), timeout=10)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "at most 1000" in err.value.details()


def test_feedback_names_the_list_it_responds_to(stack) -> None:
    import polars as pl

    from starling.events import RATING_STREAM, read_all

    settings, stub = stack
    served = stub.Recommend(recommend_pb2.RecommendRequest(user_id=9, k=3), timeout=10)
    named = recommend_pb2.FeedbackEvent(
        user_id=9,
        movie_id=served.items[0].movie_id,
        kind=recommend_pb2.FEEDBACK_KIND_CLICK,
        request_id=served.request_id,
    )
    too_long = recommend_pb2.FeedbackEvent(
        user_id=9, movie_id=1, kind=recommend_pb2.FEEDBACK_KIND_CLICK, request_id="a" * 65
    )
    odd = recommend_pb2.FeedbackEvent(
        user_id=9, movie_id=1, kind=recommend_pb2.FEEDBACK_KIND_CLICK, request_id="a b"
    )
    reply = stub.RecordFeedback(
        recommend_pb2.RecordFeedbackRequest(events=[named, too_long, odd]), timeout=10
    )
    assert [r.accepted for r in reply.results] == [True, False, False]
    assert all("request_id must be at most 64 letters" in r.reason for r in reply.results[1:])
    logged = read_all(settings.workdir, RATING_STREAM).filter(
        pl.col("user_id") == 9, pl.col("kind") == "click"
    )
    assert logged["request_id"].to_list() == [served.request_id]


def test_an_event_the_online_store_missed_is_repaired_without_further_input(stack) -> None:
    """The state a crash between the log append and the online push leaves: an event in the durable log whose
    user has no online row. Recommend replays the log (at start-up, and as it follows the log) and pushes."""
    import polars as pl

    from starling import events
    from starling.featurestore import read_online_features

    settings, _ = stack
    user = 888_888
    assert read_online_features(settings.workdir, [user], [])["users"][0].get("user_rating_count") is None
    logged = pl.DataFrame(
        {
            "user_id": [user, user],
            "movie_id": [1, 2],
            "rating": [4.5, 3.0],
            "event_timestamp": [dt.datetime(2024, 5, 1, tzinfo=dt.UTC)] * 2,
            "kind": ["rating", "rating"],
        },
        schema_overrides=events.SCHEMAS[events.RATING_STREAM],
    )
    events.append(settings.workdir, events.RATING_STREAM, logged)  # durable, never pushed
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        row = read_online_features(settings.workdir, [user], [])["users"][0]
        if row.get("user_rating_count") == 2:
            break
        time.sleep(0.2)
    assert row.get("user_rating_count") == 2, row


def test_a_late_re_rating_with_an_older_time_does_not_win(stack) -> None:
    settings, stub = stack
    user, movie = 9, 7
    newer, older = Timestamp(seconds=1_700_000_000), Timestamp(seconds=1_690_000_000)
    for rating, when in ((5.0, newer), (0.5, older)):  # the older event arrives last
        reply = stub.RecordFeedback(
            recommend_pb2.RecordFeedbackRequest(events=[_rating(user, movie, rating, time=when)]), timeout=10
        )
        assert reply.accepted == 1, reply
    history = _catalog_stub(settings).ListUserRatings(
        catalog_pb2.ListUserRatingsRequest(user_id=user, limit=500)
    )
    assert {r.movie.movie_id: r.rating for r in history.ratings}[movie] == 5.0, (
        "latest by event time, as rebuilt"
    )


def test_title_search_is_case_and_accent_insensitive_prefix_first_and_paged(stack) -> None:
    settings, _ = stack
    catalog = _catalog_stub(settings)
    search = catalog_pb2.SearchMoviesRequest
    leon = catalog.SearchMovies(search(query="LEON", limit=10), timeout=10)
    assert any(m.title.startswith("Léon: The Professional") for m in leon.movies)
    toy = catalog.SearchMovies(search(query="toy story", limit=2), timeout=10)
    assert toy.total >= 3 and toy.movies[0].title.startswith("Toy Story")
    assert all(m.title.lower().startswith("toy story") for m in toy.movies), "prefix matches first"
    rest = catalog.SearchMovies(search(query="toy story", limit=2, offset=2), timeout=10)
    assert not {m.movie_id for m in rest.movies} & {m.movie_id for m in toy.movies}
    assert catalog.SearchMovies(search(query="zzzzqqq"), timeout=10).total == 0
    for bad, message in [
        (search(query=""), "query must be 1..100 characters"),
        (search(query="x" * 101), "query must be 1..100 characters"),
        (search(query="a\u202eb"), "U+202E"),
        (search(query="a", limit=101), "limit must be 1..100"),
        (search(query="a", offset=-1), "offset must be >= 0"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            catalog.SearchMovies(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()


def test_catalog_lookups(stack) -> None:
    settings, _ = stack
    catalog = _catalog_stub(settings)
    movie = catalog.GetMovie(catalog_pb2.GetMovieRequest(movie_id=1), timeout=10)
    assert movie.title == "Toy Story" and movie.release_year == 1995 and "Animation" in movie.genres
    assert movie.rating_count > 100 and 3.5 < movie.avg_rating < 4.5
    with pytest.raises(grpc.RpcError) as err:
        catalog.GetMovie(catalog_pb2.GetMovieRequest(movie_id=424242424), timeout=10)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND

    first = catalog.ListUserRatings(catalog_pb2.ListUserRatingsRequest(user_id=1, limit=5), timeout=10)
    second = catalog.ListUserRatings(
        catalog_pb2.ListUserRatingsRequest(user_id=1, limit=5, offset=5), timeout=10
    )
    assert first.total == second.total > 10 and len(first.ratings) == len(second.ratings) == 5
    assert not {r.movie.movie_id for r in first.ratings} & {r.movie.movie_id for r in second.ratings}
    assert first.ratings[-1].time_unix_ms >= second.ratings[0].time_unix_ms, "most recent first, paged"
    one = catalog.ListUserRatings(
        catalog_pb2.ListUserRatingsRequest(user_id=1, limit=5, movie_id=second.ratings[2].movie.movie_id),
        timeout=10,
    )
    assert one.total == 1 and one.ratings[0] == second.ratings[2]
    popular = catalog.ListPopularMovies(catalog_pb2.ListPopularMoviesRequest(limit=3), timeout=10)
    assert [m.rating_count for m in popular.movies] == sorted(
        (m.rating_count for m in popular.movies), reverse=True
    )
    assert popular.genres[0] == "Drama" and popular.total > 9000
    comedies = catalog.ListPopularMovies(
        catalog_pb2.ListPopularMoviesRequest(genre="Comedy", limit=3, offset=1), timeout=10
    )
    assert all("Comedy" in m.genres for m in comedies.movies) and comedies.total < popular.total
    for bad, message in [
        (catalog_pb2.ListPopularMoviesRequest(genre="Space Opera"), "genre 'Space Opera' is unknown"),
        (catalog_pb2.ListPopularMoviesRequest(limit=101), "limit must be 1..100"),
        (catalog_pb2.ListPopularMoviesRequest(offset=-1), "offset must be >= 0"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            catalog.ListPopularMovies(bad, timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    with pytest.raises(grpc.RpcError) as err:
        catalog.ListUserRatings(catalog_pb2.ListUserRatingsRequest(user_id=1, limit=5, offset=-2), timeout=10)
    assert (
        err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "offset must be >= 0" in err.value.details()
    )


def test_new_user_starts_cold_then_the_personal_channels_take_over(stack) -> None:
    settings, stub = stack
    from starling.v1 import recall_pb2, recall_pb2_grpc

    user = 20_000_001
    cold = stub.Recommend(_request(user, 10, genres=["Animation"]), timeout=10)
    assert {item.channel for item in cold.items} == {"cold_start"}
    assert all("Animation" in item.genres for item in cold.items), "shaped by the context's genres"
    diverse = stub.Recommend(_request(user, 20), timeout=10)
    assert len({g for item in diverse.items for g in item.genres}) >= 6, "popular and diversified"

    liked = [1, 2355, 3114]  # Toy Story, A Bug's Life, Toy Story 2
    reply = stub.RecordFeedback(
        recommend_pb2.RecordFeedbackRequest(events=[_rating(user, m, 5.0) for m in liked]), timeout=10
    )
    assert reply.accepted == 3
    recall = recall_pb2_grpc.RecallServiceStub(grpc.insecure_channel(f"127.0.0.1:{settings.recall_port}"))
    deadline = time.monotonic() + 1.0
    while True:
        recalled = recall.Recall(  # recall first: once it has the likes, the next Recommend has them too
            recall_pb2.RecallRequest(user_id=user, n=500, excluded_movie_ids=liked), timeout=10
        )
        warm = stub.Recommend(_request(user, 20), timeout=10)
        channels = {item.channel for item in warm.items}
        personal = {c for c in recalled.channels} & {"ease", "item2item", "embedding"}
        if (
            personal == {"ease", "item2item", "embedding"} and "cold_start" not in channels
        ) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert personal == {"ease", "item2item", "embedding"}, set(recalled.channels)
    assert recalled.user_has_embedding, "a vector folded in from the three likes"
    assert "cold_start" not in channels and not set(liked) & {item.movie_id for item in warm.items}
    assert [item.movie_id for item in warm.items] != [item.movie_id for item in diverse.items], "now ranked"
    because = {item.reason.because_movie_id for item in warm.items} - {0}
    assert because and because <= set(liked), "explained by the three likes"


def test_new_movie_is_served_at_once(stack) -> None:
    """UpsertMovie: the catalog, the online features, the candidate pool, recall (with a cold-start vector
    in Milvus), the ranker and rerank all know the new movie right away."""
    settings, stub = stack
    import polars as pl

    from starling.featurestore import read_online_features
    from starling.v1 import candidates_pb2, candidates_pb2_grpc, recall_pb2, recall_pb2_grpc

    catalog = _catalog_stub(settings, admin=True)
    movie = catalog_pb2.Movie(title="Starling Night", release_year=2026, genres=["Horror", "Thriller"])
    reply = catalog.UpsertMovie(catalog_pb2.UpsertMovieRequest(movie=movie), timeout=10)
    assert reply.created and reply.movie.title == "Starling Night" and reply.movie.rating_count == 0
    new_id = reply.movie.movie_id
    movies = pl.read_parquet(settings.workdir / "movies.parquet")
    assert new_id == movies["movie_id"].max() + 1
    assert catalog.GetMovie(catalog_pb2.GetMovieRequest(movie_id=new_id), timeout=10).genres == [
        "Horror",
        "Thriller",
    ]
    online = read_online_features(settings.workdir, user_ids=[], movie_ids=[new_id])["movies"][0]
    assert online["found"] and online["movie_genre1"] == "Horror" and online["movie_release_year"] == 2026

    others = movies.filter(pl.col("genres").list.contains("Horror"))["movie_id"].to_list()
    deadline = time.monotonic() + 2.0
    while True:
        pool = candidates_pb2_grpc.CandidateServiceStub(
            grpc.insecure_channel(f"127.0.0.1:{settings.candidates_port}")
        ).GetCandidates(
            candidates_pb2.GetCandidatesRequest(
                user_id=1, context=common_pb2.RecommendContext(genres=["Horror"], exclude_movie_ids=others)
            ),
            timeout=10,
        )
        recall = recall_pb2_grpc.RecallServiceStub(grpc.insecure_channel(f"127.0.0.1:{settings.recall_port}"))
        similar = recall.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=new_id, k=5), timeout=10)
        if (pool.pool_size == 1 and similar.found and len(similar.movie_ids)) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    import numpy as np

    from starling.content import DIMENSIONS
    from starling.events import MOVIE_STREAM, read_all

    event = read_all(settings.workdir, MOVIE_STREAM).filter(pl.col("movie_id") == new_id)
    vector = np.asarray(event["content"][0].to_list(), dtype=np.float32)
    assert vector.shape == (DIMENSIONS,) and abs(np.linalg.norm(vector) - 1) < 1e-4, (
        "UpsertMovie wrote the text vector into the catalog event (recall places the movie by it)"
    )
    assert pool.pool_size == 1, "candidates: the new movie is the only Horror movie left"
    assert similar.found and len(similar.movie_ids) == 5, "recall: the new movie has a vector and neighbours"
    assert new_id not in similar.movie_ids

    response = stub.Recommend(_request(1, 5, genres=["Horror"], exclude_movie_ids=others), timeout=10)
    assert [item.movie_id for item in response.items] == [new_id] and not response.degraded, response
    assert response.items[0].title == "Starling Night" and response.items[0].score > 0

    update = catalog.UpsertMovie(
        catalog_pb2.UpsertMovieRequest(
            movie=catalog_pb2.Movie(
                movie_id=new_id, title="Starling Night (Director's Cut)", release_year=2026, genres=["Horror"]
            )
        )
    )
    assert not update.created and update.movie.title.endswith("(Director's Cut)")
    for bad, message in [
        (catalog_pb2.Movie(title="X", genres=["Space Opera"]), "movie.genres"),
        (catalog_pb2.Movie(title="  ", genres=["Horror"]), "movie.title"),
        (catalog_pb2.Movie(title="X", release_year=1700), "release_year 1700"),
        (catalog_pb2.Movie(movie_id=-4, title="X"), "movie_id must be >= 0"),
        (catalog_pb2.Movie(movie_id=2**63 - 1, title="X"), "movie_id must be at most 2147483647"),
        (catalog_pb2.Movie(title="Evil\u202egnp.exe"), "U+202E (RIGHT-TO-LEFT OVERRIDE) at position 4"),
        (catalog_pb2.Movie(title="Nul\x00byte"), "U+0000"),
        (catalog_pb2.Movie(title="Line\nbreak"), "U+000A"),
    ]:
        with pytest.raises(grpc.RpcError) as err:
            catalog.UpsertMovie(catalog_pb2.UpsertMovieRequest(movie=bad), timeout=10)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
    allocated = catalog.UpsertMovie(catalog_pb2.UpsertMovieRequest(movie=catalog_pb2.Movie(title="Next")))
    assert allocated.created and allocated.movie.movie_id == new_id + 1, (
        "a refused id does not move allocation"
    )


def test_bench_serve_reports_server_cpu_per_request_and_compares(stack) -> None:
    from services.bench import bench_serve, compare_runs

    settings, _ = stack
    report = bench_serve(
        settings.workdir, 1.5, [1, 2], target=f"127.0.0.1:{settings.recommend_port}", baseline=None
    )
    for run in report["runs"]:
        cpu = run["server_cpu_ms_per_request"]
        assert run["requests"] > 0 and not run["errors"], run
        assert {"recommend", "candidates", "recall", "rerank", "ranker"} <= set(cpu), cpu
        assert cpu["recommend"] > 0 and cpu["recall"] > 0 and cpu["ranker"] > 0, cpu
        assert abs(cpu["total"] - sum(v for k, v in cpu.items() if k != "total")) < 0.01
    faster = {
        "machine": "then",
        "runs": [{**run, "p99_ms": run["p99_ms"] / 2} for run in report["runs"]],
    }
    compared = compare_runs(report, faster)
    assert compared["baseline_machine"] == "then" and [lv["concurrency"] for lv in compared["levels"]] == [
        1,
        2,
    ]
    level = compared["levels"][0]
    assert level["p99_ms"]["ratio"] == pytest.approx(2.0, rel=1e-2) and level["p50_ms"]["ratio"] == 1.0
    assert level["server_cpu_ms_per_request"]["ratio"] == 1.0
    assert compare_runs(report, {"runs": [{"concurrency": 64}]})["levels"] == [], "no level in common"


def test_bench_floor_drives_the_same_hops_with_no_work_beside_the_real_stack(stack) -> None:
    from services.bench_floor import bench_floor

    settings, _ = stack
    report = bench_floor(settings.workdir, [2], rounds=1, burst_s=1.0, settings=settings)
    sizes = report["message_bytes"]
    # the captured messages are the real ones: 500 candidates, each with every candidate feature
    assert sizes["recall_response"] > settings.recall_size * 30 * 4 and sizes["rerank_response"] > 0, sizes
    level = report["levels"][0]
    floor, real = level["floor"], level["real"]
    assert set(floor["server_cpu_ms_per_request"]) == {"recall", "ranker", "rerank", "recommend", "total"}
    assert all(ms > 0 for ms in floor["server_cpu_ms_per_request"].values()), floor
    assert {"recall", "ranker", "rerank", "recommend"} <= set(real["server_cpu_ms_per_request"]), real
    for figures in (floor, real):
        assert figures["requests_per_second"] > 0 and 0 < figures["p50_ms"] <= figures["p99_ms"], figures
    # the real stack ranks, recalls and re-ranks: more CPU per request than passing the messages along
    assert level["real_over_floor"]["server_cpu_ms_per_request"] > 1.0, level


def test_bench_serve_profile_records_flamegraphs_and_names_the_heaviest_functions(stack, tmp_path) -> None:
    from services.bench import bench_serve

    settings, _ = stack
    report = bench_serve(
        settings.workdir, 2.0, [2], target=f"127.0.0.1:{settings.recommend_port}", profile_dir=tmp_path
    )
    profile = report["runs"][0]["profile"]
    assert {"recommend", "candidates", "recall", "rerank", "ranker"} <= set(profile), profile
    for service, found in profile.items():
        assert "error" not in found, (service, found)
        svg = Path(found["flamegraph"])
        assert svg.parent == tmp_path and svg.name == f"{service}-c2.svg", svg
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()[:2000]
    recommend = profile["recommend"]
    assert recommend["samples"] > 0 and 0 <= recommend["idle_share"] < 1, recommend
    assert recommend["top_self"] and recommend["top_project"], recommend
    shares = [entry["share"] for entry in recommend["top_self"]]
    # each share is rounded to 0.001: their sum may pass 1 by a few thousandths
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 1.005, shares
    assert all(e["function"].endswith(".py)") for e in recommend["top_project"]), recommend["top_project"]


def test_profile_summary_of_collapsed_stacks() -> None:
    from services.profiling import summarize

    lines = [
        "process 1:main;main (services/x/server.py:1);serve (services/x/logic.py:10);dot (numpy/core.py:5) 6",
        "process 1:main;main (services/x/server.py:1);serve (services/x/logic.py:10) 3",
        "process 1:main;main (services/x/server.py:1);run (asyncio/base_events.py:3);EpollSelector.select "
        "(selectors.py:468) 10",
        "main (services/x/server.py:1);encode (services/x/encoding.py:9) 1",
        "not a stack line",
    ]
    summary = summarize(lines, top=2)
    assert summary["samples"] == 20 and summary["idle_share"] == 0.5
    assert summary["top_self"] == [
        {"function": "dot (core.py)", "share": 0.6},
        {"function": "serve (logic.py)", "share": 0.3},
    ]
    assert summary["top_project"] == [
        {"function": "serve (logic.py)", "share": 0.9},
        {"function": "encode (encoding.py)", "share": 0.1},
    ]


def test_a_failed_recorder_is_named_by_py_spys_message_and_the_stacks_still_count(tmp_path) -> None:
    """py-spy prints its error, then (with RUST_BACKTRACE) a numbered backtrace: the report carries the error.
    A flamegraph recorder that fails beside a raw one that worked still leaves the summary."""
    import subprocess
    import sys

    from services.profiling import Recording, finish_recording

    def recorder(stderr: str, code: int) -> subprocess.Popen:
        script = f"import sys; sys.stderr.write({stderr!r}); sys.exit({code})"
        return subprocess.Popen([sys.executable, "-c", script], stderr=subprocess.PIPE, text=True)

    failure = "py-spy> Sampling process 200 times a second.\nError: No child process (os error 10)\n   0: py_spy::main\n   8: main\n"
    raw = tmp_path / "svc-c1.txt"
    raw.write_text("main (services/x/server.py:1);serve (services/x/logic.py:10) 4\n")
    found = finish_recording(
        [
            Recording(
                "both", tmp_path / "a.svg", tmp_path / "a.txt", (recorder(failure, 1), recorder(failure, 1))
            ),
            Recording("svg-only", tmp_path / "svc-c1.svg", raw, (recorder(failure, 1), recorder("", 0))),
        ],
        timeout_s=30,
    )
    assert found["both"] == {
        "error": "Error: No child process (os error 10); Error: No child process (os error 10)"
    }
    assert found["svg-only"]["flamegraph_error"] == "Error: No child process (os error 10)"
    assert found["svg-only"]["samples"] == 4 and "flamegraph" not in found["svg-only"]


def test_recall_tells_a_known_user_and_the_pool_is_asked_only_when_it_does_not() -> None:
    """Recommend's cold-path decision: recall's ``known_user``; a recall from before the field leaves it unset,
    and CandidateService's pool is asked then (once, shared by an interleaving request's arms)."""
    import asyncio

    import numpy as np

    from services.recommend.server import OnDemand, known_user_of
    from starling.v1 import recall_pb2

    asked = []

    async def pool() -> tuple[np.ndarray, bool]:
        asked.append(1)
        return np.empty(0, np.int64), True

    async def decide(recalled: recall_pb2.RecallResponse) -> tuple[bool, ...]:
        on_demand = OnDemand(pool)
        return tuple([await known_user_of(recalled, on_demand) for _ in range(2)])

    assert asyncio.run(decide(recall_pb2.RecallResponse(known_user=False))) == (False, False)
    assert asyncio.run(decide(recall_pb2.RecallResponse(known_user=True))) == (True, True)
    assert asked == [], "recall said: the pool is not asked"
    assert asyncio.run(decide(recall_pb2.RecallResponse())) == (True, True)
    assert asked == [1], "unset: asked once for both arms"


def _kill(workdir: Path, name: str) -> None:
    """SIGKILL one service (no drain: as if its pod died) and wait until it is gone."""
    process = next(p for p in read_state(workdir) if p.name == name)
    os.kill(process.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            os.kill(process.pid, 0)
            os.waitpid(process.pid, os.WNOHANG)
        except (ProcessLookupError, ChildProcessError):
            return
        time.sleep(0.1)


def test_fallbacks_as_stages_die_one_by_one(stack) -> None:
    """Runs last in this module: it kills services (the fixture's `down` cleans up)."""
    import polars as pl

    settings, stub = stack
    workdir = settings.workdir
    # While recall answers, CandidateService is not asked (recall leaves out rated movies and tells a known user
    # from a new one); the stages recommend called are in its trailing metadata.
    response, call = stub.Recommend.with_call(_request(1, 10), timeout=10)
    timings = dict(call.trailing_metadata())["starling-stage-ms"]
    assert {entry.split("=")[0] for entry in timings.split(",")} == {"recall", "ranker", "rerank"}, timings

    _kill(workdir, "ranker")
    response = stub.Recommend(_request(1, 10), timeout=10)
    assert len(response.items) == 10
    assert [d.stage for d in response.degraded] == ["ranker"], response.degraded
    assert "recall order" in response.degraded[0].reason

    # While the ranker is down, the log does not grow with the traffic: one line per failure kind per 10 s.
    log = workdir / "run" / "logs" / "recommend.log"
    size, started = log.stat().st_size, time.monotonic()
    for user in range(1, 201):
        assert stub.Recommend(_request(user, 10), timeout=10).degraded
    rate = (log.stat().st_size - size) / max(time.monotonic() - started, 1.0)
    assert rate < 1024, f"recommend logged {rate:.0f} B/s over 200 degraded requests"

    _kill(workdir, "recall")
    response = stub.Recommend(_request(1, 10), timeout=10)
    assert len(response.items) == 10
    assert [d.stage for d in response.degraded] == ["recall", "ranker"], response.degraded
    rated = set(pl.read_parquet(workdir / "ratings.parquet").filter(pl.col("user_id") == 1)["movie_id"])
    assert not rated & {item.movie_id for item in response.items}, "CandidateService's pool leaves them out"
    assert {item.channel for item in response.items} == {"popular"}
    assert {item.reason.text for item in response.items} == {"Popular"}, "the most rated, not 'now'"
    similar = stub.SimilarItems(recommend_pb2.SimilarItemsRequest(movie_id=1, k=3), timeout=10)
    assert len(similar.items) == 3

    _kill(workdir, "rerank")
    _kill(workdir, "candidates")
    response = stub.Recommend(_request(1, 10, exclude_movie_ids=[318]), timeout=10)
    assert len(response.items) == 10 and 318 not in [item.movie_id for item in response.items]
    assert [d.stage for d in response.degraded] == ["candidates", "recall", "ranker", "rerank"], (
        response.degraded
    )
    scores = [item.score for item in response.items]
    assert scores == sorted(scores, reverse=True), "without rerank: top k by score"


def test_bench_history_serves_a_heavy_user_nothing_they_rated(ml_small_trained: Path) -> None:
    """`starling bench history`: a new user rates thousands of movies through RecordFeedback on a private copy;
    their answers never hold a rated movie and both kinds of request are measured."""
    import json

    import polars as pl
    from click.testing import CliRunner

    from starling.cli import cli
    from starling.events import RATING_STREAM, read_all

    before = pl.read_parquet(ml_small_trained / "ratings.parquet").height
    result = CliRunner().invoke(
        cli,
        ["bench", "history", "--workdir", str(ml_small_trained), "--ratings", "3000", "--duration", "1"],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["benchmark"] == "history" and report["heavy_user_ratings"] == 3000
    assert report["rated_movies_served_to_heavy_user"] == 0
    for kind in ("light", "heavy"):
        assert report[kind]["requests"] > 0 and 0 < report[kind]["p50_ms"] <= report[kind]["p99_ms"]
        assert {"recall", "ranker"} <= set(report[kind]["stages"]), report[kind]["stages"]
    assert report["heavy_over_light"]["p99_ms"] > 0
    assert pl.read_parquet(ml_small_trained / "ratings.parquet").height == before, "it ran on a copy"
    events = read_all(ml_small_trained, RATING_STREAM)
    assert events.is_empty() or report["heavy_user_id"] not in events["user_id"].to_list(), "it ran on a copy"
