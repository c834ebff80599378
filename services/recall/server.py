"""RecallService over gRPC: transport only; channels and merging are in services/recall/logic.py."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument, check_id, check_ids, check_k
from services.common.following import start_following, start_following_catalog
from services.common.history import UserHistory
from services.common.server import run_service
from services.recall.logic import (
    DEFAULT_QUOTAS,
    ChannelResult,
    genre_channel,
    merge_channels,
    nearest_channel,
    popular_channel,
    user_top_genres,
)
from services.recall.vector_index import VectorIndex, neighbour_table
from starling.config import get_settings
from starling.errors import StarlingError
from starling.v1 import recall_pb2, recall_pb2_grpc

log = logging.getLogger("starling.recall")

MAX_RECALL = 2000
RECENT_LIKES = 5
RECENT_TASTE = 10  # the user's current taste: genres of their 10 most recent likes
NEIGHBOURS = 50  # precomputed item-to-item neighbours per movie


def load_item_vectors(workdir: Path, method: str, catalog: Catalog) -> tuple[np.ndarray, str]:
    """The published item embeddings aligned with catalog rows (zeros where missing), and the model version."""
    current = workdir / "models" / "current"
    path = current / "item_embeddings" / f"{method}.parquet"
    if not path.is_file():
        raise StarlingError(f"{path} not found: run `starling train {workdir} --model all` first")
    frame = pl.read_parquet(path)
    column = frame["embedding"]
    if column.dtype == pl.List:
        column = column.list.to_array(int(column.list.len().max()))
    vectors = column.to_numpy().astype(np.float32)
    aligned = np.zeros((len(catalog), vectors.shape[1]), dtype=np.float32)
    pos = catalog.positions(frame["movie_id"].to_numpy())
    aligned[pos[pos >= 0]] = vectors[pos >= 0]
    return aligned, current.resolve().name


class RecallServicer(recall_pb2_grpc.RecallServiceServicer):
    def __init__(
        self,
        catalog: Catalog,
        history: UserHistory,
        index: VectorIndex | None,
        item_vectors: np.ndarray | None,
        quotas: dict[str, int] = DEFAULT_QUOTAS,
    ) -> None:
        self.catalog = catalog
        self.history = history
        self.index = index
        self.item_vectors = item_vectors
        self.quotas = quotas
        self.popularity_order = np.lexsort((catalog.movie_ids, -catalog.rating_counts))
        # Item-to-item neighbours of every catalog movie (movie ids, -1 = none), precomputed from the index.
        self.neighbours = np.full((len(catalog), NEIGHBOURS), -1, dtype=np.int64)
        self.neighbour_scores = np.full((len(catalog), NEIGHBOURS), -np.inf, dtype=np.float32)
        has_vector = np.flatnonzero(np.any(item_vectors != 0, axis=1)) if item_vectors is not None else []
        if index is not None and len(has_vector):
            ids, scores = neighbour_table(
                index, catalog.movie_ids[has_vector], item_vectors[has_vector], NEIGHBOURS
            )
            self.neighbours[has_vector], self.neighbour_scores[has_vector] = ids, scores

    def _neighbour_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Neighbours of the movies at ``positions`` as catalog rows (-1 = none) and their scores."""
        ids = self.neighbours[positions]
        return self.catalog.positions(ids.ravel()).reshape(ids.shape), self.neighbour_scores[positions]

    def apply_movies(self, movies: pl.DataFrame) -> None:
        """Catalog upserts from the event log: new movies get a vector at once, are in Milvus and can be
        recalled right away. A new movie's vector is the mean of the vectors of movies with all its genres
        (of movies sharing any of its genres when none has all), the design's cold-start rule."""
        old = self.catalog
        catalog = old.upserted(movies)
        before = old.positions(catalog.movie_ids)
        found = before >= 0
        safe = np.where(found, before, 0)
        vectors = np.where(found[:, None], self.item_vectors[safe], 0.0).astype(np.float32)
        neighbours = np.where(found[:, None], self.neighbours[safe], -1)
        neighbour_scores = np.where(found[:, None], self.neighbour_scores[safe], -np.inf).astype(np.float32)
        new_rows = catalog.positions(movies["movie_id"].unique().to_numpy())
        new_rows = new_rows[~np.any(vectors[new_rows] != 0, axis=1)]
        has_vector = np.any(vectors != 0, axis=1)
        for row in new_rows.tolist():  # one per new movie in the batch (a handful)
            genres = catalog.genre_matrix[row]
            if not genres.any():
                continue
            with_all = has_vector & catalog.genre_matrix[:, genres].all(axis=1)
            donors = with_all if with_all.any() else has_vector & catalog.genre_matrix[:, genres].any(axis=1)
            if donors.any():
                vectors[row] = vectors[donors].mean(axis=0)
        added = new_rows[np.any(vectors[new_rows] != 0, axis=1)]
        if self.index is not None and len(added):
            self.index.upsert(catalog.movie_ids[added], vectors[added])
            ids, scores = neighbour_table(self.index, catalog.movie_ids[added], vectors[added], NEIGHBOURS)
            neighbours[added], neighbour_scores[added] = ids, scores
        self.item_vectors, self.neighbours, self.neighbour_scores = vectors, neighbours, neighbour_scores
        self.popularity_order = np.lexsort((catalog.movie_ids, -catalog.rating_counts))
        self.catalog = catalog

    async def _nearest(
        self, queries: np.ndarray, limit: int, timeout: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        assert self.index is not None
        ids, scores = await asyncio.to_thread(self.index.search, queries, limit, timeout)
        return self.catalog.positions(ids.ravel()).reshape(ids.shape), scores

    async def Recall(self, request: recall_pb2.RecallRequest, context: grpc.aio.ServicerContext):
        user_id = check_id(request.user_id, "user_id")
        n = request.n
        if not 1 <= n <= MAX_RECALL:
            raise InvalidArgument(f"n must be between 1 and {MAX_RECALL}, got {n}")
        excluded = check_ids(request.excluded_movie_ids, "excluded_movie_ids", limit=1_000_000)
        try:
            eligible = self.catalog.genre_mask(tuple(request.genres))
        except ValueError as exc:
            raise InvalidArgument(f"genres: {exc}") from exc
        excluded_pos = self.catalog.positions(excluded)
        eligible[excluded_pos[excluded_pos >= 0]] = False

        liked = self.catalog.positions(self.history.liked(user_id))
        liked = liked[liked >= 0]
        channels: list[ChannelResult] = []
        timeout = context.time_remaining()
        has_embedding = self.index is not None and len(liked) > 0
        if has_embedding:
            user_vector = self.item_vectors[liked].mean(axis=0)
            # Ask for the quota plus as many as may be filtered out (result parsing in pymilvus costs ~2 us a hit).
            want = self.quotas["embedding"]
            rows, scores = await self._nearest(user_vector, want + int((~eligible).sum()), timeout)
            channels.append(nearest_channel("embedding", rows, scores, eligible, want + n // 2))
            recent = liked[:RECENT_LIKES]
            channels.append(
                nearest_channel(
                    "item2item",
                    *self._neighbour_rows(recent),
                    eligible,
                    self.quotas["item2item"] + n // 2,
                )
            )
        channels.append(genre_channel(self.catalog, self.popularity_order, liked, eligible, n))
        channels.append(popular_channel(self.popularity_order, self.catalog.rating_counts, eligible, n))
        rows, scores, names = merge_channels(channels, self.quotas, n)
        return recall_pb2.RecallResponse(
            movie_ids=self.catalog.movie_ids[rows].tolist(),
            scores=scores.tolist(),
            channels=names.tolist(),
            user_has_embedding=has_embedding,
            user_top_genres=[
                self.catalog.genre_names[g]
                for g in user_top_genres(self.catalog, liked[:RECENT_TASTE]).tolist()
            ],
        )

    async def SimilarMovies(
        self, request: recall_pb2.SimilarMoviesRequest, context: grpc.aio.ServicerContext
    ):
        movie_id = check_id(request.movie_id, "movie_id")
        k = check_k(request.k)
        pos = int(self.catalog.positions([movie_id])[0])
        if pos < 0:
            return recall_pb2.SimilarMoviesResponse(found=False)
        eligible = np.ones(len(self.catalog), dtype=bool)
        eligible[pos] = False
        if self.index is not None and np.any(self.item_vectors[pos]):
            if k <= NEIGHBOURS:
                rows, scores = self._neighbour_rows(np.array([pos]))
            else:
                rows, scores = await self._nearest(self.item_vectors[pos], k + 1, context.time_remaining())
            result = nearest_channel("embedding", rows, scores, eligible, k)
        else:  # no embedding for this movie: popular movies sharing its genres
            result = genre_channel(self.catalog, self.popularity_order, np.array([pos]), eligible, k)
        return recall_pb2.SimilarMoviesResponse(
            movie_ids=self.catalog.movie_ids[result.positions].tolist(),
            scores=result.scores.tolist(),
            found=True,
        )


def build_servicer(workdir: Path) -> RecallServicer:
    settings = get_settings()
    catalog = Catalog.from_workdir(workdir)
    history = UserHistory.from_workdir(workdir, settings.like_threshold)
    vectors, version = load_item_vectors(workdir, settings.recall_embedding, catalog)
    index = VectorIndex(settings.milvus_uri or str(workdir / "milvus.db"), settings.recall_embedding, version)
    has_vector = np.any(vectors != 0, axis=1)
    index.sync(catalog.movie_ids[has_vector], vectors[has_vector])
    if has_vector.any():  # warm up: the first search pays for loading the collection
        index.search(vectors[has_vector][:1], settings.recall_size)
    return RecallServicer(catalog, history, index, vectors)


def main() -> None:
    settings = get_settings()

    async def register(server: grpc.aio.Server) -> list[str]:
        servicer = build_servicer(settings.workdir)
        servicer.follower_task = start_following(settings.workdir, servicer.history, settings.event_poll_s)
        servicer.catalog_task = start_following_catalog(
            settings.workdir, servicer.apply_movies, settings.event_poll_s
        )
        recall_pb2_grpc.add_RecallServiceServicer_to_server(servicer, server)
        return [recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name]

    run_service("recall", register, settings.recall_port)


if __name__ == "__main__":
    main()
