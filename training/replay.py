"""The served pipeline, replayed offline: the second caller of the services' own logic.

A :class:`Snapshot` is everything the running services read: the catalog, every user's history, the recall
state (services/recall/state.py), and the user and movie features the online store serves. It is either what
the stack serves now (:func:`served_snapshot`) or what it would have served at a cut-off
(:func:`snapshot_as_of`: only ratings before it, the recall state fitted on them with the artifact's
parameters, the entity features as of it).

:class:`OfflinePipeline` answers one request the way RecommendService does, stage by stage, with the same
functions: the eligible pool (services/candidates/logic.py), recall (services/recall/logic.py, exact vector
search instead of Milvus), the ranker's encoding and scoring (services/ranker/), the cold path and fallbacks
(services/recommend/logic.py) and re-ranking (services/rerank/logic.py). Training builds its candidate sets
with it and `starling evaluate` scores it, so what is measured is what is served
(tests/test_replay.py checks it against the running stack).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import polars as pl
import torch
from torch import nn

from services.candidates.logic import eligible_pool
from services.common.catalog import Catalog
from services.common.experiments import Overrides
from services.common.history import UserHistory, latest_ratings
from services.ranker.encoding import ServingEncoder, user_columns
from services.ranker.scoring import score_encoded
from services.recall.features import UserProfile, channel_scores, user_profile
from services.recall.logic import ANN_MARGIN, RecallResult, exact_nearest, recall
from services.recall.state import ContentTable, RecallModel, RecallParams, RecallState
from services.recommend.logic import (
    cold_start_channels,
    random_order_scores,
    recall_order_scores,
    top_k_by_score,
    uses_ranker,
)
from services.rerank.logic import RerankRules, rerank_candidates
from starling.features.spec import MOVIE_FEATURE_COLUMNS, USER_FEATURE_COLUMNS, FeatureSpec
from training.models.base import model_inputs


class UserFeatureTable:
    """User features as the online store answers them: plain values per column, None for null."""

    def __init__(self, frame: pl.DataFrame) -> None:
        frame = frame.select("user_id", *USER_FEATURE_COLUMNS)
        self.columns = {name: frame[name].to_list() for name in USER_FEATURE_COLUMNS}
        self.row_of = dict(zip(frame["user_id"].to_list(), range(frame.height), strict=True))

    def values(self, user_id: int) -> tuple[dict[str, object], bool]:
        row = self.row_of.get(user_id)
        if row is None:
            return dict.fromkeys(USER_FEATURE_COLUMNS), False
        return {name: column[row] for name, column in self.columns.items()}, True


@dataclass
class Snapshot:
    catalog: Catalog
    history: UserHistory
    recall: RecallModel
    users: UserFeatureTable
    movie_features: pl.DataFrame  # movie_id + MOVIE_FEATURE_COLUMNS
    like_threshold: float

    def profile(self, user_id: int) -> UserProfile:
        return user_profile(self.recall, *self.history.latest(user_id), self.like_threshold)


def snapshot_as_of(
    ratings: pl.DataFrame,
    movies: pl.DataFrame,
    cutoff: datetime | None,
    params: RecallParams,
    like_threshold: float,
    state: RecallState | None = None,
) -> Snapshot:
    """The state the stack would serve at ``cutoff`` had it been trained then (every rating when None).

    ``state`` reuses an already fitted recall state of exactly these ratings.
    """
    from starling.features.build import compute_entity_features
    from training.recall_fit import fit_recall_state

    history = ratings if cutoff is None else ratings.filter(pl.col("event_timestamp") < cutoff)
    catalog = Catalog.from_frames(movies, history)
    state = state or fit_recall_state(history, catalog.movie_ids, params, like_threshold)
    user_features, movie_features = compute_entity_features(history, movies, as_of=cutoff)
    return Snapshot(
        catalog=catalog,
        history=UserHistory.from_frame(history, like_threshold),
        recall=RecallModel.align(state, catalog.movie_ids, catalog.release_years, catalog.genre_matrix),
        users=UserFeatureTable(user_features),
        movie_features=movie_features.select("movie_id", *MOVIE_FEATURE_COLUMNS),
        like_threshold=like_threshold,
    )


def served_snapshot(
    workdir: Path, state: RecallState, like_threshold: float, content: ContentTable | None = None
) -> Snapshot:
    """What the services hold after a start on ``workdir``: ratings.parquet plus the feedback log, the
    catalog plus its upserts, the published recall state with its text vectors (``content``) and those the
    upserts carried, and the materialized entity features."""
    from services.common.following import apply_rating_events
    from starling.content import content_of_upserts
    from starling.eventbus import open_event_log
    from starling.events import MOVIE_STREAM, RATING_STREAM

    workdir = Path(workdir)
    catalog = Catalog.from_workdir(workdir)
    event_log = open_event_log(workdir)  # the file log or the Redis bus, as the services read it
    upserted = event_log.read_all(MOVIE_STREAM)
    content = (content or ContentTable.empty()).upserted(*content_of_upserts(upserted))
    if upserted.height:
        catalog = catalog.upserted(upserted)
    history = UserHistory.from_workdir(workdir, like_threshold)
    apply_rating_events(history, event_log.read_all(RATING_STREAM))
    features = workdir / "features"
    return Snapshot(
        catalog=catalog,
        history=history,
        recall=RecallModel.align(
            state,
            catalog.movie_ids,
            catalog.release_years,
            catalog.genre_matrix,
            content,
            upserted=upserted["movie_id"].to_numpy() if upserted.height else None,
        ),
        users=UserFeatureTable(pl.read_parquet(features / "user_features.parquet")),
        movie_features=pl.read_parquet(features / "movie_features.parquet").select(
            "movie_id", *MOVIE_FEATURE_COLUMNS
        ),
        like_threshold=like_threshold,
    )


@dataclass
class Ranker:
    """A ranking model as the KServe ranker runs it: the serving encoder over the snapshot's movie features."""

    model: nn.Module
    encoder: ServingEncoder
    device: torch.device

    @classmethod
    def build(cls, model: nn.Module, spec: FeatureSpec, snapshot: Snapshot) -> Ranker:
        device = next(model.parameters()).device
        return cls(model.eval(), ServingEncoder(spec, snapshot.movie_features), device)

    def encode(
        self, user_id: int, values: dict[str, object], movie_ids: np.ndarray, features: np.ndarray
    ) -> dict[str, np.ndarray]:
        return self.encoder.encode(
            user_columns(user_id, values), movie_ids, features, keys=model_inputs(self.model)
        )

    def score(
        self, user_id: int, values: dict[str, object], movie_ids: np.ndarray, features: np.ndarray
    ) -> np.ndarray:
        return score_encoded(self.model, self.encode(user_id, values, movie_ids, features), self.device)


