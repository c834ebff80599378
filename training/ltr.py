"""Learning-to-rank data: what recall returns for users at past cut-offs, labelled by what they liked next.

For a cut-off T and a window [T, end): the snapshot as of T (training/replay.py) recalls candidates for
every user who liked at least one movie in the window that they had not rated before T; a candidate's label
is whether the user liked it in the window. One group = one user's request, the unit of the ranking loss and
of NDCG. Training windows end where the valid split begins, so no label comes from the valid or test period.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import numpy as np
import polars as pl
import torch

from services.ranker.encoding import ServingEncoder, user_columns
from services.rerank.logic import RerankRules
from starling.features.spec import CANDIDATE_FEATURES, FeatureSpec
from training.data import TrainingDataError, check_encoded
from training.models.base import FEATURE_KEYS
from training.replay import OfflinePipeline, Snapshot


@dataclass(frozen=True)
class WindowConfig:
    """How training windows are laid out before the valid cut-off."""

    horizon_days: float = 180.0
    step_days: float = 45.0
    windows: int = 40
    #: Users per window at most (a deterministic sample by user id), bounding work on large datasets.
    max_users: int = 2000
    #: A window needs at least this share of the ratings before its cut-off (skips the sparse beginning).
    min_history_share: float = 0.05
    #: Also learn from users without history at the cut-off (the ranker itself serves only users with history;
    #: their groups teach it the item side: what is popular, new, well rated).
    include_cold: bool = True


def window_targets(
    ratings: pl.DataFrame, start: datetime, end: datetime | None, like_threshold: float
) -> pl.DataFrame:
    """(user_id, movie_id) liked in [start, end) and not rated before ``start``."""
    before = ratings.filter(pl.col("event_timestamp") < start).select("user_id", "movie_id").unique()
    window = ratings.filter(pl.col("event_timestamp") >= start)
    if end is not None:
        window = window.filter(pl.col("event_timestamp") < end)
    liked = window.filter(pl.col("rating") >= like_threshold).select("user_id", "movie_id").unique()
    return liked.join(before, on=["user_id", "movie_id"], how="anti").sort("user_id", "movie_id")


def training_windows(
    ratings: pl.DataFrame, valid_cutoff: datetime, config: WindowConfig
) -> list[tuple[datetime, datetime]]:
    """(cut-off, window end) pairs, the latest ending at ``valid_cutoff``, each ``step_days`` earlier."""
    times = ratings["event_timestamp"].sort()
    minimum = times[min(int(len(times) * config.min_history_share), len(times) - 1)]
    horizon, step = timedelta(days=config.horizon_days), timedelta(days=config.step_days)
    windows = []
    for i in range(config.windows):
        start = valid_cutoff - horizon - i * step
        if start <= minimum:
            break
        windows.append((start, start + horizon))
    return windows


def _mix64(values: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer over uint64 values: a fast, well-mixed, deterministic hash."""
    x = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def sample_users(user_ids: np.ndarray, limit: int, salt: str) -> np.ndarray:
    """At most ``limit`` of ``user_ids`` (sorted), chosen by a hash of (salt, id): deterministic, unbiased."""
    if len(user_ids) <= limit:
        return user_ids
    seed = np.uint64(int.from_bytes(hashlib.blake2b(salt.encode(), digest_size=8).digest(), "little"))
    keys = _mix64(np.asarray(user_ids, dtype=np.int64).view(np.uint64) ^ seed)
    return np.sort(user_ids[np.argsort(keys, kind="stable")[:limit]])


