"""Candidates and recall: the recall state (fit, save, align), channels and features as pure logic on a tiny
world with planted tastes, and RecallService against a real milvus-lite file."""

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
from services.recall.features import (
    MOVIE_FEATURES,
    UserProfile,
    candidate_features,
    channel_scores,
    user_profile,
)
from services.recall.logic import ChannelResult, ann_limit, exact_nearest, merge_channels, recall
from services.recall.server import RecallServicer
from services.recall.state import MOVIE_BLOCK, RecallModel, RecallParams, RecallState, fold_in
from services.recall.vector_index import VectorIndex
from starling.config import Settings
from starling.features.spec import CANDIDATE_FEATURES
from starling.v1 import candidates_pb2, candidates_pb2_grpc, common_pb2, recall_pb2, recall_pb2_grpc
from training.recall_fit import fit_ease, fit_recall_state, likes_matrix

GENRES = ["Action", "Comedy", "Drama"]
T0 = dt.datetime(2020, 1, 1, tzinfo=dt.UTC)
PARAMS = RecallParams(
    min_likes=2,
    als_factors=4,
    neighbours=5,
    quotas={"ease": 4, "item2item": 4, "embedding": 4, "new": 2, "genre": 2, "popular": 4},
)


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
    ratings = pl.DataFrame(
        {
            "user_id": [7, 7, 7],
            "movie_id": [1, 4, 2],
            "rating": [5.0, 4.0, 1.0],
            "event_timestamp": [T0, T0 + dt.timedelta(days=1), T0 + dt.timedelta(days=2)],
        }
    )
    return Catalog.from_frames(movies, popularity), UserHistory.from_frame(ratings, 3.5)


def tiny_world() -> tuple[pl.DataFrame, pl.DataFrame]:
    """30 movies (genre = id % 3; movie 30 released in 2020, the rest in 2000) and 40 users in two taste
    groups: even users like Comedy and rate Drama 2, odd users the reverse; everyone likes movie 3 (Action),
    the most popular. Each user rates every fourth movie of their genres, offset by their id, a day apart."""
    ids = np.arange(1, 31)
    movies = pl.DataFrame(
        {
            "movie_id": ids,
            "title": [f"Movie {i}" for i in ids],
            "release_year": [2020 if i == 30 else 2000 for i in ids],
            "genres": [[GENRES[i % 3]] for i in ids],
        },
        schema_overrides={"release_year": pl.Int32},
    )
    users, items, values, days = [], [], [], []
    for user in range(1, 41):
        liked_genre, other_genre = (1, 2) if user % 2 == 0 else (2, 1)
        chosen = [m for m in ids if m % 3 == liked_genre and (m + user) % 4 != 0][:6]
        chosen += [*[m for m in ids if m % 3 == other_genre and (m + user) % 4 == 0][:2], 3]
        for day, movie in enumerate(chosen):
            users.append(user)
            items.append(int(movie))
            values.append(2.0 if movie % 3 == other_genre else 5.0)
            days.append(user + day)
    ratings = pl.DataFrame(
        {
            "user_id": users,
            "movie_id": items,
            "rating": values,
            "event_timestamp": [T0 + dt.timedelta(days=d) for d in days],
        },
        schema_overrides={"rating": pl.Float32},
    )
    return ratings, movies


@pytest.fixture(scope="module")
def world() -> tuple[pl.DataFrame, pl.DataFrame, RecallState, Catalog]:
    ratings, movies = tiny_world()
    catalog = Catalog.from_frames(movies, ratings)
    return ratings, movies, fit_recall_state(ratings, catalog.movie_ids, PARAMS, 3.5), catalog


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
    a = ChannelResult("ease", np.array([1, 2, 3, 4]), np.ones(4, dtype=np.float32))
    b = ChannelResult("popular", np.array([2, 5, 6, 7]), np.full(4, 9.0, dtype=np.float32))
    rows, _, names = merge_channels([b, a], {"ease": 2, "popular": 2}, n=5)
    # pass 1: ease 1,2; popular 5,6 (2 was taken); pass 2 refills in priority order: ease's 3.
    assert sorted(rows.tolist()) == [1, 2, 3, 5, 6]
    assert rows.tolist()[:2] == [1, 5], "channels interleave by rank"
    assert dict(zip(rows.tolist(), names.tolist(), strict=True))[2] == "ease"
    empty = merge_channels([], {}, n=3)
    assert len(empty[0]) == 0


