"""The eligible pool: the catalog minus what the user has rated, filtered by the request context."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from services.common.catalog import Catalog
from services.common.errors import InvalidArgument


@dataclass(frozen=True)
class EligiblePool:
    excluded_movie_ids: np.ndarray  # catalog movies left out (rated or excluded by context), sorted
    genres: tuple[str, ...]  # genre filter (empty: any)
    pool_size: int

    def mask(self, catalog: Catalog) -> np.ndarray:
        """Boolean mask over catalog rows of the eligible movies."""
        mask = catalog.genre_mask(self.genres)
        pos = catalog.positions(self.excluded_movie_ids)
        mask[pos[pos >= 0]] = False
        return mask


def eligible_pool(
    catalog: Catalog, rated: np.ndarray, excluded_by_context: np.ndarray, genres: tuple[str, ...]
) -> EligiblePool:
    """Excluded = (rated ∪ context exclusions) within the catalog; genres must be catalog genres."""
    try:
        genre_mask = catalog.genre_mask(genres)
    except ValueError as exc:
        raise InvalidArgument(f"context.genres: {exc}") from exc
    excluded = np.union1d(rated, excluded_by_context)
    excluded = excluded[catalog.positions(excluded) >= 0]
    genre_mask[catalog.positions(excluded)] = False
    return EligiblePool(excluded.astype(np.int64), tuple(genres), int(genre_mask.sum()))
