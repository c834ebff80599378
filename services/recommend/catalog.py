"""CatalogService (served by the recommend process): movie details and users' ratings."""

from __future__ import annotations

import math

import grpc

from services.common.catalog import Catalog
from services.common.errors import NotFound, Unimplemented, check_id, check_k
from services.common.history import UserHistory
from starling.v1 import catalog_pb2, catalog_pb2_grpc


def movie_message(catalog: Catalog, position: int) -> catalog_pb2.Movie:
    average = float(catalog.avg_ratings[position])
    return catalog_pb2.Movie(
        movie_id=int(catalog.movie_ids[position]),
        title=str(catalog.titles[position]),
        release_year=int(catalog.release_years[position]),
        genres=catalog.genres_of(position),
        rating_count=int(catalog.rating_counts[position]),
        avg_rating=0.0 if math.isnan(average) else average,
    )


class CatalogServicer(catalog_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog, history: UserHistory) -> None:
        self.catalog = catalog
        self.history = history

    async def GetMovie(self, request: catalog_pb2.GetMovieRequest, context: grpc.aio.ServicerContext):
        movie_id = check_id(request.movie_id, "movie_id")
        position = int(self.catalog.positions([movie_id])[0])
        if position < 0:
            raise NotFound(f"movie_id {movie_id} is not in the catalog")
        return movie_message(self.catalog, position)

    async def ListUserRatings(
        self, request: catalog_pb2.ListUserRatingsRequest, context: grpc.aio.ServicerContext
    ):
        user_id = check_id(request.user_id, "user_id")
        limit = check_k(request.limit, "limit")
        movies, ratings, timestamps = (column[:limit] for column in self.history.latest(user_id))
        positions = self.catalog.positions(movies)
        return catalog_pb2.ListUserRatingsResponse(
            ratings=[
                catalog_pb2.UserRating(
                    movie=movie_message(self.catalog, p), rating=float(r), time_unix_ms=int(t // 1000)
                )
                for p, r, t in zip(positions.tolist(), ratings.tolist(), timestamps.tolist(), strict=True)
                if p >= 0
            ]
        )

    async def UpsertMovie(self, request: catalog_pb2.UpsertMovieRequest, context: grpc.aio.ServicerContext):
        raise Unimplemented("UpsertMovie (cold start of new movies) is not implemented yet")