def test_recall_state_statistics_ease_and_vectors(world) -> None:
    ratings, _, state, _catalog = world
    assert state.reference_s == ratings["event_timestamp"].max().timestamp()
    row = int(np.searchsorted(state.movie_ids, 3))
    assert state.rating_count[row] == 40 and state.like_count[row] == 40
    assert state.popular_score[row] == state.popular_score.max(), "everyone likes movie 3"
    # decayed popularity never exceeds the like count and halves per half-life of age
    assert (state.like_popularity <= state.like_count[:, None] + 1e-9).all()
    # EASE is the closed form over the covered movies
    liked = ratings.filter(pl.col("rating") >= 3.5)
    users, user_rows = np.unique(liked["user_id"].to_numpy(), return_inverse=True)
    cols = np.searchsorted(state.movie_ids, liked["movie_id"].to_numpy())
    likes = likes_matrix(user_rows, cols, (len(users), len(state.movie_ids)))
    ease_cols = np.searchsorted(state.movie_ids, state.ease_movie_ids)
    np.testing.assert_allclose(
        state.ease_weights, fit_ease(likes[:, ease_cols], PARAMS.ease_lambda), atol=1e-6
    )
    assert np.allclose(np.diag(state.ease_weights), 0.0)
    # neighbours by co-likes stay within a taste group (movie 3, liked by all, aside)
    comedy = int(np.searchsorted(state.movie_ids, 4))
    neighbours = state.neighbour_ids[comedy][state.neighbour_ids[comedy] >= 0]
    assert len(neighbours) and all(m % 3 == 1 or m == 3 for m in neighbours.tolist())
    # a user's folded-in vector scores their group's movies above the other group's
    comedy_rows = np.flatnonzero((state.movie_ids % 3 == 1) & np.any(state.als_factors != 0, axis=1))
    drama_rows = np.flatnonzero((state.movie_ids % 3 == 2) & np.any(state.als_factors != 0, axis=1))
    vector = fold_in(state.als_factors[comedy_rows[:3]], state.als_gram, PARAMS.als_alpha)
    assert (state.als_factors[comedy_rows] @ vector).mean() > (state.als_factors[drama_rows] @ vector).mean()
    assert fold_in(np.empty((0, 4), np.float32), state.als_gram, 2.0) is None


