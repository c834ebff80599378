"""RecommendService: the orchestrator. Calls recall -> ranker -> rerank with per-stage deadlines (cut to the
caller's own deadline); a stage that fails or times out is replaced by its fallback and named in ``degraded``:

- recall down: the most popular movies of CandidateService's eligible pool (the ranker is skipped: it needs
  recall's candidate features); candidates down too: exclude only what the request excludes;
- ranker down: recall's order; user features missing: the ranker's defaults (reported as "features");
- rerank down: top k by score.

Users without history take the cold path: recall's list (recent popularity) is kept, the ranker is not called.
The same decisions are plain functions in logic.py, which the offline replay (training/replay.py) calls too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from pathlib import Path
from typing import Generic, TypeVar

import grpc
import numpy as np
import polars as pl
from kserve import InferenceGRPCClient, InferInput, InferRequest

from services.common.catalog import Catalog
from services.common.channels import STAGE_CHANNEL_OPTIONS
from services.common.deadlines import downstream_timeout
from services.common.errors import InvalidArgument, NotFound, check_id, check_k
from services.common.experiments import ExperimentsWatcher, Overrides, assign
from services.common.following import every, follow, start_following_catalog
from services.common.history import UserHistory
from services.common.jsonlog import ThrottledLog
from services.common.models import ranker_model_name
from services.common.observability import (
    EXPERIMENT_EXPOSURES,
    EXPERIMENT_FEEDBACK,
    EXPOSURES,
    MODEL_INFO,
    STAGE_FALLBACKS,
    STAGE_LATENCY,
)
from services.common.server import AdminServer, RunningService, run_service
from services.recommend.catalog import CatalogServicer
from services.recommend.content import UpsertEncoder
from services.recommend.dependencies import DependencyMonitor, grpc_health_probe
from services.recommend.experiments import RecentLists, checked_forced_arms, feedback_by_arm, serving_plan
from services.recommend.feedback import FeedbackRecorder
from services.recommend.interleaving import interleave
from services.recommend.logic import (
    Ranked,
    ServedList,
    ValidRequest,
    because_of_recall,
    build_items,
    candidate_feature_matrix,
    cold_start_channels,
    exposure_record,
    lookup,
    popular_fallback,
    random_order_scores,
    recall_order_scores,
    top_k_by_score,
    unique_degradations,
    uses_ranker,
    validate_recommend,
)
from services.recommend.reasons import item_reasons, match_shares, similar_reason
from starling.config import Settings, get_settings, stage_target
from starling.errors import StarlingError
from starling.eventbus import open_event_log
from starling.events import MOVIE_STREAM, RATING_STREAM
from starling.exposures import ExposureLog, exposure_dir
from starling.featurestore import get_feature_store
from starling.v1 import (
    candidates_pb2,
    candidates_pb2_grpc,
    catalog_pb2,
    catalog_pb2_grpc,
    common_pb2,
    recall_pb2,
    recall_pb2_grpc,
    recommend_pb2,
    recommend_pb2_grpc,
    rerank_pb2,
    rerank_pb2_grpc,
)

log = logging.getLogger("starling.recommend")
RECOMMEND_SERVICE = recommend_pb2.DESCRIPTOR.services_by_name["RecommendService"].full_name
CATALOG_SERVICE = catalog_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name
FALLBACK_LOG = ThrottledLog(log)  # one line per stage and failure kind per 10 s, not one per request
# KServe's client logs a traceback for every failed call; the fallback above reports them, throttled.
logging.getLogger("kserve").setLevel(logging.CRITICAL)
T = TypeVar("T")


# Per-request stage timings (ms), returned in the trailing metadata key STAGE_TIMINGS_KEY for clients
# such as `starling bench serve`; each gRPC call runs in its own task, so a ContextVar keeps them apart.
STAGE_TIMINGS: ContextVar[dict[str, float] | None] = ContextVar("stage_timings", default=None)
STAGE_TIMINGS_KEY = "starling-stage-ms"


class StageFailed(Exception):
    """A downstream stage did not answer in time or answered with an error."""


async def _timed(stage: str, call: Awaitable[T]) -> T:
    start = time.perf_counter()
    try:
        return await call
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.INVALID_ARGUMENT:
            raise InvalidArgument(exc.details() or "invalid argument") from exc
        raise StageFailed(f"{exc.code().name}: {exc.details()}") from exc
    except Exception as exc:  # a client-side failure (e.g. a malformed reply) is also a stage failure
        raise StageFailed(f"{type(exc).__name__}: {exc}") from exc
    finally:
        elapsed = time.perf_counter() - start
        STAGE_LATENCY.labels(stage).observe(elapsed)
        timings = STAGE_TIMINGS.get()
        if timings is not None:
            timings[stage] = elapsed * 1000.0


class OnDemand(Generic[T]):
    """A coroutine started by the first caller of :meth:`result` and shared by the later ones (one request's
    arms); never started if nobody asks."""

    def __init__(self, start: Callable[[], Awaitable[T]]) -> None:
        self._start = start
        self._task: asyncio.Future[T] | None = None

    def result(self) -> asyncio.Future[T]:
        if self._task is None:
            self._task = asyncio.ensure_future(self._start())
        return self._task


async def known_user_of(recalled: recall_pb2.RecallResponse, pool: OnDemand[tuple[np.ndarray, bool]]) -> bool:
    """Whether the user has history (else the cold path): recall says so; a recall from before
    ``RecallResponse.known_user`` does not, and CandidateService's pool is asked instead."""
    if recalled.HasField("known_user"):
        return recalled.known_user
    return (await pool.result())[1]


