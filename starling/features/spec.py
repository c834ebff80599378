"""The feature spec: field names, and the vocabularies and numeric statistics fitted on the train split.

Training and serving both load the spec written by ``starling features build`` (WORKDIR/features/feature_spec.json)
and hand it to :func:`starling.features.transform.transform`, so both encode features identically.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from starling.errors import StarlingError

SPEC_FORMAT = 1
NUM_BUCKETS = 10  # deciles: 9 interior boundaries -> buckets 1..10 (0 = null)

NUMERIC_FIELDS: tuple[str, ...] = (
    "movie_release_year",
    "movie_rating_count",
    "movie_avg_rating",
    "movie_rating_stddev",
    "user_rating_count",
    "user_avg_rating",
    "user_rating_stddev",
    "user_avg_release_year",
    "user_release_year_stddev",
)
USER_GENRE_FIELDS: tuple[str, ...] = tuple(f"user_genre{i}" for i in range(1, 6))
MOVIE_GENRE_FIELDS: tuple[str, ...] = tuple(f"movie_genre{i}" for i in range(1, 4))
LIKED_MOVIE_FIELDS: tuple[str, ...] = tuple(f"user_liked_movie{i}" for i in range(1, 6))

VOCABULARY_NAMES: tuple[str, ...] = ("user", "movie", "genre")

#: Per-candidate features that recall computes at request time from the interaction state (popularity as of the
#: snapshot, the user's activity, the channels' retrieval scores), in the order of the ranker's
#: ``candidate_features`` input. Defined in services/recall/features.py; the spec of a trained artifact carries
#: their statistics (``candidate_stats``), fitted on its training candidates.
CANDIDATE_FEATURES: tuple[str, ...] = (
    "popularity_short",
    "popularity_mid",
    "popularity_long",
    "popularity_rank_short",
    "popularity_rank_mid",
    "popularity_rank_long",
    "rating_count_log",
    "like_count_rank",
    "shrunk_rating",
    "shrunk_like_rate",
    "days_since_first_rating",
    "movie_age_years",
    "user_rating_count_log",
    "user_like_count_log",
    "user_mean_rating",
    "user_tenure_days",
    "user_recency_days",
    "user_recent_ratings_log",
    "user_mean_year",
    "user_mean_age_at_rating",
    "genre_affinity",
    "ease_score",
    "ease_rank",
    "item2item_score",
    "item2item_rank",
    "embedding_score",
    "year_gap",
    "age_gap",
    "released_after_last_activity",
    "entered_after_last_activity",
)

# Column layout of the files written by `starling features build` (WORKDIR/features).
MOVIE_FEATURE_COLUMNS: tuple[str, ...] = (
    "movie_release_year",
    *MOVIE_GENRE_FIELDS,
    "movie_rating_count",
    "movie_avg_rating",
    "movie_rating_stddev",
)
USER_FEATURE_COLUMNS: tuple[str, ...] = (
    "user_rating_count",
    "user_avg_rating",
    "user_rating_stddev",
    "user_avg_release_year",
    "user_release_year_stddev",
    *USER_GENRE_FIELDS,
    *LIKED_MOVIE_FIELDS,
)
SAMPLE_COLUMNS: tuple[str, ...] = (
    "user_id",
    "movie_id",
    "event_timestamp",
    "rating",
    "label",
    *MOVIE_FEATURE_COLUMNS,
    *USER_FEATURE_COLUMNS,
    "split",
)


class FeatureSpecError(StarlingError):
    """A feature spec file is missing, unreadable, or does not match its own version."""


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabularies (index 0 reserved for unknown/null, so index = position + 1) and numeric statistics.

    ``numeric_stats[field]`` holds ``mean`` and ``std`` (population, nulls ignored) and ``quantiles``: the
    ``NUM_BUCKETS - 1`` interior quantile boundaries that cut the field into ``NUM_BUCKETS`` buckets.
    ``candidate_stats`` holds the same statistics for :data:`CANDIDATE_FEATURES` once a ranker was trained on
    recalled candidates (empty in the spec `features build` writes); they follow NUMERIC_FIELDS in ``numeric``.
    ``version`` is a short sha256 of the canonical JSON of everything else, so equal content = equal version.
    """

    vocabularies: dict[str, list[Any]]
    numeric_stats: dict[str, dict[str, Any]]
    version: str = field(default="")
    candidate_stats: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        missing = [name for name in VOCABULARY_NAMES if name not in self.vocabularies]
        if missing:
            raise FeatureSpecError(f"feature spec lacks vocabularies {missing}")
        missing = [name for name in NUMERIC_FIELDS if name not in self.numeric_stats]
        if missing:
            raise FeatureSpecError(f"feature spec lacks numeric stats for {missing}")
        if self.candidate_stats:
            if set(self.candidate_stats) != set(CANDIDATE_FEATURES):
                raise FeatureSpecError(
                    f"feature spec candidate_stats cover {sorted(self.candidate_stats)}; "
                    f"expected {list(CANDIDATE_FEATURES)}"
                )
            ordered = {name: self.candidate_stats[name] for name in CANDIDATE_FEATURES}  # JSON sorts keys
            object.__setattr__(self, "candidate_stats", ordered)
        if not self.version:
            object.__setattr__(self, "version", _content_hash(self._content()))

    @property
    def numeric_fields(self) -> tuple[str, ...]:
        """The columns of ``numeric`` / ``numeric_buckets``: NUMERIC_FIELDS, then the candidate features."""
        return NUMERIC_FIELDS + tuple(self.candidate_stats)

    def all_numeric_stats(self) -> dict[str, dict[str, Any]]:
        return {**self.numeric_stats, **self.candidate_stats}

    def with_candidate_stats(self, candidates: pl.DataFrame) -> FeatureSpec:
        """This spec plus statistics of the CANDIDATE_FEATURES columns of ``candidates`` (training rows)."""
        missing = [name for name in CANDIDATE_FEATURES if name not in candidates.columns]
        if missing:
            raise FeatureSpecError(f"cannot fit candidate feature statistics: rows lack {missing}")
        stats = {
            name: numeric_stats_of(candidates[name].cast(pl.Float64).fill_null(np.nan).to_numpy())
            for name in CANDIDATE_FEATURES
        }
        return FeatureSpec(self.vocabularies, self.numeric_stats, candidate_stats=stats)

    @property
    def num_buckets(self) -> int:
        """Buckets per numeric field (bucket ids 1..num_buckets; 0 = null)."""
        return NUM_BUCKETS

    @cached_property
    def _lookup_arrays(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Per vocabulary: its values sorted, and each sorted value's vocabulary position (for searchsorted)."""
        lookups = {}
        for name, values in self.vocabularies.items():
            array = np.asarray(values, dtype=str if name == "genre" else np.int64)
            order = np.argsort(array, kind="stable")
            lookups[name] = (array[order], order.astype(np.int64))
        return lookups

    def lookup(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """(sorted values, their vocabulary positions) of vocabulary ``name``; index = position + 1."""
        return self._lookup_arrays[name]

    @cached_property
    def _numeric_arrays(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        stats = self.all_numeric_stats()
        fields = self.numeric_fields
        means = np.array([stats[f]["mean"] for f in fields], dtype=np.float64)
        stds = np.array([stats[f]["std"] for f in fields], dtype=np.float64)
        stds = np.where(np.isfinite(stds) & (stds > 0), stds, 1.0)
        bounds = [np.asarray(stats[f]["quantiles"], dtype=np.float64) for f in fields]
        return means, stds, bounds

    def numeric_arrays(self) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
        """Means, stds (0 or non-finite -> 1) and quantile boundaries of :attr:`numeric_fields`, in order."""
        return self._numeric_arrays

    def vocab_size(self, name: str) -> int:
        """Embedding table size for a vocabulary: its entries plus index 0 for unknown/null."""
        if name not in self.vocabularies:
            raise FeatureSpecError(f"unknown vocabulary {name!r}; have {sorted(self.vocabularies)}")
        return len(self.vocabularies[name]) + 1

    def _content(self) -> dict[str, Any]:
        content = {
            "format": SPEC_FORMAT,
            "vocabularies": self.vocabularies,
            "numeric_stats": self.numeric_stats,
        }
        if self.candidate_stats:
            content["candidate_stats"] = self.candidate_stats
        return content

    def save(self, path: Path) -> None:
        """Write the spec as JSON (temp file + rename, so readers never see half a file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(json.dumps({"version": self.version, **self._content()}, indent=1, sort_keys=True))
        tmp.replace(path)

    @classmethod
    def load(cls, path: Path) -> FeatureSpec:
        """Read a spec written by :meth:`save`; refuses files whose content does not match their version."""
        path = Path(path)
        if not path.is_file():
            raise FeatureSpecError(f"{path}: feature spec not found (run `starling features build` first)")
        try:
            raw = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FeatureSpecError(f"{path}: not a readable feature spec JSON file ({exc})") from exc
        if not isinstance(raw, dict):
            raise FeatureSpecError(f"{path}: expected a JSON object, got {type(raw).__name__}")
        missing = [key for key in ("version", "format", "vocabularies", "numeric_stats") if key not in raw]
        if missing:
            raise FeatureSpecError(f"{path}: feature spec lacks keys {missing}")
        if raw["format"] != SPEC_FORMAT:
            raise FeatureSpecError(f"{path}: spec format {raw['format']!r}, this code reads {SPEC_FORMAT}")
        try:
            spec = cls(
                vocabularies=raw["vocabularies"],
                numeric_stats=raw["numeric_stats"],
                candidate_stats=raw.get("candidate_stats") or {},
            )
        except FeatureSpecError as exc:
            raise FeatureSpecError(f"{path}: {exc}") from exc
        if spec.version != raw["version"]:
            raise FeatureSpecError(
                f"{path}: content hash {spec.version} does not match the recorded version {raw['version']} "
                "(the file was edited or truncated; rebuild it with `starling features build`)"
            )
        return spec


def _content_hash(content: dict[str, Any]) -> str:
    canonical = json.dumps(content, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def numeric_stats_of(values: np.ndarray) -> dict[str, Any]:
    """Mean, population std and decile boundaries of ``values`` (float64, NaN = null, ignored)."""
    present = values[~np.isnan(values)]
    if present.size == 0:
        return {"mean": 0.0, "std": 1.0, "quantiles": [0.0] * (NUM_BUCKETS - 1)}
    levels = np.arange(1, NUM_BUCKETS) / NUM_BUCKETS
    return {
        "mean": float(present.mean()),
        "std": float(present.std()),
        "quantiles": [float(q) for q in np.quantile(present, levels)],
    }


def fit_feature_spec(train_samples: pl.DataFrame, genres: list[str] | None = None) -> FeatureSpec:
    """Fit vocabularies and numeric statistics on train samples only.

    Users and movies: the ids appearing in ``train_samples`` (sorted ascending). Genres: ``genres`` (the
    catalog's genres, as the build passes them) or, when not given, those in the samples' genre columns.
    """
    needed = ["user_id", "movie_id", *NUMERIC_FIELDS]
    if genres is None:
        needed += [*MOVIE_GENRE_FIELDS, *USER_GENRE_FIELDS]
    missing = [name for name in needed if name not in train_samples.columns]
    if missing:
        raise FeatureSpecError(f"cannot fit a feature spec: train samples lack columns {missing}")
    if train_samples.height == 0:
        raise FeatureSpecError("cannot fit a feature spec on an empty train split")
    if genres is None:
        genre_columns = [*MOVIE_GENRE_FIELDS, *USER_GENRE_FIELDS]
        genres = train_samples.select(pl.concat_list(genre_columns).explode().drop_nulls().unique())
        genres = genres.to_series().to_list()
    vocabularies = {
        "user": [int(x) for x in np.unique(train_samples["user_id"].to_numpy())],
        "movie": [int(x) for x in np.unique(train_samples["movie_id"].to_numpy())],
        "genre": sorted(set(genres)),
    }
    numeric_stats = {
        name: numeric_stats_of(train_samples[name].cast(pl.Float64).fill_null(np.nan).to_numpy())
        for name in NUMERIC_FIELDS
    }
    return FeatureSpec(vocabularies=vocabularies, numeric_stats=numeric_stats)
