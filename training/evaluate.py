"""Offline evaluation on the test split: `starling evaluate WORKDIR [--json]`.

One run, one split (WORKDIR/features/split.json), two sections:

- ranking: AUC, PR-AUC and log loss on the test samples of every ranking model of the published artifact,
  next to LightGBM (trained here on the same encoded features) and the popularity scorer (train-split rating
  counts, turned into probabilities by a 1-D logistic fit on train — monotone, so AUC and PR-AUC are the raw
  counts'; only the log loss needs it).
- retrieval: for each user with held-out liked movies (label 1 in the test split), rank the whole catalog with
  every movie the user rated before the test cut-off excluded; Recall@10/50, NDCG@10, HitRate@10
  (:mod:`training.retrieval_metrics`). Methods: item2vec and two_tower (user = mean of the movies liked before
  the cut-off, score = dot product), popularity (ratings before the cut-off), implicit ALS (likes before the
  cut-off) and ``pipeline``: multi-channel recall (embedding / popular / the user's top genres, unseen movies
  only) re-ranked by the artifact's serving model on user and movie features as of the cut-off.

"Before the cut-off" = the samples outside the test split: for a time split exactly the ratings before the
test cut-off; for leave-last-out each user's history (other users' later ratings included, as usual there).
The pipeline's embedding is the one with the better NDCG@10 on the valid split (history = train), so the test
split is never used to choose.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import scipy.sparse as sp

from starling.errors import StarlingError
from training.embeddings import METHODS, train_item_embeddings, with_null_columns
from training.embeddings.user_embedding import item_matrix, lookup_rows, user_embeddings_from_liked
from training.retrieval_metrics import ScoreChunk, evaluate_retrieval, interaction_matrix, top_k

RETRIEVAL_KS = (10, 50)
RANKING_COLUMNS = ("auc", "pr_auc", "logloss")
RETRIEVAL_COLUMNS = ("recall@10", "recall@50", "ndcg@10", "hit_rate@10")
USER_CHUNK = 512

#: Candidates per recall channel of the offline pipeline (about 500 in all after the union).
EMBEDDING_CANDIDATES = 300
POPULAR_CANDIDATES = 100
GENRE_CANDIDATES = 100


class EvaluationError(StarlingError):
    """Evaluation cannot run: inputs missing or inconsistent."""


# ------------------------------------------------------------------------------------------------- inputs
@dataclass
class EvaluationInputs:
    samples: pl.DataFrame
    movies: pl.DataFrame
    split: dict[str, Any]
    artifact: Any  # training.artifacts.Artifact


def load_inputs(workdir: Path) -> EvaluationInputs:
    """Features, catalog, split and the published artifact; a clear error naming the command to run first."""
    from training.artifacts import load_artifact, resolve_artifact

    features_dir = workdir / "features"
    for name in ("samples.parquet", "split.json"):
        if not (features_dir / name).is_file():
            raise EvaluationError(
                f"{features_dir / name} not found: run `starling features build {workdir}` first"
            )
    movies_path = workdir / "movies.parquet"
    if not movies_path.is_file():
        raise EvaluationError(
            f"{movies_path} not found: run `starling data ingest SOURCE --out {workdir}` first"
        )
    artifact = load_artifact(resolve_artifact(workdir))
    samples = pl.read_parquet(features_dir / "samples.parquet")
    split = json.loads((features_dir / "split.json").read_text())
    for name in ("train", "valid", "test"):
        if samples.filter(pl.col("split") == name).height == 0:
            raise EvaluationError(f"{features_dir / 'samples.parquet'}: the {name} split is empty")
    return EvaluationInputs(samples, pl.read_parquet(movies_path), split, artifact)


# ------------------------------------------------------------------------------------------------ ranking
def platt_fit(scores: np.ndarray, labels: np.ndarray, iterations: int = 25) -> tuple[float, float]:
    """(a, b) of p = sigmoid(a * x + b) by Newton's method on the log loss (x standardized inside)."""
    x = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    center, scale = x.mean(), x.std() or 1.0
    z = (x - center) / scale
    a, b = 0.0, 0.0
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * z + b)))
        w = p * (1 - p) + 1e-9
        gradient = np.array([np.dot(p - y, z), np.sum(p - y)])
        hessian = np.array([[np.dot(w, z * z), np.dot(w, z)], [np.dot(w, z), np.sum(w)]])
        a, b = np.array([a, b]) - np.linalg.solve(hessian + 1e-9 * np.eye(2), gradient)
    return float(a / scale), float(b - a * center / scale)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def ranking_scores(labels: np.ndarray, probabilities: np.ndarray) -> dict[str, float]:
    from training.ranking_metrics import auc, logloss, pr_auc

    return {
        "auc": auc(labels, probabilities),
        "pr_auc": pr_auc(labels, probabilities),
        "logloss": logloss(labels, probabilities),
    }


