"""RerankService over gRPC: transport only; the logic is services/rerank/logic.py."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument, check_ids, check_k, check_time
from services.common.following import start_following_catalog
from services.common.server import run_service
from services.rerank.logic import DEFAULT_RULES_PATH, RerankRules, load_rules, rerank_candidates
from starling.config import get_settings
from starling.v1 import rerank_pb2, rerank_pb2_grpc


class RerankServicer(rerank_pb2_grpc.RerankServiceServicer):
    def __init__(self, catalog: Catalog, rules: RerankRules) -> None:
        self.rules = rules
        self.set_catalog(catalog)

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog

    def apply_movies(self, movies: pl.DataFrame) -> None:
        """Catalog upserts from the event log."""
        self.set_catalog(self.catalog.upserted(movies))

    async def Rerank(self, request: rerank_pb2.RerankRequest, context: grpc.aio.ServicerContext):
        k = check_k(request.k)
        movie_ids = check_ids(request.movie_ids, "movie_ids")
        n = len(movie_ids)
        if len(request.scores) != n or len(request.channels) != n:
            raise InvalidArgument(
                f"movie_ids, scores and channels must have equal lengths, got {n}, "
                f"{len(request.scores)}, {len(request.channels)}"
            )
        scores = np.asarray(request.scores, dtype=np.float32)
        if not np.isfinite(scores).all():
            raise InvalidArgument("scores must be finite numbers")
        now = check_time(request.time, "time") if request.HasField("time") else dt.datetime.now(dt.UTC)

        top, adjusted = rerank_candidates(
            self.catalog,
            self.rules,
            movie_ids,
            scores,
            k=k,
            current_year=now.year,
            user_genres=list(request.user_genres),
        )
        channels = np.asarray(request.channels, dtype=object)
        return rerank_pb2.RerankResponse(
            movie_ids=movie_ids[top].tolist(), scores=adjusted.tolist(), channels=channels[top].tolist()
        )


def build_servicer(workdir: Path, rules_path: Path = DEFAULT_RULES_PATH) -> RerankServicer:
    return RerankServicer(Catalog.from_workdir(workdir), load_rules(rules_path))


def main() -> None:
    settings = get_settings()

    async def register(server: grpc.aio.Server) -> list[str]:
        rules_path = settings.rerank_rules or DEFAULT_RULES_PATH
        servicer = build_servicer(settings.workdir, rules_path)
        servicer.catalog_task = start_following_catalog(
            settings.workdir, servicer.apply_movies, settings.event_poll_s
        )
        rerank_pb2_grpc.add_RerankServiceServicer_to_server(servicer, server)
        return [rerank_pb2.DESCRIPTOR.services_by_name["RerankService"].full_name]

    run_service("rerank", register, settings.rerank_port)


if __name__ == "__main__":
    main()
