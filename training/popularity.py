"""The all-time popularity scorer: a movie's number of ratings in the train split is its score for every user.

Stored in each artifact (popularity.parquet) as the reference the quality gate's popularity baseline stands
for; retrieval baselines (training/baselines.py) count ratings before each cut-off the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from services.common.id_index import IdIndex
from starling.errors import StarlingError


@dataclass(frozen=True)
class PopularityScorer:
    movie_ids: np.ndarray  # int64, sorted ascending, unique
    rating_counts: np.ndarray  # int64, aligned with movie_ids

    @classmethod
    def fit(cls, train_movie_ids: np.ndarray) -> PopularityScorer:
        """Count the train rows of each movie (one row = one rating)."""
        movie_ids, counts = np.unique(np.asarray(train_movie_ids, dtype=np.int64), return_counts=True)
        return cls(movie_ids, counts.astype(np.int64))

    @classmethod
    def from_samples(cls, samples: pl.DataFrame) -> PopularityScorer:
        """Fit on the rows of ``samples`` whose ``split`` is "train" (samples.parquet layout)."""
        missing = [name for name in ("movie_id", "split") if name not in samples.columns]
        if missing:
            raise StarlingError(f"popularity scorer: samples lack columns {missing}")
        return cls.fit(samples.filter(pl.col("split") == "train")["movie_id"].to_numpy())

    def score(self, movie_ids: np.ndarray) -> np.ndarray:
        """Train rating count of each movie (0 for movies never rated in train), as float64."""
        position = IdIndex(self.movie_ids).positions(movie_ids)
        if len(self.movie_ids) == 0:
            return np.zeros(position.shape, dtype=np.float64)
        return np.where(position >= 0, self.rating_counts[np.maximum(position, 0)], 0).astype(np.float64)

    def score_frame(self, rows: pl.DataFrame) -> np.ndarray:
        """Scores for (user, movie) rows of a frame with a ``movie_id`` column; the user does not matter."""
        if "movie_id" not in rows.columns:
            raise StarlingError("popularity scorer: rows lack a movie_id column")
        return self.score(rows["movie_id"].to_numpy())

    def save(self, path: Path) -> None:
        pl.DataFrame({"movie_id": self.movie_ids, "rating_count": self.rating_counts}).write_parquet(path)

    @classmethod
    def load(cls, path: Path) -> PopularityScorer:
        frame = pl.read_parquet(path)
        if frame.columns != ["movie_id", "rating_count"]:
            raise StarlingError(f"{path}: expected columns movie_id, rating_count; got {frame.columns}")
        movie_ids = frame["movie_id"].to_numpy().astype(np.int64)
        if movie_ids.size > 1 and not (np.diff(movie_ids) > 0).all():
            raise StarlingError(f"{path}: movie_id must be unique and sorted ascending")
        return cls(movie_ids, frame["rating_count"].to_numpy().astype(np.int64))