def test_recall_state_round_trips_and_aligns_new_movies(world, tmp_path: Path) -> None:
    _, _movies, state, catalog = world
    state.save(tmp_path / "recall")
    loaded = RecallState.load(tmp_path / "recall")
    assert loaded.params == state.params and loaded.reference_s == state.reference_s
    np.testing.assert_array_equal(loaded.ease_weights, state.ease_weights)
    grown = catalog.upserted(
        pl.DataFrame(
            {"movie_id": [100], "title": ["New Comedy"], "release_year": [2021], "genres": [["Comedy"]]}
        )
    )
    model = RecallModel.align(loaded, grown.movie_ids, grown.release_years, grown.genre_matrix)
    row = int(model.positions(np.array([100]))[0])
    assert not model.in_snapshot[row] and model.popular_score[row] == 0 and model.rating_count[row] == 0
    known = model.in_snapshot & model.has_vector
    donors = known & model.genre_matrix[:, GENRES.index("Comedy")]
    mean = model.vectors[donors].mean(axis=0)
    typical = np.linalg.norm(model.vectors[known], axis=1).mean()
    np.testing.assert_allclose(model.vectors[row], mean / np.linalg.norm(mean) * typical, rtol=1e-5)
    marker = np.full((1, model.vectors.shape[1]), 7.0, dtype=np.float32)
    again = RecallModel.align(
        loaded, grown.movie_ids, grown.release_years, grown.genre_matrix, placed=(np.array([100]), marker)
    )
    assert np.allclose(again.vectors[row], 7.0), "a placement made before is kept, not recomputed"
    np.testing.assert_array_equal(np.delete(again.vectors, row, 0), np.delete(model.vectors, row, 0))
    assert model.placed[row] and not model.placed[known].any()

    # An upserted movie that training saw with too few likes for a vector of its own stays placed until it
    # has one; one with a learnt vector switches over to it.
    vectorless = np.flatnonzero(model.in_snapshot & ~model.has_vector & model.genre_matrix.any(axis=1))[0]
    learnt = np.flatnonzero(known)[0]
    upserted = np.array([100, model.movie_ids[vectorless], model.movie_ids[learnt]])
    switched = RecallModel.align(
        loaded, grown.movie_ids, grown.release_years, grown.genre_matrix, upserted=upserted
    )
    assert switched.placed[vectorless] and switched.has_vector[vectorless]
    assert np.isclose(np.linalg.norm(switched.vectors[vectorless]), typical, rtol=1e-5)
    assert not switched.placed[learnt]
    np.testing.assert_array_equal(switched.vectors[learnt], model.vectors[learnt])
    np.testing.assert_allclose(switched.vectors[row], model.vectors[row], rtol=1e-5)
    with pytest.raises(Exception, match="not a readable recall state"):
        RecallState.load(tmp_path / "missing")


def test_searching_only_eligible_movies_gives_the_embedding_channel_of_the_index_style_search(world) -> None:
    """In memory, recall searches the eligible movies only; an index is asked for the quota plus every
    ineligible movie. The channel, and so recall's answer, is the same either way."""
    from services.recall.logic import ANN_MARGIN

    ratings, _, state, catalog = world
    model = RecallModel.align(state, catalog.movie_ids, catalog.release_years, catalog.genre_matrix)
    history = UserHistory.from_frame(ratings, 3.5)
    compared = 0
    for user_id in np.unique(ratings["user_id"].to_numpy())[:40].tolist():
        profile = user_profile(model, *history.latest(user_id), 3.5)
        scores = channel_scores(model, profile)
        if scores.user_vector is None:
            continue
        eligible = np.ones(len(catalog), dtype=bool)
        eligible[model.positions(history.rated(user_id))] = False
        quota = model.params.quotas["embedding"]
        index_style = exact_nearest(model, scores.user_vector, ann_limit(model, eligible) + ANN_MARGIN)
        in_memory = exact_nearest(model, scores.user_vector, quota + ANN_MARGIN, eligible)
        assert eligible[in_memory].all() and len(in_memory) <= quota + ANN_MARGIN
        one = recall(model, profile, eligible, 50, scores, index_style)
        other = recall(model, profile, eligible, 50, scores, in_memory)
        assert (one.rows == other.rows).all() and (one.channels == other.channels).all(), user_id
        compared += int((one.channels == "embedding").sum())
    assert compared > 0, "some users got embedding candidates"


