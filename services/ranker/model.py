"""The ranking model as a KServe ``Model``: load / preprocess / predict over the Open Inference Protocol v2.

Request inputs: ``user_id`` INT64 [1], ``movie_ids`` INT64 [N] and ``candidate_features`` FP32 [N, F] (what
recall computed for each candidate: starling.features.spec.CANDIDATE_FEATURES, in order; NaN = missing).
Outputs: ``scores`` FP32 [N] (the ranking model's scores, squashed into (0, 1); higher = rank first) and
``user_features_found`` BOOL [1].

- load: the published artifact (WORKDIR/models/current), the movie-feature cache read from the Feast online
  store for every catalog movie, encoded once (see encoding.py);
- preprocess: the user's row from the Feast online store (one key) + cached movie rows + the candidate
  features -> encoded batch;
- predict: the torch model on CUDA when present, else CPU (services/ranker/scoring.py), in a worker thread;
  requests that queue meanwhile are scored together in the next forward pass (services/ranker/batching.py).
A user's online row is kept between requests (services/ranker/user_cache.py) and evicted when the ratings
stream shows the user rated something. A background thread polls for a newly published model or a new materialization, builds the new state off
the request path and swaps it in with one assignment: requests in flight finish on the state they started with.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from kserve import InferOutput, InferRequest, InferResponse, Model
from kserve.errors import InvalidInput

from services.common.observability import FEATURE_FRESHNESS, MODEL_INFO, RANKER_BATCH_REQUESTS
from services.ranker.batching import MicroBatcher
from services.ranker.encoding import ServingEncoder, blank_user, user_columns
from services.ranker.scoring import score_encoded
from services.ranker.user_cache import UserFeatureCache
from starling.config import Settings, get_settings
from starling.eventbus import open_event_log
from starling.events import MOVIE_STREAM, RATING_STREAM
from starling.features.spec import CANDIDATE_FEATURES, MOVIE_FEATURE_COLUMNS, USER_FEATURE_COLUMNS
from starling.featurestore import MOVIE_VIEW, USER_VIEW, get_feature_store, registry_path
from training.artifacts import CURRENT, Artifact, load_artifact, resolve_artifact
from training.models.base import model_inputs

log = logging.getLogger("starling.ranker")
USER_REFS = [f"{USER_VIEW}:{column}" for column in USER_FEATURE_COLUMNS]
USER_SETTLE_S = 5.0  # after a rating event, how long a user's reads stay uncached (see user_cache.py)


def pick_device(preference: str) -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


@dataclass(frozen=True)
class RankerState:
    """Everything one request needs, swapped as a whole on reload."""

    artifact: Artifact
    model: torch.nn.Module
    encoder: ServingEncoder
    artifact_path: Path
    registry_mtime: float
    movie_frame: pl.DataFrame  # movie_id + MOVIE_FEATURE_COLUMNS as read from the online store
    users: UserFeatureCache  # online user rows read under this state (a new materialization: a new cache)


class RankerModel(Model):
    def __init__(
        self, name: str, workdir: Path, settings: Settings | None = None, version: str | None = None
    ) -> None:
        super().__init__(name)
        self.workdir = Path(workdir)
        self.version = version  # None: the published model, followed across publishes; else pinned
        self.settings = settings or get_settings()
        self.device = pick_device(self.settings.ranker_device)
        self.batching = self.settings.ranker_batching == "on" or (
            self.settings.ranker_batching == "auto" and self.device.type == "cuda"
        )
        self.state: RankerState | None = None
        self._store = None
        self._stop = threading.Event()
        self._batcher = MicroBatcher(
            partial(score_encoded, device=self.device), self.settings.ranker_batch_max_rows
        )

    # ------------------------------------------------------------------------------------------ loading
    def _online_frame(self, view: str, key: str, ids: np.ndarray, columns: tuple[str, ...]) -> pl.DataFrame:
        refs = [f"{view}:{column}" for column in columns]
        response = self._store.get_online_features(features=refs, entity_rows={key: ids.tolist()})
        return pl.from_arrow(response.to_arrow()).select(key, *columns)

    def _build_state(self) -> RankerState:
        artifact_path = resolve_artifact(self.workdir, self.version or CURRENT).resolve()
        artifact = load_artifact(artifact_path)
        model = artifact.model().to(self.device).eval()
        registry = registry_path(self.workdir, self.settings)
        self._store = get_feature_store(self.workdir, self.settings)
        event_log = open_event_log(self.workdir, self.settings)  # the file log or the Redis bus
        self._movie_events = event_log.follower(MOVIE_STREAM, start_at_end=True)
        self._rating_events = event_log.follower(RATING_STREAM, start_at_end=True)
        catalog_ids = pl.read_parquet(self.workdir / "movies.parquet", columns=["movie_id"])["movie_id"]
        added_ids = event_log.read_all(MOVIE_STREAM)["movie_id"]  # movies upserted while serving
        movie_ids = pl.concat([catalog_ids, added_ids]).unique().sort().to_numpy()
        movies = self._online_frame(MOVIE_VIEW, "movie_id", movie_ids, MOVIE_FEATURE_COLUMNS)
        encoder = ServingEncoder(artifact.spec, movies)
        self._warm_up(model, encoder, movie_ids[: self.settings.recall_size])
        mtime = registry.stat().st_mtime if registry.exists() else 0.0
        log.info(
            "ranker state built",
            extra={"version": artifact.version, "movies": len(movie_ids), "device": str(self.device)},
        )
        users = UserFeatureCache(
            self.read_user_features,
            ttl_s=self.settings.ranker_user_cache_ttl_s,
            settle_s=USER_SETTLE_S,
            max_users=self.settings.ranker_user_cache_size,
        )
        return RankerState(artifact, model, encoder, artifact_path, mtime, movies, users)

    def refresh_movies(self, movie_ids: np.ndarray) -> None:
        """Re-read these movies' online features (new or changed movies) and swap in a re-encoded cache."""
        state = self.state
        fresh = self._online_frame(MOVIE_VIEW, "movie_id", np.unique(movie_ids), MOVIE_FEATURE_COLUMNS)
        frame = pl.concat(
            [state.movie_frame.filter(~pl.col("movie_id").is_in(fresh["movie_id"].implode())), fresh]
        )
        self._install(replace(state, encoder=ServingEncoder(state.artifact.spec, frame), movie_frame=frame))

    def user_features(self, user_id: int) -> tuple[dict[str, object], bool]:
        """One user's online features as plain values (None = null), and whether the store knows the user;
        from the cache when it has them."""
        return self.state.users.get(user_id)

    def read_user_features(self, user_id: int) -> tuple[dict[str, object], bool]:
        """One user's online features read from the Feast online store (see :meth:`user_features`)."""
        row = self._store.get_online_features(
            features=USER_REFS, entity_rows=[{"user_id": user_id}]
        ).to_dict()
        values = {column: row[column][0] for column in USER_FEATURE_COLUMNS}
        return values, values["user_rating_count"] is not None

    def _warm_up(self, model: torch.nn.Module, encoder: ServingEncoder, movie_ids: np.ndarray) -> None:
        """One online read and one forward pass, so the first real request pays no one-off costs."""
        self.read_user_features(0)
        features = np.full((len(movie_ids), len(CANDIDATE_FEATURES)), np.nan, dtype=np.float32)
        score_encoded(model, encoder.encode(blank_user(0), movie_ids, features), self.device)

    def _install(self, state: RankerState) -> None:
        previous = self.state
        self.state = state  # one reference assignment: atomic for requests in flight
        if previous is not None and previous.artifact.version != state.artifact.version:
            MODEL_INFO.remove(previous.artifact.version)
        MODEL_INFO.labels(state.artifact.version).set(1)
        FEATURE_FRESHNESS.set(state.registry_mtime)

    def load(self) -> bool:
        self._install(self._build_state())
        self.ready = True
        threading.Thread(target=self._watch, name="ranker-reload", daemon=True).start()
        threading.Thread(target=self._follow_ratings, name="ranker-ratings", daemon=True).start()
        return self.ready

    def _needs_reload(self, state: RankerState) -> bool:
        try:
            current = resolve_artifact(self.workdir, self.version or CURRENT).resolve()
        except Exception:  # a publish in progress or a removed pointer: keep serving what we have
            return False
        registry = registry_path(self.workdir, self.settings)
        mtime = registry.stat().st_mtime if registry.exists() else 0.0
        return current != state.artifact_path or mtime > state.registry_mtime

    def reload_if_changed(self) -> bool:
        """Rebuild and swap the state when a new model was published or features were materialized."""
        state = self.state
        if state is None or not self._needs_reload(state):
            return False
        self._install(self._build_state())
        return True

    def _watch(self) -> None:
        while not self._stop.wait(self.settings.ranker_refresh_s):
            try:
                if self.reload_if_changed():
                    log.info("reloaded", extra={"version": self.state.artifact.version})
                upserted = self._movie_events.poll()
                if upserted is not None:
                    self.refresh_movies(upserted["movie_id"].to_numpy())
                    log.info("movies refreshed", extra={"movies": upserted.height})
            except Exception:
                log.exception("reload failed; still serving the previous model")

    def _follow_ratings(self) -> None:
        """Evict the users who rated something from the user cache, as soon as their events appear."""
        while not self._stop.is_set():
            try:
                events = self._rating_events.poll()
                if events is not None:
                    self.state.users.rated(events["user_id"].unique().to_list())
            except Exception:
                log.exception("following the ratings failed; cached users expire by their TTL")
            if not self._rating_events.waits:
                self._stop.wait(self.settings.event_poll_s)

    def stop(self) -> None:
        self._stop.set()

    # ------------------------------------------------------------------------------------------ serving
    def get_input_types(self) -> list[dict[str, Any]]:
        """ModelMetadata inputs (REST GET /v2/models/<name>, gRPC ModelMetadata); -1 = any size."""
        return [
            {"name": "user_id", "datatype": "INT64", "shape": [1]},
            {"name": "movie_ids", "datatype": "INT64", "shape": [-1]},
            {"name": "candidate_features", "datatype": "FP32", "shape": [-1, len(CANDIDATE_FEATURES)]},
        ]

    def get_output_types(self) -> list[dict[str, Any]]:
        return [
            {"name": "scores", "datatype": "FP32", "shape": [-1]},
            {"name": "user_features_found", "datatype": "BOOL", "shape": [1]},
        ]

    async def preprocess(self, payload: InferRequest | dict, headers: dict[str, str] | None = None) -> Any:
        return self._checked_and_encoded(payload)

    def _checked_and_encoded(self, payload: InferRequest | dict) -> Any:
        if not isinstance(payload, InferRequest):
            raise InvalidInput(
                "the ranker speaks the Open Inference Protocol v2 only (inputs user_id, movie_ids)"
            )
        inputs = {i.name: i for i in payload.inputs}
        missing = {"user_id", "movie_ids"} - set(inputs)
        if missing:
            raise InvalidInput(
                f"missing input(s) {sorted(missing)}; expected user_id INT64 [1], movie_ids INT64 [N], "
                f"candidate_features FP32 [N, {len(CANDIDATE_FEATURES)}]"
            )
        user_ids = _tensor(inputs["user_id"]).reshape(-1)
        movie_ids = _tensor(inputs["movie_ids"]).reshape(-1)
        candidate_features = None
        if "candidate_features" in inputs:
            candidate_features = _tensor(inputs["candidate_features"])
            if candidate_features.dtype != np.float32:
                raise InvalidInput("candidate_features must be an FP32 tensor")
            if candidate_features.shape != (movie_ids.size, len(CANDIDATE_FEATURES)):
                raise InvalidInput(
                    f"candidate_features must be [{movie_ids.size}, {len(CANDIDATE_FEATURES)}] (one row per "
                    f"movie id; columns {', '.join(CANDIDATE_FEATURES)}), got {list(candidate_features.shape)}"
                )
            if np.isinf(candidate_features).any():
                raise InvalidInput("candidate_features must be finite numbers or NaN (missing)")
        if user_ids.size != 1:
            raise InvalidInput(f"user_id must hold exactly one id, got {user_ids.size}")
        if not np.issubdtype(user_ids.dtype, np.integer) or not np.issubdtype(movie_ids.dtype, np.integer):
            raise InvalidInput("user_id and movie_ids must be integer tensors (INT64)")
        if not 1 <= movie_ids.size <= self.settings.ranker_max_movies:
            raise InvalidInput(
                f"movie_ids must hold 1..{self.settings.ranker_max_movies} ids, got {movie_ids.size}"
            )
        if user_ids[0] < 0 or movie_ids.min() < 0:
            raise InvalidInput("ids must be >= 0")
        state = self.state
        if state.artifact.spec.candidate_stats and candidate_features is None:
            raise InvalidInput(
                f"missing input candidate_features: model {state.artifact.version} ranks recalled candidates "
                f"with FP32 [N, {len(CANDIDATE_FEATURES)}] features ({', '.join(CANDIDATE_FEATURES)})"
            )
        user_id = int(user_ids[0])
        values, found = self.user_features(user_id)
        encoded = state.encoder.encode(
            user_columns(user_id, values),
            movie_ids.astype(np.int64),
            candidate_features,
            keys=model_inputs(state.model),
        )
        return state, encoded, found, payload.id

    async def predict(self, payload: Any, headers: dict[str, str] | None = None) -> InferResponse:
        state, encoded, found, request_id = payload
        if self.batching:  # in a worker thread, so the loop takes the next requests
            scores = await self._batcher.submit(state.model, encoded)
        else:  # batching off: on the loop, without a worker thread's hand-over
            RANKER_BATCH_REQUESTS.observe(1)
            scores = score_encoded(state.model, encoded, self.device)
        scores_out = InferOutput("scores", shape=[len(scores)], datatype="FP32")
        scores_out.set_data_from_numpy(scores, binary_data=True)
        found_out = InferOutput("user_features_found", shape=[1], datatype="BOOL")
        found_out.set_data_from_numpy(np.array([found]), binary_data=False)
        return InferResponse(
            response_id=request_id or "",
            model_name=self.name,
            model_version=state.artifact.version,
            infer_outputs=[scores_out, found_out],
        )


def _tensor(infer_input: Any) -> np.ndarray:
    """One request input as an array; data that does not fit its declared shape or datatype is bad input."""
    try:
        return infer_input.as_numpy()
    except (ValueError, TypeError, OverflowError) as exc:
        raise InvalidInput(
            f"input {infer_input.name}: data does not match shape {list(infer_input.shape)} and datatype "
            f"{infer_input.datatype} ({exc})"
        ) from exc


def torch_threads(settings: Settings) -> None:
    """Serving answers one small batch at a time: one or two threads beat many contended ones."""
    torch.set_num_threads(settings.ranker_torch_threads)