class RecommendServicer(recommend_pb2_grpc.RecommendServiceServicer):
    def __init__(self, catalog: Catalog, settings: Settings, feedback: FeedbackRecorder) -> None:
        self.settings = settings
        self.feedback = feedback
        self.set_catalog(catalog)
        self.experiments = ExperimentsWatcher(settings.experiments, settings.workdir)
        self.recent_lists = RecentLists()
        feedback.on_recorded = self._count_experiment_feedback
        self.exposures = (
            ExposureLog(
                exposure_dir(settings.workdir),
                settings.exposure_segment_mb * 1024 * 1024,
                settings.exposure_max_segments,
                settings.exposure_fsync,
            )
            if settings.exposure_log
            else None
        )
        self.channels = {
            stage: grpc.aio.insecure_channel(
                stage_target(settings, stage), options=list(STAGE_CHANNEL_OPTIONS)
            )
            for stage in ("candidates", "recall", "rerank")
        }
        self.candidates = candidates_pb2_grpc.CandidateServiceStub(self.channels["candidates"])
        self.recall = recall_pb2_grpc.RecallServiceStub(self.channels["recall"])
        self.rerank = rerank_pb2_grpc.RerankServiceStub(self.channels["rerank"])
        self.ranker = InferenceGRPCClient(
            stage_target(settings, "ranker"),
            retries=0,
            timeout=None,
            channel_args=list(STAGE_CHANNEL_OPTIONS),
        )

    def set_catalog(self, catalog: Catalog) -> None:
        self.catalog = catalog
        self.popularity_order = np.lexsort((catalog.movie_ids, -catalog.rating_counts))

    def _budget(self, context: grpc.aio.ServicerContext, stage: str) -> float:
        return downstream_timeout(context, getattr(self.settings, f"{stage}_timeout_ms") / 1000.0)

    def _fallback(
        self, degraded: list[common_pb2.Degradation], stage: str, reason: str, kind: str | None = None
    ) -> None:
        """Serve without ``stage``; counted by a short kind (a status code name, from ``reason``'s head)."""
        head = reason.split(":")[0]
        kind = kind or (head if re.fullmatch(r"[A-Za-z_]{1,40}", head) else "other")
        STAGE_FALLBACKS.labels(stage, kind).inc()
        FALLBACK_LOG.warning(f"{stage}:{kind}", "stage fell back", stage=stage, reason=reason)
        degraded.append(common_pb2.Degradation(stage=stage, reason=reason))

    async def Recommend(self, request: recommend_pb2.RecommendRequest, context: grpc.aio.ServicerContext):
        req = validate_recommend(request, self.catalog)
        config = self.experiments.config
        forced = checked_forced_arms(request.context.force_arms, config)
        if forced:
            log.warning(
                "experiment arms forced by the request", extra={"user_id": req.user_id, "arms": forced}
            )
        assignments = assign(config, req.user_id, forced)
        plan = serving_plan(assignments)
        request_id = uuid.uuid4().hex
        timings: dict[str, float] = {}
        STAGE_TIMINGS.set(timings)
        degraded: list[common_pb2.Degradation] = []  # every stage that fell back, for the response

        # 1. candidates: the eligible pool, asked for only when an arm needs it (shared by every arm). Recall
        # leaves out what the user rated and tells whether the user is known (the cold path) itself, so the
        # pool is what the popular fallback must leave out when recall fails.
        pool = OnDemand(lambda: self._eligible_pool(req, request, context, degraded))

        # 2-4. recall, ranker, rerank: once, or once per arm of an interleaving experiment.
        served = await asyncio.gather(
            *(
                self._serve_arm(req, request, context, pool, overrides, request_id, degraded)
                for overrides in plan.arm_overrides
            )
        )
        if plan.interleaving is None:
            final, arms = served[0], np.full(len(served[0].movie_ids), "", dtype=object)
        else:
            final, arms = interleave(served, plan.interleaving, req.k, request_id)

        context.set_trailing_metadata(
            ((STAGE_TIMINGS_KEY, ",".join(f"{stage}={ms:.3f}" for stage, ms in timings.items())),)
        )
        reasons = item_reasons(
            self.catalog,
            final.movie_ids,
            final.channels,
            final.because_ids,
            because_by_text=final.because_by_text,
            genre_preference=final.user_genres or list(req.genres),
            recall_answered=final.recall_answered,
        )
        response = recommend_pb2.RecommendResponse(
            items=build_items(
                self.catalog,
                final.movie_ids,
                final.scores,
                final.channels,
                reasons,
                match_shares(final.scores, final.candidate_scores),
                arms,
            ),
            model_version=final.model_version,
            request_id=request_id,
            degraded=unique_degradations(degraded),
            experiments=[common_pb2.ExperimentArm(experiment=e, arm=a) for e, a in plan.reported],
        )
        if self.exposures is not None:
            self._log_exposure(exposure_record(request_id, req, response, arms))
        for experiment, arm in plan.reported:
            EXPERIMENT_EXPOSURES.labels(experiment, arm).inc()
        self.recent_lists.add(request_id, req.user_id, plan.reported, final.movie_ids, arms)
        return response

    def _count_experiment_feedback(self, events: pl.DataFrame) -> None:
        counts = feedback_by_arm(
            self.experiments.config, events, self.recent_lists, self.settings.like_threshold
        )
        for experiment, arm, signal, n in counts.iter_rows():  # one row per (experiment, arm, signal)
            EXPERIMENT_FEEDBACK.labels(experiment, arm, signal).inc(n)

    def _log_exposure(self, record: dict) -> None:
        """Append to the exposure log; a log that cannot be written (full or read-only disk) is counted and
        logged, and the list is still served."""
        try:
            self.exposures.append(record)
            EXPOSURES.labels("written").inc()
        except OSError as exc:
            EXPOSURES.labels("failed").inc()
            FALLBACK_LOG.warning("exposures:OSError", "exposure log not written", error=str(exc))

    async def _eligible_pool(
        self,
        req: ValidRequest,
        request: recommend_pb2.RecommendRequest,
        context: grpc.aio.ServicerContext,
        degraded: list[common_pb2.Degradation],
    ) -> tuple[np.ndarray, bool]:
        """CandidateService's pool: the movies left out (rated or excluded by the context) and whether the user
        has history; without it, the request's exclusions and a known user."""
        try:
            pool = await _timed(
                "candidates",
                self.candidates.GetCandidates(
                    candidates_pb2.GetCandidatesRequest(user_id=req.user_id, context=request.context),
                    timeout=self._budget(context, "candidates"),
                ),
            )
            return np.asarray(pool.excluded_movie_ids, dtype=np.int64), pool.known_user
        except StageFailed as exc:
            self._fallback(degraded, "candidates", f"{exc}; excluded only the request's exclusions")
            return req.excluded, True

    async def _serve_arm(
        self,
        req: ValidRequest,
        request: recommend_pb2.RecommendRequest,
        context: grpc.aio.ServicerContext,
        pool: OnDemand[tuple[np.ndarray, bool]],
        overrides: Overrides,
        request_id: str,
        degraded: list[common_pb2.Degradation],
    ) -> ServedList:
        """Recall, rank and re-rank for one arm (``overrides``: the arm's knobs); stage failures fall back and
        are recorded on ``degraded``. ``pool``: the eligible pool (:meth:`_eligible_pool`), fetched on demand."""
        ranked = Ranked(np.empty(0, np.int64), np.empty(0, np.float32), np.empty(0, object))

        # 2. recall: about 500 candidates from several channels.
        try:
            recalled = await _timed(
                "recall",
                self.recall.Recall(
                    recall_pb2.RecallRequest(
                        user_id=req.user_id,
                        n=overrides.recall_size or self.settings.recall_size,
                        excluded_movie_ids=req.excluded.tolist(),  # recall leaves out rated movies itself
                        genres=list(req.genres),
                        quotas=dict(overrides.recall_quotas or {}),
                    ),
                    timeout=self._budget(context, "recall"),
                ),
            )
            ranked.movie_ids = np.asarray(recalled.movie_ids, dtype=np.int64)
            user_genres = list(recalled.user_top_genres)
            ranked.channels = np.asarray(recalled.channels, dtype=object)
            ranked.because_ids, ranked.because_by_text = because_of_recall(
                recalled.because_movie_ids, recalled.because_by_text, len(ranked.movie_ids)
            )
            recall_answered = True
            candidate_features = candidate_feature_matrix(
                recalled.features, list(recalled.feature_names), len(ranked.movie_ids)
            )
            known_user = await known_user_of(recalled, pool)
        except StageFailed as exc:
            self._fallback(degraded, "recall", f"{exc}; served popular movies")
            user_genres, candidate_features, recall_answered = [], None, False
            excluded, known_user = await pool.result()
            ranked.movie_ids, _ = popular_fallback(
                self.catalog,
                self.popularity_order,
                excluded,
                req.genres,
                overrides.recall_size or self.settings.recall_size,
            )
            ranked.channels = np.full(len(ranked.movie_ids), "popular", dtype=object)
            ranked.because_ids = np.zeros(len(ranked.movie_ids), dtype=np.int64)
            ranked.because_by_text = np.zeros(len(ranked.movie_ids), dtype=bool)
        ranked.channels = cold_start_channels(ranked.channels, known_user)

        # 3. ranker (KServe, Open Inference Protocol v2 over gRPC) for users with history; the cold path keeps
        # recall's order (recent popularity). Without recall's features (recall down) nothing can be ranked.
        model_version = ""
        ranked.scores = recall_order_scores(len(ranked.movie_ids))
        mode = overrides.ranker or "model"
        if mode == "random" and len(ranked.movie_ids):
            ranked.scores = random_order_scores(len(ranked.movie_ids), request_id)
        elif mode == "recall_order" or not len(ranked.movie_ids) or not uses_ranker(known_user):
            pass
        elif candidate_features is None:
            self._fallback(
                degraded, "ranker", "skipped: no candidate features from recall; served recall order"
            )
        else:
            try:
                scores, model_version, features_found = await self._rank(
                    req.user_id,
                    ranked.movie_ids,
                    candidate_features,
                    context,
                    ranker_model_name(self.settings.ranker_model_name, overrides.ranker_version),
                )
                ranked.scores = scores
                if known_user and not features_found:
                    self._fallback(
                        degraded,
                        "features",
                        "user features missing online; ranked with defaults",
                        kind="missing",
                    )
            except StageFailed as exc:
                self._fallback(degraded, "ranker", f"{exc}; served recall order")

        # 4. rerank: freshness, popularity, diversity (an arm may turn it off: top k by score).
        final_ids = final_scores = final_channels = None
        if overrides.rerank is not False:
            try:
                reranked = await _timed(
                    "rerank",
                    self.rerank.Rerank(
                        rerank_pb2.RerankRequest(
                            user_id=req.user_id,
                            k=req.k,
                            movie_ids=ranked.movie_ids.tolist(),
                            scores=ranked.scores.tolist(),
                            channels=ranked.channels.tolist(),
                            time=request.context.time if request.context.HasField("time") else None,
                            user_genres=user_genres,
                        ),
                        timeout=self._budget(context, "rerank"),
                    ),
                )
                final_ids = np.asarray(reranked.movie_ids, dtype=np.int64)
                final_scores = np.asarray(reranked.scores, dtype=np.float32)
                final_channels = np.asarray(reranked.channels, dtype=object)
            except StageFailed as exc:
                self._fallback(degraded, "rerank", f"{exc}; served top k by score")
        if final_ids is None:
            top = top_k_by_score(ranked.movie_ids, ranked.scores, req.k)
            final_ids, final_scores, final_channels = (
                ranked.movie_ids[top],
                ranked.scores[top],
                ranked.channels[top],
            )
        return ServedList(
            movie_ids=final_ids,
            scores=final_scores,
            channels=final_channels,
            because_ids=lookup(final_ids, ranked.movie_ids, ranked.because_ids),
            because_by_text=lookup(final_ids, ranked.movie_ids, ranked.because_by_text, False).astype(bool),
            candidate_scores=ranked.scores,
            user_genres=user_genres,
            recall_answered=recall_answered,
            model_version=model_version,
        )

    async def _rank(
        self,
        user_id: int,
        movie_ids: np.ndarray,
        candidate_features: np.ndarray,
        context: grpc.aio.ServicerContext,
        model_name: str,
    ) -> tuple[np.ndarray, str, bool]:
        user = InferInput("user_id", [1], "INT64")
        user.set_data_from_numpy(np.array([user_id], dtype=np.int64), binary_data=True)
        movies = InferInput("movie_ids", [len(movie_ids)], "INT64")
        movies.set_data_from_numpy(movie_ids.astype(np.int64), binary_data=True)
        features = InferInput("candidate_features", list(candidate_features.shape), "FP32")
        features.set_data_from_numpy(
            np.ascontiguousarray(candidate_features, dtype=np.float32), binary_data=True
        )
        request = InferRequest(
            model_name=model_name,
            infer_inputs=[user, movies, features],
            request_id=None,
        )
        response = await _timed("ranker", self.ranker.infer(request, timeout=self._budget(context, "ranker")))
        outputs = {output.name: output for output in response.outputs}
        scores = outputs["scores"].as_numpy().astype(np.float32).reshape(-1)
        if len(scores) != len(movie_ids):
            raise StageFailed(
                f"INVALID_REPLY: ranker returned {len(scores)} scores for {len(movie_ids)} movies"
            )
        found = (
            bool(outputs["user_features_found"].as_numpy().reshape(-1)[0])
            if "user_features_found" in outputs
            else True
        )
        version = response.model_version or ""
        if version:
            MODEL_INFO.labels(version).set(1)
        return scores, version, found

    async def RecordFeedback(
        self, request: recommend_pb2.RecordFeedbackRequest, context: grpc.aio.ServicerContext
    ):
        # Runs in a worker thread: it writes and fsyncs the event log and pushes to the online store.
        return await asyncio.to_thread(self.feedback.record, request)

    async def SimilarItems(
        self, request: recommend_pb2.SimilarItemsRequest, context: grpc.aio.ServicerContext
    ):
        movie_id = check_id(request.movie_id, "movie_id")
        k = check_k(request.k)
        if self.catalog.positions([movie_id])[0] < 0:
            raise NotFound(f"movie_id {movie_id} is not in the catalog")
        try:
            reply = await _timed(
                "recall",
                self.recall.SimilarMovies(
                    recall_pb2.SimilarMoviesRequest(movie_id=movie_id, k=k),
                    timeout=self._budget(context, "recall"),
                ),
            )
            ids, scores, channel = (
                np.asarray(reply.movie_ids, np.int64),
                np.asarray(reply.scores, np.float32),
                "item2item",
            )
            reasons = [similar_reason(self.catalog, movie_id)] * len(ids)
        except StageFailed as exc:
            STAGE_FALLBACKS.labels("recall", str(exc).split(":")[0]).inc()
            genres = tuple(self.catalog.genres_of(int(self.catalog.positions([movie_id])[0])))
            ids, scores = popular_fallback(
                self.catalog, self.popularity_order, np.array([movie_id]), genres, k
            )
            channel = "genre"
            reasons = item_reasons(
                self.catalog,
                ids,
                np.full(len(ids), channel, dtype=object),
                np.zeros(len(ids), np.int64),
                list(genres),
            )
        return recommend_pb2.SimilarItemsResponse(
            items=build_items(self.catalog, ids, scores, np.full(len(ids), channel, dtype=object), reasons),
            request_id=uuid.uuid4().hex,
        )