def evaluate_ranking(inputs: EvaluationInputs) -> dict[str, dict[str, float]]:
    """Test-split AUC / PR-AUC / log loss of every artifact model, LightGBM and popularity."""
    from starling.features.transform import transform
    from training.lightgbm_baseline import predict_lightgbm, train_lightgbm

    artifact = inputs.artifact
    parts = {name: inputs.samples.filter(pl.col("split") == name) for name in ("train", "valid", "test")}
    encoded = {name: transform(part, artifact.spec) for name, part in parts.items()}
    labels = encoded["test"]["label"]
    results = {
        name: ranking_scores(labels, artifact.predict_encoded(encoded["test"], name))
        for name in artifact.models
    }
    booster = train_lightgbm(encoded["train"], encoded["valid"])
    results["lightgbm"] = ranking_scores(labels, predict_lightgbm(booster, encoded["test"]))
    popularity = artifact.popularity
    log_counts = {
        name: np.log1p(popularity.score(part["movie_id"].to_numpy())) for name, part in parts.items()
    }
    a, b = platt_fit(log_counts["train"], encoded["train"]["label"])
    results["popularity"] = ranking_scores(labels, _sigmoid(a * log_counts["test"] + b))
    return results


# ---------------------------------------------------------------------------------------------- retrieval
@dataclass
class RetrievalTask:
    """Users x catalog matrices for one cut-off: what each user had rated before it and liked after it."""

    user_ids: np.ndarray  # sorted, the rows
    catalog_ids: np.ndarray  # sorted, the columns
    history: pl.DataFrame  # ratings before the cut-off
    seen: sp.csr_matrix
    relevant: sp.csr_matrix

    def rows_of(self, user_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.user_ids, user_ids)

    def cols_of(self, movie_ids: np.ndarray, where: str) -> np.ndarray:
        cols, found = lookup_rows(self.catalog_ids, np.asarray(movie_ids, dtype=np.int64))
        if not found.all():
            missing = np.asarray(movie_ids)[~found]
            raise EvaluationError(
                f"{where}: {missing.size} rated movie(s) missing from the catalog, e.g. {missing[:5]}"
            )
        return cols

    def matrix(self, pairs: pl.DataFrame, where: str) -> sp.csr_matrix:
        """Boolean [users x catalog] with the (user_id, movie_id) pairs of ``pairs``."""
        rows = self.rows_of(pairs["user_id"].to_numpy())
        return interaction_matrix(rows, self.cols_of(pairs["movie_id"].to_numpy(), where), self.shape)

    @property
    def shape(self) -> tuple[int, int]:
        return self.user_ids.size, self.catalog_ids.size

    @property
    def history_likes(self) -> pl.DataFrame:
        return self.history.filter(pl.col("label") == 1)


