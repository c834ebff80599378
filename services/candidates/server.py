"""CandidateService over gRPC: transport only; the logic is services/candidates/logic.py."""

from __future__ import annotations

from pathlib import Path

import grpc
import polars as pl

from services.candidates.logic import eligible_pool
from services.common.catalog import Catalog
from services.common.errors import check_id, check_ids
from services.common.following import start_following, start_following_catalog
from services.common.history import UserHistory
from services.common.server import run_service
from starling.config import get_settings
from starling.v1 import candidates_pb2, candidates_pb2_grpc


class CandidateServicer(candidates_pb2_grpc.CandidateServiceServicer):
    def __init__(self, catalog: Catalog, history: UserHistory) -> None:
        self.catalog = catalog
        self.history = history

    def apply_movies(self, movies: pl.DataFrame) -> None:
        """Catalog upserts from the event log."""
        self.catalog = self.catalog.upserted(movies)

    async def GetCandidates(
        self, request: candidates_pb2.GetCandidatesRequest, context: grpc.aio.ServicerContext
    ):
        user_id = check_id(request.user_id, "user_id")
        excluded = check_ids(request.context.exclude_movie_ids, "context.exclude_movie_ids")
        pool = eligible_pool(
            self.catalog, self.history.rated(user_id), excluded, tuple(request.context.genres)
        )
        return candidates_pb2.GetCandidatesResponse(
            excluded_movie_ids=pool.excluded_movie_ids.tolist(),
            genres=list(pool.genres),
            pool_size=pool.pool_size,
            known_user=self.history.knows(user_id),
        )


def build_servicer(workdir: Path) -> CandidateServicer:
    settings = get_settings()
    return CandidateServicer(
        Catalog.from_workdir(workdir), UserHistory.from_workdir(workdir, settings.like_threshold)
    )


def main() -> None:
    settings = get_settings()

    async def register(server: grpc.aio.Server) -> list[str]:
        servicer = build_servicer(settings.workdir)
        servicer.follower_task = start_following(settings.workdir, servicer.history, settings.event_poll_s)
        servicer.catalog_task = start_following_catalog(
            settings.workdir, servicer.apply_movies, settings.event_poll_s
        )
        candidates_pb2_grpc.add_CandidateServiceServicer_to_server(servicer, server)
        return [candidates_pb2.DESCRIPTOR.services_by_name["CandidateService"].full_name]

    run_service("candidates", register, settings.candidates_port)


if __name__ == "__main__":
    main()