def test_recall_channels_and_features_for_warm_and_cold_users(world) -> None:
    ratings, _, state, catalog = world
    model = RecallModel.align(state, catalog.movie_ids, catalog.release_years, catalog.genre_matrix)
    history = UserHistory.from_frame(ratings, 3.5)

    def run(user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        profile = user_profile(model, *history.latest(user_id), 3.5)
        eligible = np.ones(len(catalog), dtype=bool)
        eligible[model.positions(history.rated(user_id))] = False
        scores = channel_scores(model, profile)
        hits = (
            exact_nearest(model, scores.user_vector, ann_limit(model, eligible))
            if scores.user_vector is not None
            else np.empty(0, np.int64)
        )
        result = recall(model, profile, eligible, 10, scores, hits)
        assert not set(result.rows.tolist()) & set(model.positions(history.rated(user_id)).tolist())
        return catalog.movie_ids[result.rows], result.channels, result.features

    ids, channels, features = run(2)  # likes Comedy
    assert len(ids) == 10 and len(set(ids.tolist())) == 10
    assert set(channels) >= {"ease", "popular"}
    assert features.shape == (10, len(CANDIDATE_FEATURES)) and features.dtype == np.float32
    column = {name: i for i, name in enumerate(CANDIDATE_FEATURES)}
    comedy = ids % 3 == 1
    ease = np.nan_to_num(features[:, column["ease_score"]], nan=-1.0)
    assert ids[np.argmax(ease)] % 3 == 1, "EASE's best candidate is of the user's taste"
    assert ease[comedy].mean() > ease[ids % 3 == 2].mean()
    affinity = features[:, column["genre_affinity"]]
    assert affinity[comedy].min() > affinity[ids % 3 == 2].max(), "genre affinity follows the user's likes"
    assert np.isfinite(features[:, column["user_rating_count_log"]]).all()

    cold_ids, cold_channels, cold_features = run(999)
    order = np.lexsort((catalog.movie_ids, -model.popular_score))
    assert cold_ids.tolist() == catalog.movie_ids[order][:10].tolist(), "cold start: recent popularity"
    assert set(cold_channels) == {"popular"}
    assert np.isnan(cold_features[:, column["user_rating_count_log"]]).all()
    assert np.isnan(cold_features[:, column["ease_score"]]).all()


def test_movie_features_come_from_one_row_per_movie(world) -> None:
    """The movie-only candidate features are read from RecallModel.movie_block; its rows equal what the
    model's per-movie arrays say (missing release years and first ratings stay NaN)."""
    ratings, _, state, catalog = world
    years = catalog.release_years.copy()
    years[0] = 0  # one movie without a release year
    model = RecallModel.align(state, catalog.movie_ids, years, catalog.genre_matrix)
    assert CANDIDATE_FEATURES[:MOVIE_FEATURES] == MOVIE_BLOCK[:MOVIE_FEATURES]
    block = model.movie_block
    assert block.shape == (len(catalog), len(MOVIE_BLOCK)) and block.flags.c_contiguous
    column = {name: i for i, name in enumerate(MOVIE_BLOCK)}
    days = np.maximum(model.reference_s - model.first_rated_s, 0.0) / 86_400.0
    expected = {
        "popularity_mid": np.log1p(model.like_popularity[:, 1]),
        "popularity_rank_long": model.popularity_ranks[:, 2],
        "rating_count_log": np.log1p(model.rating_count),
        "shrunk_rating": model.shrunk_rating,
        "days_since_first_rating": np.log1p(days),
        "release_year": np.where(years > 0, years, np.nan),
        "movie_age_years": model.reference_year - np.where(years > 0, years, np.nan),
    }
    for name, values in expected.items():
        np.testing.assert_array_equal(block[:, column[name]], values, err_msg=name)
    assert np.isnan(block[0, column["movie_age_years"]])

    history = UserHistory.from_frame(ratings, 3.5)
    profile = user_profile(model, *history.latest(2), 3.5)
    rows = np.arange(len(catalog))
    features = candidate_features(
        model, profile, rows, channel_scores(model, profile), np.ones(len(rows), bool)
    )
    np.testing.assert_array_equal(features[:, :MOVIE_FEATURES], block[:, :MOVIE_FEATURES].astype(np.float32))
    year_gap = features[:, CANDIDATE_FEATURES.index("year_gap")]
    assert np.isnan(year_gap[0]) and np.isfinite(year_gap[1:]).all()


def test_recall_and_candidate_services_with_milvus_lite(world, tmp_path: Path) -> None:
    ratings, _, state, catalog = world
    history = UserHistory.from_frame(ratings, 3.5)
    settings = Settings(workdir=tmp_path, like_threshold=3.5)
    servicer = RecallServicer(catalog, history, state, "v1", tmp_path, settings, str(tmp_path / "milvus.db"))

    async def register(server: grpc.aio.Server) -> list[str]:
        recall_pb2_grpc.add_RecallServiceServicer_to_server(servicer, server)
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
                    user_id=2, context=common_pb2.RecommendContext(exclude_movie_ids=[30])
                )
            )
            assert pool.known_user and 30 in pool.excluded_movie_ids

            recall_stub = recall_pb2_grpc.RecallServiceStub(channel)
            # recall leaves out what the user rated by itself: the request carries the context's exclusions
            reply = await recall_stub.Recall(
                recall_pb2.RecallRequest(user_id=2, n=10, excluded_movie_ids=[30])
            )
            ids = list(reply.movie_ids)
            assert len(ids) == 10 and len(set(ids)) == 10 and not set(ids) & set(pool.excluded_movie_ids)
            assert reply.user_has_embedding and reply.model_version == "v1"
            assert list(reply.feature_names) == list(CANDIDATE_FEATURES)
            features = np.frombuffer(reply.features, dtype="<f4").reshape(len(ids), len(CANDIDATE_FEATURES))
            # the service answers what the logic computes offline (exact search instead of Milvus)
            model = servicer.serving.model
            profile = user_profile(model, *history.latest(2), 3.5)
            eligible = np.ones(len(catalog), dtype=bool)
            eligible[model.positions(np.asarray(pool.excluded_movie_ids))] = False
            scores = channel_scores(model, profile)
            offline = recall(
                model,
                profile,
                eligible,
                10,
                scores,
                exact_nearest(model, scores.user_vector, ann_limit(model, eligible)),
            )
            assert ids == catalog.movie_ids[offline.rows].tolist()
            np.testing.assert_array_equal(features, offline.features)

            cold = await recall_stub.Recall(recall_pb2.RecallRequest(user_id=999, n=3))
            assert set(cold.channels) == {"popular"} and not cold.user_has_embedding
            assert cold.movie_ids[0] == 3, "the most liked movie leads the cold-start list"

            similar = await recall_stub.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=4, k=3))
            assert similar.found and 4 not in similar.movie_ids and len(similar.movie_ids) == 3
            assert not (
                await recall_stub.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=555, k=3))
            ).found

            for bad, message in [
                (recall_pb2.RecallRequest(user_id=-1, n=5), "user_id"),
                (recall_pb2.RecallRequest(user_id=1, n=0), "n must be"),
                (recall_pb2.RecallRequest(user_id=1, n=5, genres=["Western"]), "unknown genre"),
            ]:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await recall_stub.Recall(bad)
                assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.value.details()

            # a new movie gets its genre's mean vector, is in Milvus at once and can be found similar
            servicer.apply_movies(
                pl.DataFrame(
                    {
                        "movie_id": [100],
                        "title": ["New Comedy"],
                        "release_year": [2021],
                        "genres": [["Comedy"]],
                    }
                )
            )
            row = int(servicer.serving.model.positions(np.array([100]))[0])
            found, _ = servicer.serving.index.search(servicer.serving.model.vectors[row], limit=30)
            assert 100 in found[0]
            similar_new = await recall_stub.SimilarMovies(recall_pb2.SimilarMoviesRequest(movie_id=100, k=3))
            assert similar_new.found and len(similar_new.movie_ids) == 3
        await running.server.stop(0)
        servicer.serving.index.close()

    asyncio.run(scenario())


