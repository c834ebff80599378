"""Candidates and recall: pure logic on tiny catalogs, and RecallService against a real milvus-lite file."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import grpc
import numpy as np
import polars as pl
import pytest

from services.candidates.logic import eligible_pool
from services.candidates.server import CandidateServicer
from services.common.catalog import Catalog
from services.common.errors import InvalidArgument
from services.common.history import UserHistory
from services.common.server import start_service
from services.recall.logic import ChannelResult, merge_channels
from services.recall.server import RecallServicer
from services.recall.vector_index import VectorIndex
from starling.v1 import candidates_pb2, candidates_pb2_grpc, common_pb2, recall_pb2, recall_pb2_grpc

GENRES = ["Action", "Comedy", "Drama"]


def _catalog_and_history() -> tuple[Catalog, UserHistory]:
    """Movies 1..12: genre = (id % 3); popularity = id (12 most popular). User 7 liked 1, 4 (Comedy), rated 2."""
    ids = np.arange(1, 13)
    movies = pl.DataFrame(
        {
            "movie_id": ids,
            "title": [f"M{i}" for i in ids],
            "release_year": [2000] * 12,
            "genres": [[GENRES[i % 3]] for i in ids],
        },
        schema_overrides={"release_year": pl.Int32},
    )
    popularity = pl.DataFrame({"movie_id": np.repeat(ids, ids)})
    t0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
    ratings = pl.DataFrame(
        {
            "user_id": [7, 7, 7],
            "movie_id": [1, 4, 2],
            "rating": [5.0, 4.0, 1.0],
            "event_timestamp": [t0, t0 + dt.timedelta(days=1), t0 + dt.timedelta(days=2)],
        }
    )
    return Catalog.from_frames(movies, popularity), UserHistory.from_frame(ratings, 3.5)


def test_eligible_pool_excludes_rated_and_context_and_filters_genres() -> None:
    catalog, history = _catalog_and_history()
    pool = eligible_pool(catalog, history.rated(7), np.array([5, 999]), ())
    assert pool.excluded_movie_ids.tolist() == [1, 2, 4, 5]  # 999 is not in the catalog
    assert pool.pool_size == 8
    pool = eligible_pool(catalog, history.rated(7), np.array([], dtype=np.int64), ("Comedy",))
    assert catalog.movie_ids[pool.mask(catalog)].tolist() == [7, 10]  # Comedy: 1,4,7,10 minus rated 1,4
    with pytest.raises(InvalidArgument, match="unknown genre"):
        eligible_pool(catalog, history.rated(7), np.array([], dtype=np.int64), ("Western",))


def test_history_liked_is_most_recent_first() -> None:
    _, history = _catalog_and_history()
    assert history.liked(7).tolist() == [4, 1]
    assert history.rated(7).tolist() == [1, 4, 2]
    assert history.liked(12345).size == 0 and not history.knows(12345)


def test_merge_channels_quotas_dedupe_refill_and_interleave() -> None:
    a = ChannelResult("embedding", np.array([1, 2, 3, 4]), np.ones(4, dtype=np.float32))
    b = ChannelResult("popular", np.array([2, 5, 6]), np.full(3, 9.0, dtype=np.float32))
    rows, _, names = merge_channels([b, a], {"embedding": 2, "popular": 2}, n=5)
    # pass 1: embedding 1,2; popular 5,6 (2 was taken); pass 2 refills with embedding's 3.
    assert sorted(rows.tolist()) == [1, 2, 3, 5, 6]
    assert rows.tolist()[:2] == [1, 5], "channels interleave by rank"
    assert dict(zip(rows.tolist(), names.tolist(), strict=True))[2] == "embedding"
    empty = merge_channels([], {}, n=3)
    assert len(empty[0]) == 0


def test_recall_and_candidate_services_with_milvus_lite(tmp_path: Path) -> None:
    catalog, history = _catalog_and_history()
    # Two clusters in embedding space: Comedy movies (id % 3 == 1) point one way, the rest the other.
    vectors = np.where((catalog.movie_ids % 3 == 1)[:, None], [1.0, 0.0], [0.0, 1.0]).astype(np.float32)
    vectors += 0.01 * catalog.movie_ids[:, None].astype(np.float32)
    index = VectorIndex(str(tmp_path / "milvus.db"), "item2vec", "v1")
    index.sync(catalog.movie_ids, vectors)

    async def register(server: grpc.aio.Server) -> list[str]:
        recall_pb2_grpc.add_RecallServiceServicer_to_server(
            RecallServicer(catalog, history, index, vectors), server
        )
        candidates_pb2_grpc.add_CandidateServiceServicer_to_server(
            CandidateServicer(catalog, history), server
        )
        return ["starling.v1.RecallService", "starling.v1.CandidateService"]

    async def scenario() -> None:
        running = await start_service("recall-test", register, port=0, metrics_port=0)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{running.port}") as channel:
            candidates = candidates_pb2_grpc.CandidateServiceStub(channel)
            pool = await candidates.GetCandidates(
                candidates_pb2.GetCandidatesRequest(
                    user_id=7, context=common_pb2.RecommendContext(exclude_movie_ids=[3])
                )
            )
            assert list(pool.excluded_movie_ids) == [1, 2, 3, 4] and pool.known_user and pool.pool_size == 8

            recall = recall_pb2_grpc.RecallServiceStub(channel)
            reply = await recall.Recall(
                recall_pb2.RecallRequest(user_id=7, n=6, excluded_movie_ids=pool.excluded_movie_ids)
            )
            assert reply.user_has_embedding
            ids = list(reply.movie_ids)
            assert len(ids) == 6 and len(set(ids)) == 6 and not set(ids) & {1, 2, 3, 4}
            first_embedding = next(m for m, c in zip(ids, reply.channels, strict=True) if c == "embedding")
            assert first_embedding % 3 == 1, (
                "the user liked Comedy; the embedding channel must lead with Comedy"
            )

            cold = await recall.Recall(recall_pb2.RecallRequest(user_id=999, n=3))
            assert list(cold.movie_ids) == [12, 11, 10] and set(cold.channels) == {"popular"}
            assert not cold.user_has_embedding

            similar = await recall.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=4, k=3))
            assert similar.found and 4 not in similar.movie_ids
            assert all(m % 3 == 1 for m in similar.movie_ids)
            assert not (await recall.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=555, k=3))).found

            for bad, message in [
                (recall_pb2.RecallRequest(user_id=-1, n=5), "user_id"),
                (recall_pb2.RecallRequest(user_id=1, n=0), "n must be"),
                (recall_pb2.RecallRequest(user_id=1, n=5, genres=["Western"]), "unknown genre"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await recall.Recall(bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()
        await running.server.stop(0)
        index.close()

    asyncio.run(scenario())


def test_vector_index_reuses_complete_collection_and_drops_old_versions(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.db")
    ids, vectors = np.arange(5), np.eye(5, dtype=np.float32)
    first = VectorIndex(uri, "item2vec", "v1")
    first.sync(ids, vectors)
    second = VectorIndex(uri, "item2vec", "v2")
    second.client = first.client  # one milvus-lite process per file
    second.sync(ids, vectors)
    assert first.client.list_collections() == [second.name]
    found, scores = second.search(vectors[2], limit=2)
    assert found[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0)
    first.close()


def test_recall_takes_a_new_movie_with_the_mean_vector_of_its_genre(tmp_path: Path) -> None:
    catalog, history = _catalog_and_history()
    vectors = np.where((catalog.movie_ids % 3 == 1)[:, None], [1.0, 0.0], [0.0, 1.0]).astype(np.float32)
    index = VectorIndex(str(tmp_path / "milvus.db"), "item2vec", "v1")
    index.sync(catalog.movie_ids, vectors)
    servicer = RecallServicer(catalog, history, index, vectors)
    new = pl.DataFrame(
        {"movie_id": [100], "title": ["New Comedy"], "release_year": [2026], "genres": [["Comedy"]]}
    )
    servicer.apply_movies(new)
    row = int(servicer.catalog.positions([100])[0])
    comedy = servicer.catalog.genre_mask(("Comedy",)) & (servicer.catalog.movie_ids != 100)
    np.testing.assert_allclose(servicer.item_vectors[row], vectors[comedy[:-1]].mean(axis=0))
    found, _ = index.search(servicer.item_vectors[row], limit=20)
    assert 100 in found[0], "the new movie is in Milvus at once"
    neighbours, _ = servicer._neighbour_rows(np.array([row]))
    assert set(servicer.catalog.movie_ids[neighbours[0][neighbours[0] >= 0]][:3]) <= {1, 4, 7, 10}
    assert servicer.catalog.titles[row] == "New Comedy" and len(servicer.item_vectors) == len(
        servicer.catalog
    )
    index.close()
