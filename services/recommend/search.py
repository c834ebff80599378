"""Title search over the catalog: case- and accent-insensitive substring match, title prefixes first, then
the most rated; columnar (polars string kernels), no per-title Python."""

from __future__ import annotations

import unicodedata

import numpy as np
import polars as pl

MAX_QUERY = 100
MAX_RESULTS = 100


def fold(text: str) -> str:
    """What matching compares: NFKD without combining marks, lower-cased ("Amélie" -> "amelie")."""
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def folded_titles(titles: np.ndarray) -> pl.Series:
    """Every title folded like :func:`fold`, as one column (computed once per catalog)."""
    return (
        pl.Series("title", titles, dtype=pl.String)
        .fill_null("")
        .str.normalize("NFKD")
        .str.replace_all(r"\p{M}", "")
        .str.to_lowercase()
    )


def search_positions(
    folded: pl.Series, rating_counts: np.ndarray, query: str, offset: int, limit: int
) -> tuple[np.ndarray, int]:
    """Catalog positions of the matches for ``query`` (page ``offset``:``offset + limit``) and their count."""
    needle = fold(query.strip())
    frame = pl.DataFrame(
        {
            "position": np.arange(len(folded)),
            "title": folded,
            "rating_count": np.asarray(rating_counts),
        }
    ).filter(pl.col("title").str.contains(needle, literal=True))
    ranked = frame.with_columns(prefix=pl.col("title").str.starts_with(needle)).sort(
        ["prefix", "rating_count", "title"], descending=[True, True, False]
    )
    return ranked["position"].slice(offset, limit).to_numpy(), frame.height