def test_exact_vector_search_answers_what_milvus_answers(world, tmp_path: Path) -> None:
    """Small catalogs search their vectors in memory (recall_vector_search=auto): the same lists as Milvus."""
    from services.recall.server import vector_search

    ratings, _, state, catalog = world
    history = UserHistory.from_frame(ratings, 3.5)
    settings = Settings(workdir=tmp_path, like_threshold=3.5)
    milvus = RecallServicer(catalog, history, state, "v1", tmp_path, settings, str(tmp_path / "milvus.db"))
    exact = RecallServicer(catalog, history, state, "v1", tmp_path, settings, None, exact_search=True)
    assert exact.serving.index is None and milvus.serving.index is not None

    class Context:
        @staticmethod
        def time_remaining() -> float:
            return 10.0

    async def answers(method: str, request: object) -> list[object]:
        return [await getattr(servicer, method)(request, Context()) for servicer in (milvus, exact)]

    users = np.unique(ratings["user_id"].to_numpy())[:20]
    for user in users.tolist():
        in_milvus, in_memory = asyncio.run(answers("Recall", recall_pb2.RecallRequest(user_id=user, n=60)))
        assert "embedding" in in_memory.channels or not in_memory.user_has_embedding
        assert in_milvus == in_memory, user
    for movie in catalog.movie_ids[:20].tolist():
        request = recall_pb2.SimilarMoviesRequest(movie_id=movie, k=10)
        in_milvus, in_memory = asyncio.run(answers("SimilarMovies", request))
        assert in_milvus == in_memory, movie
    milvus.serving.index.close()

    assert vector_search(Settings(), 9_742) == "exact"
    assert vector_search(Settings(), 62_423) == "milvus"  # ml-25m's catalog: over recall_exact_max_movies
    assert vector_search(Settings(milvus_uri="http://milvus:19530"), 9_742) == "milvus"
    assert vector_search(Settings(recall_vector_search="milvus"), 10) == "milvus"
    assert (
        vector_search(Settings(recall_vector_search="exact", milvus_uri="http://m:19530"), 10**6) == "exact"
    )


