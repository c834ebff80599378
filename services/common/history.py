"""Every user's rating history as compressed sparse rows (one sorted array per column plus offsets).

Loaded once from ratings.parquet; ``rated`` and ``liked`` are slices, no per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from starling.errors import StarlingError


@dataclass(frozen=True)
class UserHistory:
    user_ids: np.ndarray  # int64, sorted unique users
    offsets: np.ndarray  # int64 [users + 1]: user i's rows are offsets[i]:offsets[i + 1]
    movie_ids: np.ndarray  # int64, each user's ratings oldest first
    ratings: np.ndarray  # float32
    like_threshold: float

    def _slice(self, user_id: int) -> slice | None:
        i = int(np.searchsorted(self.user_ids, user_id))
        if i >= len(self.user_ids) or self.user_ids[i] != user_id:
            return None
        return slice(int(self.offsets[i]), int(self.offsets[i + 1]))

    def knows(self, user_id: int) -> bool:
        return self._slice(user_id) is not None

    def rated(self, user_id: int) -> np.ndarray:
        """Movies the user has rated (oldest first); empty for an unknown user."""
        rows = self._slice(user_id)
        return self.movie_ids[rows] if rows else np.empty(0, dtype=np.int64)

    def liked(self, user_id: int, limit: int | None = None) -> np.ndarray:
        """Movies the user liked (rating >= threshold), most recent first."""
        rows = self._slice(user_id)
        if rows is None:
            return np.empty(0, dtype=np.int64)
        movies, ratings = self.movie_ids[rows], self.ratings[rows]
        liked = movies[ratings >= self.like_threshold][::-1]
        return liked[:limit] if limit is not None else liked

    @classmethod
    def from_frame(cls, ratings: pl.DataFrame, like_threshold: float) -> UserHistory:
        ordered = ratings.sort(["user_id", "event_timestamp", "movie_id"])
        users = ordered["user_id"].to_numpy()
        starts = np.flatnonzero(np.r_[True, users[1:] != users[:-1]]) if len(users) else np.empty(0, np.int64)
        return cls(
            user_ids=users[starts].astype(np.int64),
            offsets=np.r_[starts, len(users)].astype(np.int64),
            movie_ids=ordered["movie_id"].to_numpy().astype(np.int64),
            ratings=ordered["rating"].to_numpy().astype(np.float32),
            like_threshold=like_threshold,
        )

    @classmethod
    def from_workdir(cls, workdir: Path, like_threshold: float) -> UserHistory:
        path = workdir / "ratings.parquet"
        if not path.is_file():
            raise StarlingError(f"{path} not found: run `starling data ingest SOURCE --out {workdir}` first")
        frame = pl.read_parquet(path, columns=["user_id", "movie_id", "rating", "event_timestamp"])
        return cls.from_frame(frame, like_threshold)