def retrieval_task(
    samples: pl.DataFrame, catalog_ids: np.ndarray, history_splits: list[str], target: str
) -> RetrievalTask:
    """Rows = every user of the samples; seen = ratings in ``history_splits``; relevant = likes in ``target``."""
    user_ids = np.unique(samples["user_id"].to_numpy())
    history = samples.filter(pl.col("split").is_in(history_splits))
    targets = samples.filter((pl.col("split") == target) & (pl.col("label") == 1))
    empty = sp.csr_matrix((user_ids.size, catalog_ids.size), dtype=bool)
    task = RetrievalTask(user_ids, catalog_ids, history, seen=empty, relevant=empty)
    task.seen = task.matrix(history, "history")
    task.relevant = task.matrix(targets, f"{target} likes")
    return task


def embedding_vectors(task: RetrievalTask, item_table: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """(user vectors [users x d], item vectors [catalog x d]); users without likes and unknown movies get 0."""
    ids, vectors = item_matrix(item_table)
    positions, found = lookup_rows(ids, task.catalog_ids)
    item_vectors = np.where(found[:, None], vectors[positions], 0.0).astype(np.float32)
    likes = task.history_likes
    users, means, _ = user_embeddings_from_liked(
        likes["user_id"].to_numpy(), likes["movie_id"].to_numpy(), item_table
    )
    user_vectors = np.zeros((task.user_ids.size, vectors.shape[1]), dtype=np.float32)
    user_vectors[task.rows_of(users)] = means
    return user_vectors, item_vectors


def embedding_scorer(task: RetrievalTask, item_table: pl.DataFrame) -> ScoreChunk:
    user_vectors, item_vectors = embedding_vectors(task, item_table)
    return lambda rows: user_vectors[rows] @ item_vectors.T


def popularity_vector(task: RetrievalTask) -> np.ndarray:
    """Number of ratings of each catalog movie before the cut-off (the popularity scorer on the history)."""
    from training.popularity import PopularityScorer

    return PopularityScorer.fit(task.history["movie_id"].to_numpy()).score(task.catalog_ids)


def als_scorer(task: RetrievalTask) -> ScoreChunk:
    from training.als_baseline import fit_als

    return fit_als(task.matrix(task.history_likes, "history likes")).score


def genre_affinity(
    task: RetrievalTask, user_features: pl.DataFrame, movies: pl.DataFrame, genres: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    """User weights [users x genres] (user_genre1..5 weigh 1, 1/2, ... 1/5) and movie one-hot [catalog x genres]."""
    from starling.features.spec import USER_GENRE_FIELDS

    genre_index = pl.DataFrame({"genre": sorted(genres), "genre_col": np.arange(len(genres))})
    user_genres = (
        user_features.select("user_id", *USER_GENRE_FIELDS)
        .unpivot(index="user_id", on=list(USER_GENRE_FIELDS), variable_name="field", value_name="genre")
        .join(genre_index, on="genre", how="inner")
        .with_columns(rank=pl.col("field").str.extract(r"(\d+)$").cast(pl.Int64))
    )
    weights = np.zeros((task.user_ids.size, len(genres)), dtype=np.float32)
    weights[task.rows_of(user_genres["user_id"].to_numpy()), user_genres["genre_col"].to_numpy()] = (
        1.0 / user_genres["rank"].to_numpy()
    )
    movie_genres = (
        movies.select("movie_id", "genres")
        .explode("genres")
        .rename({"genres": "genre"})
        .join(genre_index, on="genre", how="inner")
    )
    one_hot = np.zeros((task.catalog_ids.size, len(genres)), dtype=np.float32)
    one_hot[
        task.cols_of(movie_genres["movie_id"].to_numpy(), "movies.parquet"),
        movie_genres["genre_col"].to_numpy(),
    ] = 1.0
    return weights, one_hot


def _channel(scores: np.ndarray, seen_dense: np.ndarray, quota: np.ndarray, candidates: np.ndarray) -> None:
    """Mark the ``quota[row]`` best unseen, finite-scored movies of each row in ``candidates`` (in place)."""
    scores = np.where(seen_dense, -np.inf, scores)
    items, values = top_k(scores, int(quota.max()))
    rows = np.broadcast_to(np.arange(scores.shape[0])[:, None], items.shape)
    keep = np.isfinite(values) & (np.arange(items.shape[1])[None, :] < quota[:, None])
    candidates[rows[keep], items[keep]] = True


@dataclass
class PipelineParts:
    user_vectors: np.ndarray
    item_vectors: np.ndarray
    has_likes: np.ndarray  # bool [users]
    popularity: np.ndarray  # [catalog]
    genre_weights: np.ndarray
    genre_one_hot: np.ndarray
    user_features: pl.DataFrame
    movie_features: pl.DataFrame


def pipeline_scorer(task: RetrievalTask, parts: PipelineParts, inputs: EvaluationInputs) -> ScoreChunk:
    """Recall (union of the channels) then the serving model's like probability; non-candidates are -inf."""
    artifact = inputs.artifact
    samples_schema = inputs.samples.drop("label").schema
    popularity_tiebreak = (parts.popularity / max(parts.popularity.max(), 1.0)).astype(np.float32) * 1e-3

    def score(rows: np.ndarray) -> np.ndarray:
        seen_dense = task.seen[rows].toarray()
        candidates = np.zeros((rows.size, task.catalog_ids.size), dtype=bool)
        # A user with no like yet has nothing for the embedding and genre channels: popular takes their quota.
        has_likes = parts.has_likes[rows]
        has_genres = parts.genre_weights[rows].any(axis=1)
        embedding = parts.user_vectors[rows] @ parts.item_vectors.T
        _channel(embedding, seen_dense, np.where(has_likes, EMBEDDING_CANDIDATES, 0), candidates)
        genre = parts.genre_weights[rows] @ parts.genre_one_hot.T
        genre = np.where(genre > 0, genre + popularity_tiebreak, -np.inf)
        _channel(genre, seen_dense, np.where(has_genres, GENRE_CANDIDATES, 0), candidates)
        popular_quota = (
            POPULAR_CANDIDATES
            + np.where(has_likes, 0, EMBEDDING_CANDIDATES)
            + np.where(has_genres, 0, GENRE_CANDIDATES)
        )
        _channel(np.broadcast_to(parts.popularity, candidates.shape), seen_dense, popular_quota, candidates)
        pair_rows, pair_cols = np.nonzero(candidates)
        pairs = pl.DataFrame(
            {"user_id": task.user_ids[rows][pair_rows], "movie_id": task.catalog_ids[pair_cols]}
        )
        joined = pairs.join(
            parts.user_features, on="user_id", how="left", validate="m:1", maintain_order="left"
        ).join(parts.movie_features, on="movie_id", how="left", validate="m:1", maintain_order="left")
        probabilities = artifact.predict(
            with_null_columns(joined, samples_schema).select(samples_schema.names())
        )
        scores = np.full(candidates.shape, -np.inf)
        scores[pair_rows, pair_cols] = probabilities
        return scores

    return score


def _item_tables(inputs: EvaluationInputs, workdir: Path) -> dict[str, pl.DataFrame]:
    """The artifact's item embeddings; a method the artifact lacks is trained now on the train split."""
    tables = dict(inputs.artifact.item_embeddings)
    for method in METHODS:
        if method not in tables:
            tables[method] = train_item_embeddings(workdir, inputs.artifact.spec, method)
    return tables


def evaluate_retrieval_methods(inputs: EvaluationInputs, workdir: Path) -> dict[str, dict[str, float]]:
    from starling.features.build import compute_entity_features

    catalog_ids = np.unique(inputs.movies["movie_id"].to_numpy().astype(np.int64))
    samples = inputs.samples
    tables = _item_tables(inputs, workdir)
    test = retrieval_task(samples, catalog_ids, ["train", "valid"], "test")

    def run(scorer: ScoreChunk, task: RetrievalTask = test) -> dict[str, float]:
        metrics = evaluate_retrieval(scorer, task.relevant, task.seen, ks=RETRIEVAL_KS, chunk_size=USER_CHUNK)
        return {name: metrics[name] for name in RETRIEVAL_COLUMNS}

    results = {method: run(embedding_scorer(test, tables[method])) for method in METHODS}
    popularity = popularity_vector(test)
    results["popularity"] = run(lambda rows: np.broadcast_to(popularity, (rows.size, popularity.size)).copy())
    results["implicit_als"] = run(als_scorer(test))

    valid = retrieval_task(samples, catalog_ids, ["train"], "valid")
    valid_ndcg = {
        method: run(embedding_scorer(valid, tables[method]), valid)["ndcg@10"] for method in METHODS
    }
    best = max(METHODS, key=lambda method: valid_ndcg[method])
    user_vectors, item_vectors = embedding_vectors(test, tables[best])

    history_ratings = test.history.select("user_id", "movie_id", "rating", "event_timestamp")
    cutoff = inputs.split.get("test_cutoff") if inputs.split.get("kind") == "time" else None
    as_of = datetime.fromisoformat(cutoff) if cutoff else None
    user_features, movie_features = compute_entity_features(history_ratings, inputs.movies, as_of=as_of)
    user_features = user_features.drop("event_timestamp", strict=False)
    movie_features = movie_features.drop("event_timestamp", strict=False)
    weights, one_hot = genre_affinity(
        test, user_features, inputs.movies, list(inputs.artifact.spec.vocabularies["genre"])
    )
    liked_users = np.unique(test.rows_of(test.history_likes["user_id"].to_numpy()))
    has_likes = np.zeros(test.user_ids.size, dtype=bool)
    has_likes[liked_users] = True
    parts = PipelineParts(
        user_vectors, item_vectors, has_likes, popularity, weights, one_hot, user_features, movie_features
    )
    results["pipeline"] = run(pipeline_scorer(test, parts, inputs))
    return results


# ------------------------------------------------------------------------------------------------- report
def evaluate(workdir: Path) -> dict:
    """Evaluate everything on the test split; writes and returns the metrics object (see module doc)."""
    workdir = Path(workdir)
    inputs = load_inputs(workdir)
    metrics = {
        "ranking": evaluate_ranking(inputs),
        "retrieval": evaluate_retrieval_methods(inputs, workdir),
        "split": inputs.split,
    }
    reports = workdir / "reports"
    reports.mkdir(parents=True, exist_ok=True)
    tmp = reports / "metrics.json.tmp"
    tmp.write_text(json.dumps(metrics, indent=2))
    os.replace(tmp, reports / "metrics.json")
    return metrics


def format_table(metrics: dict) -> str:
    """Two aligned sections (ranking, retrieval), best first, under a one-line summary of the split."""
    split = metrics.get("split", {})
    counts = split.get("counts", {})
    header = f"split: {split.get('kind', '?')}"
    if split.get("test_cutoff"):
        header += f", test from {split['test_cutoff']}"
    if counts:
        header += ", " + ", ".join(f"{name} {count:,}" for name, count in counts.items())
    lines = [header]
    sections = (
        ("ranking (test samples)", metrics["ranking"], RANKING_COLUMNS, "auc"),
        (
            "retrieval (test users, whole catalog, seen excluded)",
            metrics["retrieval"],
            RETRIEVAL_COLUMNS,
            "ndcg@10",
        ),
    )
    for title, rows, columns, sort_key in sections:
        width = max(len(name) for name in rows) + 2
        lines += ["", title, "".ljust(width) + "".join(column.rjust(12) for column in columns)]
        for name, values in sorted(rows.items(), key=lambda item: -item[1][sort_key]):
            lines.append(name.ljust(width) + "".join(f"{values[column]:12.4f}" for column in columns))
    return "\n".join(lines)