def test_vector_index_reuses_complete_collection_and_drops_old_versions(tmp_path: Path) -> None:
    uri = str(tmp_path / "m.db")
    ids, vectors = np.arange(5), np.eye(5, dtype=np.float32)
    first = VectorIndex(uri, "als", "v1")
    first.sync(ids, vectors)
    second = VectorIndex(uri, "als", "v2")
    second.client = first.client  # one milvus-lite process per file
    second.sync(ids, vectors)
    assert first.client.list_collections() == [second.name]
    found, scores = second.search(vectors[2], limit=2)
    assert found[0, 0] == 2 and scores[0, 0] == pytest.approx(1.0)
    first.close()


def test_a_re_rating_counts_by_event_time_not_arrival_like_features_build(tmp_path) -> None:
    """Live history and the offline rebuild (`with_feedback`) resolve a movie rated twice the same way."""
    from starling import events
    from starling.features.inputs import with_feedback

    _, history = _catalog_and_history()
    later, earlier = T0 + dt.timedelta(days=30), T0 + dt.timedelta(days=20)
    us = lambda t: int(t.timestamp() * 1_000_000)  # noqa: E731
    history.add(np.array([7]), np.array([5]), np.array([5.0]), np.array([us(later)]))
    history.add(np.array([7]), np.array([5]), np.array([0.5]), np.array([us(earlier)]))  # arrives late
    history.add(
        np.array([7]), np.array([1]), np.array([2.0]), np.array([us(T0)])
    )  # same time as base: newer wins
    movies, ratings, _ = history.latest(7)
    assert dict(zip(movies.tolist(), ratings.tolist(), strict=True)) == {5: 5.0, 1: 2.0, 4: 4.0, 2: 1.0}
    assert movies.tolist()[0] == 5, "most recent first"

    base = pl.DataFrame(
        {"user_id": [7], "movie_id": [1], "rating": [5.0], "event_timestamp": [T0]},
        schema_overrides={"rating": pl.Float32, "event_timestamp": pl.Datetime("us", "UTC")},
    )
    feedback = pl.DataFrame(
        {
            "user_id": [7, 7, 7],
            "movie_id": [5, 5, 1],
            "rating": [5.0, 0.5, 2.0],
            "event_timestamp": [later, earlier, T0],
            "kind": ["rating"] * 3,
        },
        schema_overrides=events.SCHEMAS[events.RATING_STREAM],
    )
    for row in range(3):  # one log file per call, in arrival order
        events.append(tmp_path, events.RATING_STREAM, feedback[row : row + 1])
    rebuilt = with_feedback(base, tmp_path)
    assert dict(rebuilt.select("movie_id", "rating").iter_rows()) == {5: 5.0, 1: 2.0}