def group_rows(offsets: np.ndarray, groups: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row indices of ``groups`` (in that order; group g is rows offsets[g]:offsets[g + 1]) and, per row, the
    position of its group among ``groups``."""
    sizes = offsets[groups + 1] - offsets[groups]
    local = np.repeat(np.arange(len(groups)), sizes)
    starts = np.repeat(offsets[groups] - (np.cumsum(sizes) - sizes), sizes)
    return starts + np.arange(int(sizes.sum())), local


@dataclass
class CandidateSet:
    """Recalled candidates of many users at one cut-off; group g is rows offsets[g]:offsets[g + 1]."""

    name: str
    user_ids: np.ndarray  # [groups]
    offsets: np.ndarray  # [groups + 1]
    movie_ids: np.ndarray  # [rows]
    features: np.ndarray  # float32 [rows, len(CANDIDATE_FEATURES)]
    labels: np.ndarray  # float32 [rows]
    n_relevant: np.ndarray  # [groups]: liked movies in the window, recalled or not
    known: np.ndarray  # bool [groups]: the user had history at the cut-off
    user_values: list[dict[str, object]] = field(repr=False)  # the online store's answer per group
    movie_features: pl.DataFrame = field(repr=False)  # the snapshot's movie features, for encoding

    def __len__(self) -> int:
        return len(self.movie_ids)

    @property
    def groups(self) -> int:
        return len(self.user_ids)

    def frame(self) -> pl.DataFrame:
        """The candidate features as named columns (for fitting their statistics)."""
        return pl.DataFrame(self.features, schema=list(CANDIDATE_FEATURES), orient="row")

    def select(self, groups: np.ndarray) -> CandidateSet:
        """The subset of groups ``groups`` (sorted indices)."""
        rows, _ = group_rows(self.offsets, groups)
        sizes = self.offsets[groups + 1] - self.offsets[groups]
        return CandidateSet(
            self.name,
            self.user_ids[groups],
            np.r_[0, np.cumsum(sizes)].astype(np.int64),
            self.movie_ids[rows],
            self.features[rows],
            self.labels[rows],
            self.n_relevant[groups],
            self.known[groups],
            [self.user_values[g] for g in groups.tolist()],
            self.movie_features,
        )


def build_candidate_set(
    name: str, snapshot: Snapshot, targets: pl.DataFrame, users: np.ndarray, recall_size: int
) -> CandidateSet:
    """Recall for each of ``users`` (sorted) at the snapshot; label what they liked in ``targets``."""
    pipeline = OfflinePipeline(snapshot, None, RerankRules(), recall_size)
    relevant = targets.group_by("user_id").agg(pl.col("movie_id"))
    relevant_of = dict(zip(relevant["user_id"].to_list(), relevant["movie_id"].to_list(), strict=True))
    movie_ids, features, labels, sizes, n_relevant, known, values = [], [], [], [], [], [], []
    for user_id in users.tolist():  # one recall request per user, as the service answers them
        result, is_known = pipeline.recall_for(user_id)
        ids = snapshot.recall.movie_ids[result.rows]
        liked = np.asarray(relevant_of.get(user_id, []), dtype=np.int64)
        movie_ids.append(ids)
        features.append(result.features)
        labels.append(np.isin(ids, liked).astype(np.float32))
        sizes.append(len(ids))
        n_relevant.append(len(liked))
        known.append(is_known)
        values.append(snapshot.users.values(user_id)[0])
    n_features = len(CANDIDATE_FEATURES)
    return CandidateSet(
        name,
        np.asarray(users, dtype=np.int64),
        np.r_[0, np.cumsum(sizes)].astype(np.int64),
        np.concatenate(movie_ids) if movie_ids else np.empty(0, np.int64),
        np.concatenate(features) if features else np.empty((0, n_features), np.float32),
        np.concatenate(labels) if labels else np.empty(0, np.float32),
        np.asarray(n_relevant, dtype=np.int64),
        np.asarray(known, dtype=bool),
        values,
        snapshot.movie_features,
    )


@dataclass
class EncodedGroups:
    """Candidate sets encoded for a model: whole-set tensors and the group layout."""

    features: dict[str, torch.Tensor]
    labels: torch.Tensor  # float32 [rows]
    offsets: np.ndarray  # [groups + 1]
    n_relevant: np.ndarray  # [groups]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def groups(self) -> int:
        return len(self.offsets) - 1


def encode_candidate_sets(sets: list[CandidateSet], spec: FeatureSpec) -> EncodedGroups:
    """Encode every group with the serving encoder (one user row + cached movie rows + candidate features)."""
    parts: dict[str, list[np.ndarray]] = {key: [] for key in FEATURE_KEYS}
    labels, sizes, n_relevant = [], [], []
    for candidate_set in sets:
        encoder = ServingEncoder(spec, candidate_set.movie_features)
        for g in range(candidate_set.groups):  # one encode per group, as the ranker encodes a request
            rows = slice(candidate_set.offsets[g], candidate_set.offsets[g + 1])
            user = user_columns(int(candidate_set.user_ids[g]), candidate_set.user_values[g])
            encoded = encoder.encode(user, candidate_set.movie_ids[rows], candidate_set.features[rows])
            for key in FEATURE_KEYS:
                parts[key].append(encoded[key])
        labels.append(candidate_set.labels)
        sizes.append(np.diff(candidate_set.offsets))
        n_relevant.append(candidate_set.n_relevant)
    if not labels:
        raise TrainingDataError("no candidate set to encode")
    arrays = {key: np.ascontiguousarray(np.concatenate(chunks)) for key, chunks in parts.items()}
    check_encoded(arrays, spec, ", ".join(s.name for s in sets))
    features = {key: torch.from_numpy(array) for key, array in arrays.items()}
    return EncodedGroups(
        features,
        torch.from_numpy(np.concatenate(labels).astype(np.float32)),
        np.r_[0, np.cumsum(np.concatenate(sizes))].astype(np.int64),
        np.concatenate(n_relevant).astype(np.int64),
    )
