"""Deep Interest Network (Zhou et al. 2018): the candidate movie attends over the user's liked movies."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Batch, InputLayer, ModelConfig, SpecLike, mlp


class InterestAttention(nn.Module):
    """Weights each liked movie k by an MLP over [q, k, q-k, q*k] (q = candidate); missing ones weigh 0.

    As in DIN the weights are not softmax-normalized, so the interest vector keeps the intensity of interest.
    """

    def __init__(self, dim: int, hidden_units: int = 36) -> None:
        super().__init__()
        self.score = mlp(4 * dim, (hidden_units,))

    def forward(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        query = query.unsqueeze(1).expand_as(keys)
        weights = self.score(torch.cat([query, keys, query - keys, query * keys], dim=-1)).squeeze(-1)
        weights = weights * mask.to(weights.dtype)  # [n, 5]
        return (weights.unsqueeze(-1) * keys).sum(1)


class DIN(nn.Module):
    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        self.inputs = InputLayer(spec, config)
        self.attention = InterestAttention(config.embedding_dim)
        self.tower = mlp(
            self.inputs.flat_dim(with_liked_mean=False) + config.embedding_dim, config.hidden_units
        )

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = self.inputs(batch)
        interest = self.attention(embedded.movie, embedded.liked_movies, embedded.liked_mask)
        return self.tower(torch.cat([embedded.flat(with_liked_mean=False), interest], dim=1)).squeeze(-1)
