"""Held-out movies: how well the cold-start placement of new movies (services/recall/state.py,
``new_movie_vectors``) puts them in front of the people who like them.

A seeded sample of movies with enough likes is hidden: their ratings leave the training data, and they come
back as new movies, as ``UpsertMovie`` would bring them: text only (title, year, genres; no tags, which
come from viewers). The recall state is fitted without them, and each placement is the served one
(``RecallModel.align``):

- ``content``: the movie's text vector (the language model, starling/content.py) next to the published
  version's text vectors of the other movies: the direction of its text neighbours' collaborative vectors
  plus that of its genres;
- ``genres``: its genres alone (what a movie gets when there is no text encoder).

For every user who liked a hidden movie (any time), the user's vector is folded in from their other likes
(recall's ``user_vector``), every movie the user did not rate in the training data is scored by inner
product (the embedding channel's measure), and a (user, hidden movie) pair is a hit when the movie is in the
user's top ``k``. Reported: recall@k over all pairs, recall@10 among the hidden movies only (which new movie
to show), and a paired bootstrap interval (over users) of content minus genres.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from services.common.catalog import Catalog
from services.common.history import UserHistory
from services.recall.features import user_profile, user_vector
from services.recall.state import ContentTable, RecallModel
from starling.content import TextEncoder, artifact_content, movie_texts
from starling.errors import StarlingError

PLACEMENTS = ("content", "genres")


def hidden_sample(
    ratings: pl.DataFrame, share: float, min_likes: int, like_threshold: float, seed: int
) -> np.ndarray:
    """A seeded ``share`` of the movies with at least ``min_likes`` likes (at least one movie), sorted."""
    liked = ratings.filter(pl.col("rating") >= like_threshold).group_by("movie_id").len()
    eligible = liked.filter(pl.col("len") >= min_likes)["movie_id"].sort().to_numpy()
    if len(eligible) == 0:
        raise StarlingError(f"no movie has {min_likes} likes to hide")
    size = max(1, round(len(eligible) * share))
    return np.sort(np.random.default_rng(seed).choice(eligible, size=size, replace=False))


def _user_hits(
    model: RecallModel,
    history: UserHistory,
    liked: pl.DataFrame,
    hidden_rows: np.ndarray,
    k: int,
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per user of ``liked`` (user_id, movie_ids: the hidden movies they liked): pairs, hits in the top k of
    every unrated movie, hits in the top 10 of the hidden movies; users without a vector count no pairs."""
    pairs, hits, hits_new = (np.zeros(liked.height, np.int64) for _ in range(3))
    for i, (user, movies) in enumerate(liked.iter_rows()):  # one fold-in (a small solve) per user
        ids, ratings, times = history.latest(int(user))
        profile = user_profile(model, ids, ratings, times, threshold)
        vector = user_vector(model, profile)
        if vector is None:
            continue
        scores = model.vectors @ vector
        scores[profile.rated_rows] = -np.inf
        targets = model.positions(np.asarray(movies, dtype=np.int64))
        top = np.argpartition(-scores, k)[:k]
        new_top = hidden_rows[np.argsort(-scores[hidden_rows], kind="stable")[:10]]
        pairs[i] = len(targets)
        hits[i] = np.isin(targets, top).sum()
        hits_new[i] = np.isin(targets, new_top).sum()
    return pairs, hits, hits_new