def upsert_encoder(workdir: Path, settings: Settings) -> UpsertEncoder | None:
    """The text encoder for UpsertMovie when it is on and the published version has text vectors to place
    new movies among (its manifest's ``content``)."""
    from training.artifacts import resolve_artifact  # imports torch, which the encoder needs anyway

    if not settings.content_on_upsert:
        return None
    try:
        manifest = json.loads((resolve_artifact(workdir) / "manifest.json").read_text())
    except (StarlingError, OSError, ValueError):
        return None
    if "content" not in manifest:
        return None
    return UpsertEncoder(settings.content_encoder_wait_s, settings.models_cache)


def build_servicers(workdir: Path) -> tuple[RecommendServicer, CatalogServicer]:
    """The recommend and catalog servicers over one catalog and one user history (with feedback)."""
    settings = get_settings()
    movies = pl.read_parquet(workdir / "movies.parquet")
    ratings = pl.read_parquet(
        workdir / "ratings.parquet", columns=["user_id", "movie_id", "rating", "event_timestamp"]
    )
    catalog = Catalog.from_frames(movies, ratings)
    history = UserHistory.from_frame(ratings, settings.like_threshold)
    follower = open_event_log(workdir).follower(RATING_STREAM)  # the file log or the Redis bus
    recorder = FeedbackRecorder(
        workdir,
        catalog,
        movies,
        history,
        get_feature_store(workdir, settings),
        settings.max_feedback_future_s,
        follower,
    )
    logged = follower.poll()  # feedback recorded before this start: replayed, online features repaired
    if logged is not None:
        recorder.apply_logged(logged)
    recommend = RecommendServicer(catalog, settings, recorder)

    def share(new_catalog: Catalog) -> None:  # one catalog for every servicer of this process
        recommend.set_catalog(new_catalog)
        recorder.catalog = new_catalog
        recorder.movies = new_catalog.frame

    catalog_servicer = CatalogServicer(
        catalog, history, workdir, recorder.store, on_catalog=share, encoder=upsert_encoder(workdir, settings)
    )
    upserted = catalog_servicer.movie_events.poll()  # movies added before this start
    if upserted is not None:
        catalog_servicer.apply_movies(upserted)
    return recommend, catalog_servicer


