"""Wide & Deep: a linear model over one-hots and genre crosses (wide) plus the embedding MLP tower (deep)."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Batch, FirstOrderTerms, InputLayer, ModelConfig, SpecLike, mlp


class GenreCrosses(nn.Module):
    """One weight per (user genre, movie genre) pair: every user_genre_i x movie_genre_j of a row is looked up
    in a table of genre_vocab**2 rows (exact, no hashing needed for a genre vocabulary). Pairs with a null
    side map to the zero row 0."""

    def __init__(self, spec: SpecLike) -> None:
        super().__init__()
        self.n_genres = spec.vocab_size("genre")
        self.weights = nn.Embedding(self.n_genres * self.n_genres, 1, padding_idx=0)
        nn.init.zeros_(self.weights.weight)

    def forward(self, batch: Batch) -> torch.Tensor:
        user_genres = batch["user_genres"].unsqueeze(2)  # [n, 5, 1]
        movie_genres = batch["movie_genres"].unsqueeze(1)  # [n, 1, 3]
        pairs = user_genres * self.n_genres + movie_genres  # [n, 5, 3]
        pairs = pairs.masked_fill((user_genres == 0) | (movie_genres == 0), 0)
        return self.weights(pairs).sum((1, 2, 3))


class WideDeep(nn.Module):
    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        self.wide = FirstOrderTerms(spec)
        self.crosses = GenreCrosses(spec)
        self.inputs = InputLayer(spec, config)
        self.deep = mlp(self.inputs.flat_dim(), config.hidden_units)

    def forward(self, batch: Batch) -> torch.Tensor:
        deep = self.deep(self.inputs(batch).flat()).squeeze(-1)
        return self.wide(batch) + self.crosses(batch) + deep