def held_out_movies(
    workdir: Path,
    share: float = 0.1,
    min_likes: int = 10,
    k: int = 50,
    seed: int = 0,
    like_threshold: float = 3.5,
    encoder: TextEncoder | None = None,
    resamples: int = 2000,
) -> dict[str, Any]:
    """The held-out-movies comparison on WORKDIR's ratings and published version (see the module's doc)."""
    from training.artifacts import load_artifact, resolve_artifact
    from training.recall_fit import fit_recall_state

    workdir = Path(workdir)
    artifact = load_artifact(resolve_artifact(workdir))
    published = artifact_content(artifact.path, artifact.manifest)
    if len(published.movie_ids) == 0 or artifact.recall_state is None:
        raise StarlingError(
            f"{artifact.path}: no text vectors or recall state; train with `starling train {workdir}` "
            "(content vectors on)"
        )
    params = artifact.recall_state.params
    ratings = pl.read_parquet(
        workdir / "ratings.parquet", columns=["user_id", "movie_id", "rating", "event_timestamp"]
    )
    movies = pl.read_parquet(workdir / "movies.parquet")
    hidden = hidden_sample(ratings, share, min_likes, like_threshold, seed)
    training = ratings.filter(~pl.col("movie_id").is_in(hidden))
    catalog = Catalog.from_frames(movies, training)
    state = fit_recall_state(
        training, catalog.movie_ids[~np.isin(catalog.movie_ids, hidden)], params, like_threshold
    )
    # The hidden movies' published vectors read their tags (viewers' words): out, replaced by text-only ones.
    keep = ~np.isin(published.movie_ids, hidden)
    others = ContentTable(published.movie_ids[keep], published.vectors[keep])
    texts = movie_texts(movies.filter(pl.col("movie_id").is_in(hidden))).sort("movie_id")
    encoder = encoder or TextEncoder()
    encoded = encoder.encode(texts["text"].to_list())
    tables = {
        "content": others.upserted(texts["movie_id"].to_numpy(), encoded),
        "genres": ContentTable.empty(),
    }

    history = UserHistory.from_frame(training, like_threshold)
    liked = (
        ratings.filter(pl.col("movie_id").is_in(hidden) & (pl.col("rating") >= like_threshold))
        .group_by("user_id")
        .agg(pl.col("movie_id").unique())
        .sort("user_id")
    )
    per_user: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
    for name in PLACEMENTS:
        model = RecallModel.align(
            state, catalog.movie_ids, catalog.release_years, catalog.genre_matrix, tables[name]
        )
        per_user[name] = _user_hits(model, history, liked, model.positions(hidden), k, like_threshold)
    pairs = per_user["content"][0]
    counted = pairs > 0
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, int(counted.sum()), size=(resamples, int(counted.sum())))
    weights = pairs[counted][picks].sum(axis=1)
    difference = (
        per_user["content"][1][counted][picks].sum(axis=1) - per_user["genres"][1][counted][picks].sum(axis=1)
    ) / weights
    total = int(pairs.sum())
    return {
        "hidden_movies": len(hidden),
        "min_likes": min_likes,
        "share": share,
        "seed": seed,
        "users": int(counted.sum()),
        "pairs": total,
        "k": k,
        f"recall_at_{k}": {name: float(per_user[name][1].sum() / total) for name in PLACEMENTS},
        "recall_at_10_among_hidden": {name: float(per_user[name][2].sum() / total) for name in PLACEMENTS},
        "content_minus_genres_interval": [
            float(np.quantile(difference, 0.025)),
            float(np.quantile(difference, 0.975)),
        ],
        "method": f"paired bootstrap over users ({resamples} resamples)",
        "encoder": encoder.info.to_dict(),
    }


def format_held_out(result: dict[str, Any]) -> str:
    k = result["k"]
    low, high = result["content_minus_genres_interval"]
    lines = [
        f"held-out movies: {result['hidden_movies']} hidden (a {result['share']:.0%} sample of movies with "
        f"{result['min_likes']}+ likes), {result['users']} users, {result['pairs']} (user, movie) likes",
        f"{'placement':<10} {'recall@' + str(k):>10} {'recall@10 among hidden':>24}",
    ]
    for name in PLACEMENTS:
        lines.append(
            f"{name:<10} {result[f'recall_at_{k}'][name]:>10.4f} {result['recall_at_10_among_hidden'][name]:>24.4f}"
        )
    lines.append(f"content - genres, recall@{k}: 95% interval [{low:+.4f}, {high:+.4f}] ({result['method']})")
    return "\n".join(lines)
