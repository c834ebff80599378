"""RecallService over gRPC: transport only; channels, merging and features are in services/recall/logic.py.

Serves from the published artifact's recall state (models/current/recall, see state.py) aligned with the
live catalog; user histories follow the feedback log, the catalog follows upserts, and a newly published
artifact is picked up by a background check (the new state is built off the request path and swapped in).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument, check_id, check_ids, check_k
from services.common.following import start_following, start_following_catalog
from services.common.history import UserHistory
from services.common.server import run_service
from services.recall.features import channel_scores, user_profile
from services.recall.logic import (
    ANN_MARGIN,
    CHANNEL_PRIORITY,
    ChannelResult,
    ann_limit,
    exact_nearest,
    nearest_channel,
    ordered_channel,
    recall,
)
from services.recall.state import ContentTable, RecallModel, RecallState
from services.recall.vector_index import MAX_LIMIT, VectorIndex
from starling.config import Settings, get_settings
from starling.content import artifact_content, content_of_upserts
from starling.errors import StarlingError
from starling.features.spec import CANDIDATE_FEATURES
from starling.v1 import recall_pb2, recall_pb2_grpc

log = logging.getLogger("starling.recall")

MAX_RECALL = 2000


@dataclass(frozen=True)
class ServingState:
    """One published version as recall serves it: swapped as a whole on reload."""

    version: str
    path: Path
    model: RecallModel
    index: VectorIndex | None  # None: nearest vectors by exact search (or none: see RecallServicer)


def load_recall_state(workdir: Path) -> tuple[RecallState, str, Path, ContentTable]:
    """The published artifact's recall state, its version, its directory and its movies' text vectors (an
    empty table when it was trained without them)."""
    from training.artifacts import load_artifact, resolve_artifact

    path = resolve_artifact(workdir).resolve()
    artifact = load_artifact(path)  # checks every file against the manifest
    if artifact.recall_state is None:
        raise StarlingError(
            f"{path}: the artifact has no recall state; retrain with `starling train {workdir}`"
        )
    return artifact.recall_state, artifact.version, path, artifact_content(artifact.path, artifact.manifest)


class RecallServicer(recall_pb2_grpc.RecallServiceServicer):
    def __init__(
        self,
        catalog: Catalog,
        history: UserHistory,
        state: RecallState,
        version: str,
        path: Path,
        settings: Settings,
        index_uri: str | None,
        content: ContentTable | None = None,
        exact_search: bool = False,
    ) -> None:
        """``index_uri``: the Milvus index of the item vectors; without it, ``exact_search`` finds the nearest
        vectors in memory, else there is no embedding channel (nor vector neighbours in SimilarMovies)."""
        self.catalog = catalog
        self.history = history
        self.settings = settings
        self.index_uri = index_uri
        self.searches_vectors = index_uri is not None or exact_search
        self.upserted_content = ContentTable.empty()  # text vectors that catalog upserts carried
        self.upserted_ids = np.empty(0, dtype=np.int64)  # every movie the catalog upserts added or changed
        self.content = content or ContentTable.empty()  # the published version's, with the upserts' on top
        self.serving = self._build(state, version, path, catalog)

    def _with_upserted_content(self, published: ContentTable) -> ContentTable:
        return published.upserted(self.upserted_content.movie_ids, self.upserted_content.vectors)

    # ------------------------------------------------------------------------------------------ state
    def _build(self, state: RecallState, version: str, path: Path, catalog: Catalog) -> ServingState:
        model = RecallModel.align(
            state,
            catalog.movie_ids,
            catalog.release_years,
            catalog.genre_matrix,
            self.content,
            upserted=self.upserted_ids,
        )
        index = None
        if self.index_uri is not None:
            index = VectorIndex(self.index_uri, "als", version)
            has_vector = model.has_vector
            index.sync(catalog.movie_ids[has_vector], model.vectors[has_vector])
            if has_vector.any():  # warm up: the first search pays for loading the collection
                index.search(model.vectors[has_vector][:1], 10)
        return ServingState(version, path, model, index)

    def apply_movies(self, movies: pl.DataFrame) -> None:
        """Catalog upserts from the event log: new movies get a vector at once (RecallModel's cold-start rule),
        are in Milvus and can be recalled and found by SimilarMovies right away."""
        serving = self.serving
        catalog = self.catalog.upserted(movies)
        carried = content_of_upserts(movies)
        self.upserted_content = self.upserted_content.upserted(*carried)
        self.content = self.content.upserted(*carried)
        arrived = movies["movie_id"].to_numpy()
        self.upserted_ids = np.union1d(self.upserted_ids, arrived)
        previous = serving.model
        earlier = previous.placed & ~np.isin(previous.movie_ids, arrived)  # re-upserted: placed again
        model = RecallModel.align(
            previous.state,
            catalog.movie_ids,
            catalog.release_years,
            catalog.genre_matrix,
            self.content,
            placed=(previous.movie_ids[earlier], previous.vectors[earlier]),
            upserted=self.upserted_ids,
        )
        changed = np.flatnonzero(np.isin(catalog.movie_ids, arrived) & model.placed)
        if serving.index is not None and len(changed):
            serving.index.upsert(catalog.movie_ids[changed], model.vectors[changed])
        self.catalog = catalog
        self.serving = ServingState(serving.version, serving.path, model, serving.index)

    def reload_if_published(self) -> bool:
        """Swap in a newly published artifact's recall state (blocking; run it off the event loop)."""
        from training.artifacts import resolve_artifact

        try:
            current = resolve_artifact(self.settings.workdir).resolve()
        except StarlingError:  # a publish in progress or a removed pointer: keep serving what we have
            return False
        if current == self.serving.path:
            return False
        state, version, path, content = load_recall_state(self.settings.workdir)
        self.content = self._with_upserted_content(content)
        self.serving = self._build(state, version, path, self.catalog)
        log.info("reloaded recall state", extra={"version": version})
        return True

    async def watch(self, interval_s: float) -> None:
        while True:
            await asyncio.sleep(interval_s)
            try:
                await asyncio.to_thread(self.reload_if_published)
            except Exception:
                log.exception("reload failed; still serving the previous recall state")

    async def _nearest(
        self, serving: ServingState, query: np.ndarray, limit: int, timeout: float | None
    ) -> np.ndarray:
        """Catalog rows of the ``limit`` vectors nearest ``query`` (inner product; -1: not in the catalog)."""
        if serving.index is None:
            return exact_nearest(serving.model, query, limit)
        ids, _ = await asyncio.to_thread(serving.index.search, query, min(limit, MAX_LIMIT), timeout)
        return serving.model.positions(ids.ravel())

    # ------------------------------------------------------------------------------------------ RPCs
    async def Recall(self, request: recall_pb2.RecallRequest, context: grpc.aio.ServicerContext):
        user_id = check_id(request.user_id, "user_id")
        n = request.n
        if not 1 <= n <= MAX_RECALL:
            raise InvalidArgument(f"n must be between 1 and {MAX_RECALL}, got {n}")
        excluded = check_ids(request.excluded_movie_ids, "excluded_movie_ids", limit=1_000_000)
        serving, catalog = self.serving, self.catalog
        model = serving.model
        try:
            eligible = catalog.genre_mask(tuple(request.genres))
        except ValueError as exc:
            raise InvalidArgument(f"genres: {exc}") from exc
        excluded_pos = model.positions(np.concatenate([excluded, self.history.rated(user_id)]))
        eligible[excluded_pos[excluded_pos >= 0]] = False  # the request's exclusions and what the user rated

        quotas = {**model.params.quotas, **checked_quotas(request.quotas)}
        profile = user_profile(model, *self.history.latest(user_id), self.settings.like_threshold)
        scores = channel_scores(model, profile)
        ann_rows = np.empty(0, dtype=np.int64)
        if scores.user_vector is not None and self.searches_vectors and quotas.get("embedding"):
            if serving.index is None:  # in memory: among the eligible movies only
                ann_rows = exact_nearest(
                    model, scores.user_vector, quotas["embedding"] + ANN_MARGIN, eligible
                )
            else:  # the index also returns ineligible movies: ask for enough to fill the quota after them
                limit = ann_limit(model, eligible, quotas) + ANN_MARGIN
                ann_rows = await self._nearest(serving, scores.user_vector, limit, context.time_remaining())
        result = recall(model, profile, eligible, n, scores, ann_rows, quotas)
        return recall_pb2.RecallResponse(
            movie_ids=model.movie_ids[result.rows].tolist(),
            scores=result.scores.tolist(),
            channels=result.channels.tolist(),
            user_has_embedding=result.user_vector is not None,
            user_top_genres=[catalog.genre_names[g] for g in result.top_genres.tolist()],
            features=np.ascontiguousarray(result.features, dtype="<f4").tobytes(),
            feature_names=list(CANDIDATE_FEATURES),
            model_version=serving.version,
            because_movie_ids=np.where(
                result.because_rows >= 0, model.movie_ids[np.maximum(result.because_rows, 0)], 0
            ).tolist(),
            because_by_text=result.because_by_text.tolist(),
            known_user=self.history.knows(user_id),
        )

    async def SimilarMovies(
        self, request: recall_pb2.SimilarMoviesRequest, context: grpc.aio.ServicerContext
    ):
        movie_id = check_id(request.movie_id, "movie_id")
        k = check_k(request.k)
        serving = self.serving
        model = serving.model
        pos = int(model.positions(np.array([movie_id]))[0])
        if pos < 0:
            return recall_pb2.SimilarMoviesResponse(found=False)
        eligible = np.ones(len(model.movie_ids), dtype=bool)
        eligible[pos] = False
        result = nearest_channel(
            "item2item", model.neighbour_rows[pos], model.neighbour_scores[pos], eligible, k
        )
        if len(result.positions) < k and self.searches_vectors and model.has_vector[pos]:
            rows = await self._nearest(serving, model.vectors[pos], k + 1, context.time_remaining())
            scores = model.vectors[np.maximum(rows, 0)] @ model.vectors[pos]
            more = nearest_channel("embedding", rows, scores, eligible, k)
            result = _append_new(result, more, k)
        if len(result.positions) < k:  # popular movies sharing its genres
            in_genres = eligible & model.genre_matrix[:, model.genre_matrix[pos]].any(axis=1)
            more = ordered_channel("genre", model.popularity_order, model.popular_score, in_genres, k)
            result = _append_new(result, more, k)
        return recall_pb2.SimilarMoviesResponse(
            movie_ids=model.movie_ids[result.positions].tolist(),
            scores=result.scores.tolist(),
            found=True,
        )


def checked_quotas(quotas: Mapping[str, int]) -> dict[str, int]:
    """Per-request channel quotas (an experiment's arm): known channels, 0..MAX_RECALL each."""
    unknown = sorted(set(quotas) - set(CHANNEL_PRIORITY))
    if unknown:
        raise InvalidArgument(f"quotas: unknown channel(s) {unknown}; known: {', '.join(CHANNEL_PRIORITY)}")
    bad = {name: n for name, n in quotas.items() if not 0 <= n <= MAX_RECALL}
    if bad:
        raise InvalidArgument(f"quotas: {bad} outside 0..{MAX_RECALL}")
    return dict(quotas)


def _append_new(first: ChannelResult, more: ChannelResult, k: int) -> ChannelResult:
    """``first`` followed by the rows of ``more`` it lacks, at most ``k``."""
    fresh = ~np.isin(more.positions, first.positions)
    return ChannelResult(
        first.name,
        np.concatenate([first.positions, more.positions[fresh]])[:k],
        np.concatenate([first.scores, more.scores[fresh]])[:k],
    )


def build_servicer(
    workdir: Path, settings: Settings | None = None, with_index: bool = True
) -> RecallServicer:
    settings = settings or get_settings()
    catalog = Catalog.from_workdir(workdir)
    history = UserHistory.from_workdir(workdir, settings.like_threshold)
    state, version, path, content = load_recall_state(workdir)
    exact = with_index and vector_search(settings, len(catalog.movie_ids)) == "exact"
    index_uri = (settings.milvus_uri or str(workdir / "milvus.db")) if with_index and not exact else None
    log.info("vector search", extra={"search": "exact" if exact else "milvus" if index_uri else "none"})
    return RecallServicer(catalog, history, state, version, path, settings, index_uri, content, exact)


def vector_search(settings: Settings, catalog_movies: int) -> str:
    """``settings.recall_vector_search`` decided: "exact" or "milvus" (see starling/config.py). Searching a few
    ten thousand vectors of 64 floats in memory takes a fraction of a millisecond, against milliseconds for a
    round trip to Milvus; Milvus is for catalogs beyond that, and wherever a Milvus server is configured."""
    if settings.recall_vector_search != "auto":
        return settings.recall_vector_search
    if settings.milvus_uri or catalog_movies > settings.recall_exact_max_movies:
        return "milvus"
    return "exact"


def main() -> None:
    settings = get_settings()

    async def register(server: grpc.aio.Server) -> list[str]:
        servicer = build_servicer(settings.workdir, settings)
        servicer.follower_task = start_following(settings.workdir, servicer.history, settings.event_poll_s)
        servicer.catalog_task = start_following_catalog(
            settings.workdir, servicer.apply_movies, settings.event_poll_s
        )
        servicer.watch_task = asyncio.get_running_loop().create_task(
            servicer.watch(settings.ranker_refresh_s)
        )
        recall_pb2_grpc.add_RecallServiceServicer_to_server(servicer, server)
        return [recall_pb2.DESCRIPTOR.services_by_name["RecallService"].full_name]

    run_service("recall", register, settings.recall_port)


if __name__ == "__main__":
    main()
