"""Train / valid / test assignment of rating samples."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from starling.errors import StarlingError

SPLIT_NAMES: tuple[str, ...] = ("train", "valid", "test")
TRAIN, VALID, TEST = 0, 1, 2


@dataclass(frozen=True)
class SplitConfig:
    """How samples are split.

    ``time``: two global timestamp cut-offs; the newest ``test_frac`` of ratings (by time) are test, the
    ``valid_frac`` before them valid, the rest train. Ratings sharing a cut-off timestamp all go to the later
    split, so the realised shares can be slightly larger than asked.
    ``leave-last-out``: per user, the last rating by time (ties: higher movie_id is later) is test, the one
    before valid, the rest train; users with fewer than 3 ratings are all train. The fractions are unused.
    """

    kind: Literal["time", "leave-last-out"] = "time"
    valid_frac: float = 0.1
    test_frac: float = 0.1

    def __post_init__(self) -> None:
        if self.kind not in ("time", "leave-last-out"):
            raise StarlingError(f"split kind {self.kind!r}: expected 'time' or 'leave-last-out'")
        for name in ("valid_frac", "test_frac"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise StarlingError(f"split {name}={value}: must be in [0, 1)")
        if self.valid_frac + self.test_frac >= 1.0:
            raise StarlingError(
                f"split valid_frac + test_frac = {self.valid_frac + self.test_frac}: must be below 1 "
                "(something must be left to train on)"
            )


@dataclass(frozen=True)
class SplitInfo:
    """What a split produced: its cut-offs (time splits) and the row count of each part."""

    config: SplitConfig
    counts: dict[str, int]
    valid_cutoff: datetime | None = None
    test_cutoff: datetime | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.config.kind,
            "valid_frac": self.config.valid_frac,
            "test_frac": self.config.test_frac,
            "valid_cutoff": None if self.valid_cutoff is None else self.valid_cutoff.isoformat(),
            "test_cutoff": None if self.test_cutoff is None else self.test_cutoff.isoformat(),
            "counts": self.counts,
            **self.extra,
        }


def _as_datetime(timestamp_us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=int(timestamp_us))


def _rank_from_end_per_user(
    user_ids: np.ndarray, timestamp_us: np.ndarray, movie_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per row: 0 for the user's last rating by (time, movie_id), 1 for the one before...; and the user's count."""
    frame = pl.DataFrame({"user": user_ids, "ts": timestamp_us, "movie": movie_ids})
    order = frame.select(pl.arg_sort_by(["user", "ts", "movie"])).to_series().to_numpy()
    user_sorted = user_ids[order]
    new_user = np.ones(len(order), dtype=bool)
    new_user[1:] = user_sorted[1:] != user_sorted[:-1]
    user_index = np.cumsum(new_user) - 1
    user_count = np.bincount(user_index)[user_index]
    user_start = np.flatnonzero(new_user)[user_index]
    position = np.arange(len(order)) - user_start
    rank_from_end = np.empty(len(order), dtype=np.int64)
    count = np.empty(len(order), dtype=np.int64)
    rank_from_end[order] = user_count - 1 - position
    count[order] = user_count
    return rank_from_end, count


def assign_split(
    user_ids: np.ndarray, timestamp_us: np.ndarray, movie_ids: np.ndarray, config: SplitConfig
) -> tuple[np.ndarray, SplitInfo]:
    """Split codes (0 train, 1 valid, 2 test; int8, input row order) and what the split produced."""
    n = len(timestamp_us)
    codes = np.zeros(n, dtype=np.int8)
    valid_cutoff = test_cutoff = None
    if config.kind == "time":
        ts_sorted = np.sort(timestamp_us)
        n_test = round(n * config.test_frac)
        n_valid = round(n * config.valid_frac)
        if n_test:
            test_cutoff = int(ts_sorted[n - n_test])
        if n_valid:
            valid_cutoff = int(ts_sorted[max(n - n_test - n_valid, 0)])
            codes[timestamp_us >= valid_cutoff] = VALID
        if n_test:
            codes[timestamp_us >= test_cutoff] = TEST
    else:
        from_end_rank, user_count = _rank_from_end_per_user(user_ids, timestamp_us, movie_ids)
        eligible = user_count >= 3
        codes[eligible & (from_end_rank == 1)] = VALID
        codes[eligible & (from_end_rank == 0)] = TEST
    counts = {name: int(np.count_nonzero(codes == code)) for code, name in enumerate(SPLIT_NAMES)}
    info = SplitInfo(
        config=config,
        counts=counts,
        valid_cutoff=None if valid_cutoff is None else _as_datetime(valid_cutoff),
        test_cutoff=None if test_cutoff is None else _as_datetime(test_cutoff),
    )
    return codes, info