@dataclass
class Served:
    """One answer with its stages: recall's candidates (in recall order), the scores they were ranked with,
    and the final list after re-ranking."""

    user_id: int
    known_user: bool
    candidates: np.ndarray  # movie ids, recall order
    channels: np.ndarray
    features: np.ndarray
    scores: np.ndarray  # the ranker's, or recall-order scores for the cold path
    movie_ids: np.ndarray  # final
    final_scores: np.ndarray
    final_channels: np.ndarray
    lists: dict[int, np.ndarray]  # the answer to a request for k movies, for k and every ``also`` k


class OfflinePipeline:
    def __init__(
        self, snapshot: Snapshot, ranker: Ranker | None, rules: RerankRules, recall_size: int = 500
    ) -> None:
        self.snapshot = snapshot
        self.ranker = ranker
        self.rules = rules
        self.recall_size = recall_size

    def recall_for(
        self,
        user_id: int,
        genres: tuple[str, ...] = (),
        exclude: np.ndarray | None = None,
        overrides: Overrides | None = None,
    ) -> tuple[RecallResult, bool]:
        """Stages 1-2: the eligible pool, then recall; and whether the user is known (has history)."""
        overrides = overrides or Overrides()
        snapshot = self.snapshot
        excluded = np.asarray(exclude if exclude is not None else [], dtype=np.int64)
        pool = eligible_pool(snapshot.catalog, snapshot.history.rated(user_id), excluded, genres)
        eligible = pool.mask(snapshot.catalog)
        model = snapshot.recall
        profile = snapshot.profile(user_id)
        scores = channel_scores(model, profile)
        quotas = {**model.params.quotas, **(overrides.recall_quotas or {})}
        hits = np.empty(0, dtype=np.int64)
        if scores.user_vector is not None and quotas.get("embedding"):
            hits = exact_nearest(model, scores.user_vector, quotas["embedding"] + ANN_MARGIN, eligible)
        result = recall(
            model, profile, eligible, overrides.recall_size or self.recall_size, scores, hits, quotas
        )
        return result, snapshot.history.knows(user_id)

    def recommend(
        self,
        user_id: int,
        k: int,
        genres: tuple[str, ...] = (),
        exclude: np.ndarray | None = None,
        current_year: int | None = None,
        also: tuple[int, ...] = (),
        overrides: Overrides | None = None,
        request_id: str = "0" * 32,
    ) -> Served:
        """The answer to Recommend(user_id, k, genres, exclude); ``also``: answers for other k from the same
        candidates and scores (re-ranking can depend on k). ``overrides``: an experiment arm's knobs, as
        RecommendService applies them (``request_id`` seeds the random-order arm)."""
        snapshot = self.snapshot
        overrides = overrides or Overrides()
        result, known = self.recall_for(user_id, genres, exclude, overrides)
        movie_ids = snapshot.recall.movie_ids[result.rows]
        channels = cold_start_channels(result.channels, known)
        scores = recall_order_scores(len(movie_ids))
        mode = overrides.ranker or "model"
        if mode == "random" and len(movie_ids):
            scores = random_order_scores(len(movie_ids), request_id)
        elif mode == "model" and uses_ranker(known) and self.ranker is not None and len(movie_ids):
            values, _ = snapshot.users.values(user_id)
            scores = self.ranker.score(user_id, values, movie_ids, result.features)
        answers = {}
        for size in (k, *also):
            if overrides.rerank is False:
                top = top_k_by_score(movie_ids, scores, size)
                answers[size] = (top, scores[top])
                continue
            answers[size] = rerank_candidates(
                snapshot.catalog,
                self.rules,
                movie_ids,
                scores,
                k=size,
                current_year=current_year or datetime.now(UTC).year,
                user_genres=[snapshot.catalog.genre_names[g] for g in result.top_genres.tolist()],
            )
        top, final_scores = answers[k]
        return Served(
            user_id, known, movie_ids, channels, result.features, scores,
            movie_ids[top], final_scores, channels[top],
            {size: movie_ids[positions] for size, (positions, _) in answers.items()},
        )  # fmt: skip


class HistoryUntil:
    """A user history as it was just before a moment: events at or after ``before_us`` are not there yet
    (the offline replay feeds each earlier event back, as the live stack would have received it)."""

    def __init__(self, history: UserHistory, before_us: int) -> None:
        self.history = history
        self.before_us = before_us

    def history_of(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        movies, ratings, timestamps = self.history.history_of(user_id)
        keep = timestamps < self.before_us
        return movies[keep], ratings[keep], timestamps[keep]

    def latest(self, user_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return latest_ratings(*self.history_of(user_id))

    def rated(self, user_id: int) -> np.ndarray:
        return self.history_of(user_id)[0]

    def knows(self, user_id: int) -> bool:
        return len(self.history_of(user_id)[0]) > 0
