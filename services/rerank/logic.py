"""Re-ranking as plain functions over arrays: freshness and popularity adjustments, then diversity.

Deterministic for equal input: every sort is stable and ties break by movie id.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import yaml

from services.common.catalog import Catalog
from starling.errors import StarlingError

DEFAULT_RULES_PATH = Path(__file__).with_name("rules.yaml")


@dataclass(frozen=True)
class DiversityRule:
    method: Literal["genre_cap", "mmr", "none"] = "genre_cap"
    #: genre_cap: at most max(max_per_genre, ceil(max_share * k)) items of one primary genre lead the list.
    max_per_genre: int = 3
    max_share: float = 0.5
    mmr_lambda: float = 0.75

    def genre_cap(self, k: int) -> int:
        return max(self.max_per_genre, math.ceil(self.max_share * k))


@dataclass(frozen=True)
class FreshnessRule:
    weight: float = 0.05
    half_life_years: float = 8.0


@dataclass(frozen=True)
class PopularityRule:
    weight: float = 0.02


@dataclass(frozen=True)
class TasteRule:
    weight: float = 0.1


@dataclass(frozen=True)
class RerankRules:
    diversity: DiversityRule = field(default_factory=DiversityRule)
    freshness: FreshnessRule = field(default_factory=FreshnessRule)
    popularity: PopularityRule = field(default_factory=PopularityRule)
    taste: TasteRule = field(default_factory=TasteRule)


def load_rules(path: Path = DEFAULT_RULES_PATH) -> RerankRules:
    """Read and validate a rules YAML file; a bad file is an error that names the file and the key."""
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise StarlingError(f"{path}: cannot read re-ranking rules: {exc}") from exc
    sections = {
        "diversity": DiversityRule,
        "freshness": FreshnessRule,
        "popularity": PopularityRule,
        "taste": TasteRule,
    }
    unknown = set(raw) - set(sections)
    if unknown:
        raise StarlingError(f"{path}: unknown section(s) {sorted(unknown)}; expected {sorted(sections)}")
    parsed = {}
    for name, cls in sections.items():
        try:
            parsed[name] = cls(**(raw.get(name) or {}))
        except TypeError as exc:
            raise StarlingError(f"{path}: section {name!r}: {exc}") from exc
    rules = RerankRules(**parsed)
    d = rules.diversity
    if d.method not in ("genre_cap", "mmr", "none"):
        raise StarlingError(f"{path}: diversity.method {d.method!r} must be genre_cap, mmr or none")
    if (
        d.max_per_genre < 1
        or not 0.0 <= d.max_share <= 1.0
        or not 0.0 <= d.mmr_lambda <= 1.0
        or rules.freshness.half_life_years <= 0
    ):
        raise StarlingError(
            f"{path}: need max_per_genre >= 1, 0 <= max_share <= 1, 0 <= mmr_lambda <= 1, half_life_years > 0"
        )
    return rules


def adjusted_scores(
    scores: np.ndarray,
    release_years: np.ndarray,
    rating_counts: np.ndarray,
    max_rating_count: int,
    current_year: int,
    rules: RerankRules,
) -> np.ndarray:
    """Score + freshness bonus (exponential decay by age) + popularity bonus (log-scaled). Unknown year: none."""
    age = np.maximum(current_year - release_years, 0).astype(np.float64)
    freshness = rules.freshness.weight * np.exp2(-age / rules.freshness.half_life_years)
    freshness = np.where(release_years > 0, freshness, 0.0)
    popularity = rules.popularity.weight * np.log1p(rating_counts) / np.log1p(max(max_rating_count, 1))
    return (scores.astype(np.float64) + freshness + popularity).astype(np.float32)


def taste_bonus(genre_vectors: np.ndarray, user_genre_columns: np.ndarray, weight: float) -> np.ndarray:
    """``weight`` x the affinity of each movie to the user's top genres: 1 for the first genre, halving for
    each next one; a movie counts its best-matching genre. Real-time feedback moves the user's top genres
    (recall reports those of the most recent likes), and with them this bonus."""
    if len(user_genre_columns) == 0 or weight == 0:
        return np.zeros(len(genre_vectors), dtype=np.float32)
    affinity = 0.5 ** np.arange(len(user_genre_columns))  # 1, 1/2, 1/4, ...
    return (weight * (genre_vectors[:, user_genre_columns] * affinity).max(axis=1)).astype(np.float32)


def _order_by_score(scores: np.ndarray, movie_ids: np.ndarray) -> np.ndarray:
    """Positions sorted by score descending, ties by movie id ascending."""
    return np.lexsort((movie_ids, -scores.astype(np.float64)))


def genre_cap_order(
    scores: np.ndarray, movie_ids: np.ndarray, primary_genre: np.ndarray, cap: int
) -> np.ndarray:
    """Score order, except that items beyond the ``cap``-th of their primary genre move behind all others."""
    order = _order_by_score(scores, movie_ids)
    genres = primary_genre[order]
    # Rank of each item within its genre, in score order (vectorized cumulative count).
    by_genre = np.lexsort((np.arange(len(order)), genres))
    sorted_genres = genres[by_genre]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_genres)) + 1]
    run_lengths = np.diff(np.r_[starts, len(order)])
    rank_in_genre = np.empty(len(order), dtype=np.int64)
    rank_in_genre[by_genre] = np.arange(len(order)) - np.repeat(starts, run_lengths)
    overflow = (rank_in_genre >= cap) & (genres >= 0)
    return order[np.argsort(overflow, kind="stable")]


def mmr_order(
    scores: np.ndarray, movie_ids: np.ndarray, vectors: np.ndarray, k: int, lam: float
) -> np.ndarray:
    """Maximal marginal relevance: greedily pick argmax(lam * score - (1 - lam) * max cosine to picked).

    One vectorized step per picked item (k steps, each over all candidates); the rest follow in score order.
    """
    n = len(scores)
    k = min(k, n)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors, dtype=np.float64), where=norms > 0)
    base = _order_by_score(scores, movie_ids)
    rank_tiebreak = np.empty(n, dtype=np.float64)
    rank_tiebreak[base] = np.arange(n) * 1e-12  # deterministic ties: better base rank wins
    max_sim = np.zeros(n)
    picked = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    for _ in range(k):
        value = lam * scores - (1.0 - lam) * max_sim - rank_tiebreak
        value[picked] = -np.inf
        best = int(np.argmax(value))
        chosen.append(best)
        picked[best] = True
        max_sim = np.maximum(max_sim, unit @ unit[best])
    rest = base[~picked[base]]
    return np.concatenate([np.asarray(chosen, dtype=np.int64), rest])


def rerank(
    scores: np.ndarray,
    movie_ids: np.ndarray,
    release_years: np.ndarray,
    rating_counts: np.ndarray,
    primary_genre: np.ndarray,
    genre_vectors: np.ndarray,
    *,
    k: int,
    current_year: int,
    max_rating_count: int,
    rules: RerankRules,
    user_genre_columns: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the top ``k`` after adjustments and diversity, and their adjusted scores."""
    adjusted = adjusted_scores(scores, release_years, rating_counts, max_rating_count, current_year, rules)
    if user_genre_columns is not None:
        adjusted = adjusted + taste_bonus(genre_vectors, user_genre_columns, rules.taste.weight)
    method = rules.diversity.method
    if method == "genre_cap":
        order = genre_cap_order(adjusted, movie_ids, primary_genre, rules.diversity.genre_cap(k))
    elif method == "mmr":
        order = mmr_order(
            adjusted, movie_ids, genre_vectors.astype(np.float64), k, rules.diversity.mmr_lambda
        )
    else:
        order = _order_by_score(adjusted, movie_ids)
    top = order[:k]
    return top, adjusted[top]


def rerank_candidates(
    catalog: Catalog,
    rules: RerankRules,
    movie_ids: np.ndarray,
    scores: np.ndarray,
    *,
    k: int,
    current_year: int,
    user_genres: list[str] | tuple[str, ...] = (),
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`rerank` with the catalog's years, counts and genres looked up (unknown movies get none), as the
    rerank service and the offline replay both call it: positions of the top ``k`` and their scores."""
    known_genres = [g for g in user_genres if g in catalog.genre_names]  # unknown: ignored
    user_genre_columns = np.array([catalog.genre_names.index(g) for g in known_genres], dtype=np.int64)
    pos = catalog.positions(movie_ids)
    known = pos >= 0
    safe = np.where(known, pos, 0)
    return rerank(
        scores,
        movie_ids,
        np.where(known, catalog.release_years[safe], 0),
        np.where(known, catalog.rating_counts[safe], 0),
        np.where(known, catalog.primary_genre[safe], -1),
        np.where(known[:, None], catalog.genre_matrix[safe], False).astype(np.float32),
        k=k,
        current_year=current_year,
        max_rating_count=int(catalog.rating_counts.max(initial=0)),
        rules=rules,
        user_genre_columns=user_genre_columns,
    )