def test_reasons_point_at_the_users_own_likes_with_the_strongest_evidence(world) -> None:
    from services.recall.reasons import because_liked, ease_evidence, neighbour_evidence, vector_evidence

    ratings, _, state, catalog = world
    model = RecallModel.align(state, catalog.movie_ids, catalog.release_years, catalog.genre_matrix)
    history = UserHistory.from_frame(ratings, 3.5)
    profile = user_profile(model, *history.latest(2), 3.5)
    eligible = np.ones(len(catalog), dtype=bool)
    eligible[model.positions(history.rated(2))] = False
    scores = channel_scores(model, profile)
    result = recall(model, profile, eligible, 20, scores, exact_nearest(model, scores.user_vector, 30))
    sources = profile.liked_rows[: model.params.recent_likes]
    assert len(result.because_rows) == len(result.rows)
    explained = result.because_rows >= 0
    assert explained.any() and set(result.because_rows[explained].tolist()) <= set(sources.tolist())

    # Neighbour evidence is the like whose neighbour list holds the candidate with the highest similarity.
    rows = result.rows
    evidence = neighbour_evidence(model, sources, rows)
    for row, source in zip(rows.tolist(), evidence.tolist(), strict=True):
        holders = [s for s in sources.tolist() if row in model.neighbour_rows[s].tolist()]
        if not holders:
            assert source == -1
            continue
        strength = {
            s: model.neighbour_scores[s][model.neighbour_rows[s].tolist().index(row)] for s in holders
        }
        assert strength[source] == max(strength.values())
    # EASE evidence: the like with the largest positive weight; vector evidence: the closest vector.
    ease = ease_evidence(model, sources, rows)
    for row, source in zip(rows.tolist(), ease.tolist(), strict=True):
        if source >= 0:
            weights = state.ease_weights[model.ease_index[sources[model.ease_index[sources] >= 0]]][
                :, model.ease_index[row]
            ]
            assert state.ease_weights[model.ease_index[source], model.ease_index[row]] == weights.max() > 0
    vectors = vector_evidence(model, sources, rows)
    assert (vectors >= 0).any() and set(vectors[vectors >= 0].tolist()) <= set(sources.tolist())
    # A user without likes has no evidence; channels other than ease/embedding get neighbour evidence only.
    nobody, nobody_by_text = because_liked(model, UserProfile.empty(), rows, result.channels)
    assert (nobody == -1).all() and not nobody_by_text.any()
    popular_only, by_text = because_liked(model, profile, rows, np.full(len(rows), "popular", dtype=object))
    assert (popular_only == evidence).all() and not by_text.any(), "no text vectors here: no text evidence"
    # With text vectors: a candidate without collaborative evidence whose text is close to a recent like's
    # gets that like, marked as text evidence; one far from every like gets none.
    from dataclasses import replace

    from services.recall.reasons import TEXT_MIN_COSINE

    bare = np.flatnonzero(evidence < 0)
    assert len(bare) >= 2
    text = np.zeros((len(model.movie_ids), 3), dtype=np.float32)
    text[sources] = [1.0, 0.0, 0.0]
    text[sources[0]] = [0.0, 1.0, 0.0]
    text[rows[bare[0]]] = [0.0, 1.0, 0.0]  # the same text as the most recent like
    text[rows[bare[1]]] = [0.0, 0.0, 1.0]  # unlike any like
    with_text = replace(model, text_vectors=text)
    found, by_text = because_liked(with_text, profile, rows, np.full(len(rows), "popular", dtype=object))
    assert found[bare[0]] == sources[0] and by_text[bare[0]]
    assert found[bare[1]] == -1 and not by_text[bare[1]] and TEXT_MIN_COSINE > 0
    assert (found[evidence >= 0] == evidence[evidence >= 0]).all() and not by_text[evidence >= 0].any()


