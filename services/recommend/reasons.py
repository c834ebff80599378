"""Why each recommended movie is there, as a structured reason and a sentence, and its score as a 0..1 match.

Recall supplies the evidence (services/recall/reasons.py: the recent like behind a candidate); this module
turns it, the recall channel and the user's genres into a ``Reason`` per item:
- evidence from a liked movie: "Because you liked Heat (1995)";
- the genre channel, or a popular movie of one of the user's (else the request's) genres: "Popular in Drama";
- the new-releases channel: "New this year" / "New release (2016)";
- otherwise: "Popular now" (recall's popular list), "Popular" (the most rated, when recall is down).
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from services.common.catalog import Catalog
from starling.v1 import recommend_pb2

Kind = recommend_pb2.ReasonKind


def preferred_genre(catalog: Catalog, positions: np.ndarray, preference: list[str]) -> np.ndarray:
    """Per catalog position: the first genre of ``preference`` the movie has ("" for none)."""
    names = [g for g in dict.fromkeys(preference) if g in catalog.genre_names]
    out = np.full(len(positions), "", dtype=object)
    if not names:
        return out
    columns = [catalog.genre_names.index(g) for g in names]
    has = catalog.genre_matrix[np.maximum(positions, 0)][:, columns] & (positions >= 0)[:, None]
    found = has.any(axis=1)
    out[found] = np.asarray(names, dtype=object)[has.argmax(axis=1)[found]]
    return out


def item_reasons(
    catalog: Catalog,
    movie_ids: np.ndarray,
    channels: np.ndarray,
    because_ids: np.ndarray,
    genre_preference: list[str],
    recall_answered: bool = True,
    today: dt.date | None = None,
    because_by_text: np.ndarray | None = None,
) -> list[recommend_pb2.Reason]:
    """One reason per item (``because_ids``: the liked movie behind each item, 0 for none;
    ``because_by_text``: that movie is close in text, not in co-ratings)."""
    by_text = np.zeros(len(movie_ids), dtype=bool) if because_by_text is None else because_by_text
    positions = catalog.positions(movie_ids)
    because_positions = catalog.positions(because_ids)
    because_ids = np.where((because_ids > 0) & (because_positions >= 0), because_ids, 0)
    genres = preferred_genre(catalog, positions, genre_preference)
    year = (today or dt.datetime.now(dt.UTC).date()).year
    popular_text = "Popular now" if recall_answered else "Popular"
    reasons = []
    for position, channel, because, because_position, genre, text_only in zip(  # one message per item
        positions.tolist(),
        channels.tolist(),
        because_ids.tolist(),
        because_positions.tolist(),
        genres.tolist(),
        np.asarray(by_text, dtype=bool).tolist(),
        strict=True,
    ):
        if because:
            title = str(catalog.titles[because_position])
            reasons.append(
                recommend_pb2.Reason(
                    kind=Kind.REASON_KIND_SIMILAR_TEXT if text_only else Kind.REASON_KIND_BECAUSE_YOU_LIKED,
                    because_movie_id=because,
                    text=f"Like {title}, which you liked" if text_only else f"Because you liked {title}",
                )
            )
        elif channel == "new":
            released = int(catalog.release_years[position]) if position >= 0 else 0
            text = "New this year" if released >= year else f"New release ({released})"
            reasons.append(recommend_pb2.Reason(kind=Kind.REASON_KIND_NEW_RELEASE, text=text))
        elif genre and channel in ("genre", "popular", "cold_start"):
            reasons.append(
                recommend_pb2.Reason(
                    kind=Kind.REASON_KIND_POPULAR_IN_GENRE, genre=genre, text=f"Popular in {genre}"
                )
            )
        else:
            reasons.append(recommend_pb2.Reason(kind=Kind.REASON_KIND_POPULAR, text=popular_text))
    return reasons


def similar_reason(catalog: Catalog, movie_id: int) -> recommend_pb2.Reason:
    position = int(catalog.positions([movie_id])[0])
    title = str(catalog.titles[position]) if position >= 0 else f"movie {movie_id}"
    return recommend_pb2.Reason(
        kind=Kind.REASON_KIND_SIMILAR_TO, because_movie_id=movie_id, text=f"Similar to {title}"
    )


def match_shares(scores: np.ndarray, candidate_scores: np.ndarray) -> np.ndarray:
    """Each score's place between the lowest and the highest score of the request's candidates (0..1; 1 when
    they are all equal): a number a person reads as "87% match", where raw ranker scores mean nothing."""
    scores = np.asarray(scores, dtype=np.float64)
    pool = np.concatenate([scores, np.asarray(candidate_scores, dtype=np.float64)])
    pool = pool[np.isfinite(pool)]
    if len(pool) == 0:
        return np.ones(len(scores), dtype=np.float32)
    low, high = pool.min(), pool.max()
    if high <= low:
        return np.ones(len(scores), dtype=np.float32)
    return np.clip((scores - low) / (high - low), 0.0, 1.0).astype(np.float32)
