"""Browsing the catalog without a query: the most rated movies, of one genre or of all (the home page's
rows), and the genres in order of how much they are watched. Plain array functions."""

from __future__ import annotations

import numpy as np

from services.common.catalog import Catalog


def popular_positions(catalog: Catalog, genre: str, offset: int, limit: int) -> tuple[np.ndarray, int]:
    """Catalog positions of the most rated movies (of ``genre``, or all for ""), page ``offset``:``offset +
    limit``, ties by movie id; and how many movies there are in all."""
    eligible = catalog.genre_mask((genre,) if genre else ())
    rows = np.flatnonzero(eligible)
    order = rows[np.lexsort((catalog.movie_ids[rows], -catalog.rating_counts[rows]))]
    return order[offset : offset + limit], len(rows)


def genres_by_ratings(catalog: Catalog) -> list[str]:
    """Every genre of the catalog, the one with the most ratings (over its movies) first; ties by name."""
    totals = catalog.rating_counts.astype(np.float64) @ catalog.genre_matrix.astype(np.float64)
    names = np.asarray(catalog.genre_names, dtype=object)
    return names[np.lexsort((names, -totals))].tolist()