def test_reasons_phrase_the_evidence_and_match_is_a_0_to_1_share() -> None:
    from services.recommend.browse import genres_by_ratings, popular_positions
    from services.recommend.reasons import item_reasons, match_shares, similar_reason
    from starling.v1 import recommend_pb2

    catalog, _ = _catalog_and_history()  # movies 1..12, genre = GENRES[id % 3], popularity = id
    kinds = recommend_pb2.ReasonKind
    ids = np.array([5, 6, 7, 8, 9])
    channels = np.array(["ease", "new", "genre", "popular", "cold_start"], dtype=object)
    reasons = item_reasons(
        catalog,
        ids,
        channels,
        np.array([1, 0, 0, 0, 0]),
        genre_preference=[GENRES[1], GENRES[2]],
        today=dt.date(2000, 6, 1),
    )
    assert [(r.kind, r.text) for r in reasons] == [
        (kinds.REASON_KIND_BECAUSE_YOU_LIKED, "Because you liked M1"),
        (kinds.REASON_KIND_NEW_RELEASE, "New this year"),
        (kinds.REASON_KIND_POPULAR_IN_GENRE, f"Popular in {GENRES[1]}"),  # 7 % 3 == 1
        (kinds.REASON_KIND_POPULAR_IN_GENRE, f"Popular in {GENRES[2]}"),
        (kinds.REASON_KIND_POPULAR, "Popular now"),  # 9 % 3 == 0: not a preferred genre
    ]
    assert reasons[0].because_movie_id == 1 and reasons[2].genre == GENRES[1]
    later = item_reasons(
        catalog, ids[1:2], channels[1:2], np.zeros(1, np.int64), [], today=dt.date(2003, 1, 1)
    )
    assert later[0].text == "New release (2000)"
    down = item_reasons(catalog, ids[3:4], channels[3:4], np.zeros(1, np.int64), [], recall_answered=False)
    assert down[0].text == "Popular"
    unknown = item_reasons(catalog, ids[:1], channels[:1], np.array([99]), [])  # not in the catalog: no claim
    assert unknown[0].kind == kinds.REASON_KIND_POPULAR
    assert similar_reason(catalog, 3).text == "Similar to M3"
    text = item_reasons(
        catalog, ids[:2], channels[:2], np.array([1, 2]), [], because_by_text=np.array([True, False])
    )
    assert [(r.kind, r.because_movie_id, r.text) for r in text] == [
        (kinds.REASON_KIND_SIMILAR_TEXT, 1, "Like M1, which you liked"),
        (kinds.REASON_KIND_BECAUSE_YOU_LIKED, 2, "Because you liked M2"),
    ]

    assert match_shares(np.array([3.0, 2.0]), np.array([1.0, 2.0, 3.0])).tolist() == [1.0, 0.5]
    assert match_shares(np.array([5.0]), np.array([1.0, 3.0])).tolist() == [1.0], "re-ranking may lift it"
    assert match_shares(np.array([2.0, 2.0]), np.array([2.0])).tolist() == [1.0, 1.0]
    assert match_shares(np.array([np.nan, 1.0]), np.array([0.0, 2.0]))[1] == 0.5

    positions, total = popular_positions(catalog, GENRES[0], 1, 2)  # ids 3, 6, 9, 12 by popularity
    assert catalog.movie_ids[positions].tolist() == [9, 6] and total == 4
    assert genres_by_ratings(catalog)[0] == GENRES[0]  # 3+6+9+12 = 30 ratings, the most
