"""Re-ranking logic (pure functions) and the RerankService over a real in-process gRPC server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest

from services.common.catalog import Catalog
from services.common.server import start_service
from services.rerank.logic import (
    DiversityRule,
    FreshnessRule,
    PopularityRule,
    RerankRules,
    adjusted_scores,
    genre_cap_order,
    load_rules,
    mmr_order,
)
from services.rerank.server import RerankServicer
from starling.errors import StarlingError
from starling.v1 import rerank_pb2, rerank_pb2_grpc

NO_BONUS = RerankRules(freshness=FreshnessRule(weight=0.0), popularity=PopularityRule(weight=0.0))


def test_genre_cap_moves_overflow_behind_in_score_order() -> None:
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.5], dtype=np.float32)
    ids = np.array([10, 11, 12, 13, 14])
    genre = np.array([0, 0, 0, 1, -1])  # three of genre 0, cap 2 -> the third (id 12) drops behind
    order = genre_cap_order(scores, ids, genre, cap=2)
    assert ids[order].tolist() == [10, 11, 13, 14, 12]


def test_ties_break_by_movie_id_and_result_is_deterministic() -> None:
    scores = np.array([0.5, 0.5, 0.5], dtype=np.float32)
    ids = np.array([30, 10, 20])
    order = genre_cap_order(scores, ids, np.array([-1, -1, -1]), cap=1)
    assert ids[order].tolist() == [10, 20, 30]
    assert np.array_equal(order, genre_cap_order(scores, ids, np.array([-1, -1, -1]), cap=1))


def test_mmr_trades_score_for_novelty() -> None:
    scores = np.array([1.0, 0.95, 0.6])
    ids = np.array([1, 2, 3])
    vectors = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # 1 and 2 identical, 3 different
    assert ids[mmr_order(scores, ids, vectors, k=2, lam=1.0)][:2].tolist() == [1, 2]
    assert ids[mmr_order(scores, ids, vectors, k=2, lam=0.5)][:2].tolist() == [1, 3]


def test_freshness_and_popularity_bonuses() -> None:
    rules = RerankRules(
        freshness=FreshnessRule(weight=0.1, half_life_years=10), popularity=PopularityRule(0.0)
    )
    out = adjusted_scores(np.zeros(3), np.array([2020, 2010, 0]), np.zeros(3), 1, 2020, rules)
    assert out.tolist() == pytest.approx([0.1, 0.05, 0.0])
    rules = RerankRules(freshness=FreshnessRule(weight=0.0), popularity=PopularityRule(weight=0.2))
    out = adjusted_scores(np.zeros(2), np.zeros(2, dtype=np.int32), np.array([99, 0]), 99, 2020, rules)
    assert out.tolist() == pytest.approx([0.2, 0.0])


def test_rules_file_errors_name_the_file_and_the_problem(tmp_path: Path) -> None:
    assert load_rules().diversity.method in ("genre_cap", "mmr", "none")
    bad = tmp_path / "rules.yaml"
    for text, expected in [
        ("diversity: {method: shuffle}", "diversity.method"),
        ("diversity: {max_per_genre: 0}", "max_per_genre"),
        ("novelty: {}", "unknown section"),
        ("diversity: {colour: red}", "colour"),
        ("diversity: [", "cannot read"),
    ]:
        bad.write_text(text)
        with pytest.raises(StarlingError, match=expected) as err:
            load_rules(bad)
        assert str(bad) in str(err.value)


def _catalog() -> Catalog:
    movies = pl.DataFrame(
        {
            "movie_id": [1, 2, 3, 4],
            "title": ["A", "B", "C", "D"],
            "release_year": [1990, 2000, 2010, None],
            "genres": [["Drama"], ["Drama"], ["Drama"], ["Comedy"]],
        },
        schema_overrides={"release_year": pl.Int32},
    )
    ratings = pl.DataFrame({"movie_id": [1, 1, 2]})
    return Catalog.from_frames(movies, ratings)


def test_rerank_service_round_trip_and_bad_input() -> None:
    rules = RerankRules(
        diversity=DiversityRule(method="genre_cap", max_per_genre=2),
        freshness=FreshnessRule(0.0),
        popularity=PopularityRule(0.0),
    )

    async def register(server: grpc.aio.Server) -> list[str]:
        rerank_pb2_grpc.add_RerankServiceServicer_to_server(RerankServicer(_catalog(), rules), server)
        return ["starling.v1.RerankService"]

    async def scenario() -> None:
        running = await start_service("rerank-test", register, port=0, metrics_port=0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            stub = rerank_pb2_grpc.RerankServiceStub(channel)
            request = rerank_pb2.RerankRequest(
                user_id=1,
                k=3,
                movie_ids=[1, 2, 3, 4, 99],
                scores=[0.9, 0.8, 0.7, 0.1, 0.05],
                channels=["a", "b", "c", "d", "e"],
            )
            reply = await stub.Rerank(request)
            assert list(reply.movie_ids) == [1, 2, 4]  # third Drama capped; unknown 99 has no genre
            assert list(reply.channels) == ["a", "b", "d"]
            assert (await stub.Rerank(request)).movie_ids == reply.movie_ids

            for bad, message in [
                (rerank_pb2.RerankRequest(k=0, movie_ids=[1], scores=[0.1], channels=["a"]), "k must be"),
                (
                    rerank_pb2.RerankRequest(k=1, movie_ids=[1, 2], scores=[0.1], channels=["a"]),
                    "equal lengths",
                ),
                (rerank_pb2.RerankRequest(k=1, movie_ids=[-1], scores=[0.1], channels=["a"]), ">= 0"),
                (
                    rerank_pb2.RerankRequest(k=1, movie_ids=[1], scores=[float("nan")], channels=["a"]),
                    "finite",
                ),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await stub.Rerank(bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert message in err.value.details()
        await running.server.stop(0)

    asyncio.run(scenario())


def test_taste_bonus_follows_the_users_top_genres() -> None:
    from services.rerank.logic import taste_bonus

    genre_vectors = np.array([[1, 0, 0], [0, 1, 0], [0, 1, 1], [0, 0, 0]], dtype=np.float32)
    bonus = taste_bonus(genre_vectors, np.array([1, 0]), weight=0.1)  # top genre: column 1, then column 0
    assert bonus.tolist() == pytest.approx([0.05, 0.1, 0.1, 0.0])  # second genre: half
    assert taste_bonus(genre_vectors, np.array([], dtype=np.int64), weight=0.1).tolist() == [0.0] * 4