def compact_event_log() -> None:
    """Keep restart time bounded: older single files of both streams folded into segments."""
    event_log = open_event_log(get_settings().workdir)
    for stream in (RATING_STREAM, MOVIE_STREAM):
        event_log.compact(stream)


def main() -> None:
    settings = get_settings()

    async def register(server: grpc.aio.Server) -> list[str]:
        recommend, catalog = build_servicers(settings.workdir)
        # feedback written by other replicas: history and online features; failed pushes retried
        recorder = recommend.feedback
        recommend.follower_task = asyncio.get_running_loop().create_task(
            follow(
                recorder.follower,
                lambda logged: asyncio.to_thread(recorder.apply_logged, logged),
                settings.event_poll_s,
            )
        )
        recommend.retry_task = asyncio.get_running_loop().create_task(
            every(settings.event_poll_s * 5, recorder.retry_pending)
        )
        recommend.compact_task = asyncio.get_running_loop().create_task(every(60.0, compact_event_log))
        recommend.experiments_task = asyncio.get_running_loop().create_task(
            every(settings.experiments_poll_s, recommend.experiments.poll)
        )
        recommend.catalog_task = start_following_catalog(
            settings.workdir, catalog.apply_movies, settings.event_poll_s, catalog.movie_events
        )
        probes = {stage: grpc_health_probe(channel, 0.5) for stage, channel in recommend.channels.items()}
        probes["ranker"] = lambda: recommend.ranker.is_server_ready(timeout=0.5)
        monitors.append(DependencyMonitor(probes, RECOMMEND_SERVICE))
        recommend_pb2_grpc.add_RecommendServiceServicer_to_server(recommend, server)
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(catalog, server)
        servicers.append(catalog)
        return [RECOMMEND_SERVICE, CATALOG_SERVICE]

    async def register_admin(server: grpc.aio.Server) -> list[str]:
        catalog_pb2_grpc.add_CatalogServiceServicer_to_server(servicers[0], server)
        return [CATALOG_SERVICE]

    async def watch_dependencies(running: RunningService) -> None:
        tasks.append(asyncio.get_running_loop().create_task(monitors[0].run(running.health)))

    monitors: list[DependencyMonitor] = []
    servicers: list[CatalogServicer] = []  # the one catalog servicer, shared by both ports
    tasks: list[asyncio.Task] = []  # referenced, so the loop keeps them
    admin = AdminServer(register_admin, settings.admin_port, (f"/{CATALOG_SERVICE}/UpsertMovie",))
    run_service("recommend", register, settings.recommend_port, on_started=watch_dependencies, admin=admin)


if __name__ == "__main__":
    main()
