"""Two-tower retrieval model trained with in-batch sampled softmax on liked (user, movie) pairs.

- User tower: user id embedding + mean of the liked-movie embeddings (shared with the item tower's movie id
  table) + mean of the user's genre embeddings → MLP → L2-normalized.
- Item tower: movie id embedding + mean of the movie's genre embeddings + release-year bucket embedding →
  MLP → L2-normalized.

Inputs are the encoded batches of the one transform (``starling.features.transform``) of train-split samples,
so each pair sees the user's features as of that sample. Softmax over the other movies of the batch with a
logQ correction (minus log of each movie's share of the training pairs) so popular movies are not
over-penalized as negatives; other rows of the batch with the same movie are masked (not negatives).
Ids are dropped to the unknown index 0 with probability ``id_dropout`` while training, so the towers learn to
work from genres and year alone: a cold movie (not in the vocabulary) still gets a useful vector.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from starling.errors import StarlingError

TOWER_INPUTS = ("user", "liked_movies", "user_genres", "movie", "movie_genres", "year_bucket")


@dataclass(frozen=True)
class TwoTowerConfig:
    dim: int = 32
    hidden: int = 64
    epochs: int = 6
    batch_size: int = 1024
    learning_rate: float = 3e-3
    temperature: float = 0.07
    id_dropout: float = 0.1
    seed: int = 0


def masked_mean(embedded: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Mean over the last-but-one axis of ``embedded`` [n, slots, d], ignoring slots whose index is 0."""
    mask = (indices > 0).unsqueeze(-1).to(embedded.dtype)
    return (embedded * mask).sum(1) / mask.sum(1).clamp(min=1.0)


class TwoTower(nn.Module):
    def __init__(
        self, n_users: int, n_movies: int, n_genres: int, n_year_buckets: int, config: TwoTowerConfig
    ):
        super().__init__()
        dim = config.dim
        self.user_id = nn.Embedding(n_users, dim, padding_idx=0)
        self.movie_id = nn.Embedding(n_movies, dim, padding_idx=0)
        self.genre = nn.Embedding(n_genres, dim, padding_idx=0)
        self.year_bucket = nn.Embedding(n_year_buckets, dim, padding_idx=0)
        self.user_mlp = nn.Sequential(
            nn.Linear(3 * dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, dim)
        )
        self.item_mlp = nn.Sequential(
            nn.Linear(3 * dim, config.hidden), nn.ReLU(), nn.Linear(config.hidden, dim)
        )

    def user_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [
            self.user_id(batch["user"]),
            masked_mean(self.movie_id(batch["liked_movies"]), batch["liked_movies"]),
            masked_mean(self.genre(batch["user_genres"]), batch["user_genres"]),
        ]
        return F.normalize(self.user_mlp(torch.cat(parts, dim=1)), dim=1)

    def item_vectors(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [
            self.movie_id(batch["movie"]),
            masked_mean(self.genre(batch["movie_genres"]), batch["movie_genres"]),
            self.year_bucket(batch["year_bucket"]),
        ]
        return F.normalize(self.item_mlp(torch.cat(parts, dim=1)), dim=1)


def _drop_ids(ids: torch.Tensor, probability: float, generator: torch.Generator) -> torch.Tensor:
    keep = torch.rand(ids.shape, generator=generator) >= probability
    return ids * keep


def train_two_tower(
    encoded: dict[str, np.ndarray],
    sizes: dict[str, int],
    config: TwoTowerConfig = TwoTowerConfig(),
) -> TwoTower:
    """Train on encoded liked pairs (keys TOWER_INPUTS); ``sizes`` = table sizes for user/movie/genre/year_bucket."""
    missing = [key for key in TOWER_INPUTS if key not in encoded]
    if missing:
        raise StarlingError(f"two_tower: encoded training data lacks {missing}")
    n_pairs = encoded["movie"].shape[0]
    if n_pairs < 2:
        raise StarlingError(f"two_tower: need at least 2 liked training pairs, got {n_pairs}")
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = TwoTower(sizes["user"], sizes["movie"], sizes["genre"], sizes["year_bucket"], config)
    tensors = {
        key: torch.from_numpy(np.ascontiguousarray(encoded[key], dtype=np.int64)) for key in TOWER_INPUTS
    }
    movie_share = np.bincount(encoded["movie"], minlength=sizes["movie"]) / n_pairs
    log_q = torch.from_numpy(np.log(np.maximum(movie_share, 1e-12))).float()
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    model.train()
    for _ in range(config.epochs):
        order = torch.randperm(n_pairs, generator=generator)
        for start in range(0, n_pairs - 1, config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = {key: tensor[rows] for key, tensor in tensors.items()}
            movies = batch["movie"]
            batch["user"] = _drop_ids(batch["user"], config.id_dropout, generator)
            batch["movie"] = _drop_ids(movies, config.id_dropout, generator)
            logits = model.user_vectors(batch) @ model.item_vectors(batch).T / config.temperature
            logits = logits - log_q[movies].unsqueeze(0)
            same_movie = (movies.unsqueeze(0) == movies.unsqueeze(1)) & ~torch.eye(
                rows.numel(), dtype=torch.bool
            )
            logits = logits.masked_fill(same_movie, float("-inf"))
            loss = F.cross_entropy(logits, torch.arange(rows.numel()))
            if not torch.isfinite(loss):
                raise StarlingError(f"two_tower: non-finite loss {loss.item()}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    model.eval()
    return model


def item_tower_vectors(
    model: TwoTower, encoded: dict[str, np.ndarray], batch_size: int = 65536
) -> np.ndarray:
    """float32 [n, dim] L2-normalized item vectors for encoded movie rows (cold ones from genres + year)."""
    keys = ("movie", "movie_genres", "year_bucket")
    tensors = {key: torch.from_numpy(np.ascontiguousarray(encoded[key], dtype=np.int64)) for key in keys}
    n = tensors["movie"].shape[0]
    with torch.no_grad():
        chunks = [
            model.item_vectors({key: t[start : start + batch_size] for key, t in tensors.items()})
            for start in range(0, n, batch_size)
        ]
    return (
        torch.cat(chunks).numpy().astype(np.float32)
        if chunks
        else np.zeros((0, model.movie_id.embedding_dim), np.float32)
    )
