"""NeuMF (He et al. 2017): generalized matrix factorization and an MLP over user and movie embeddings."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Batch, InputLayer, ModelConfig, SpecLike, embedding_table, mlp


class NeuralCF(nn.Module):
    """GMF (user ⊙ movie, its own embedding tables) beside an MLP over [user, movie] (the shared input
    layer's tables), concatenated into one linear output. Ids only, as in the paper."""

    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        dim = config.embedding_dim
        self.inputs = InputLayer(spec, config, ids_only=True)
        self.gmf_user = embedding_table(spec.vocab_size("user"), dim)
        self.gmf_movie = embedding_table(spec.vocab_size("movie"), dim)
        mlp_units = tuple(max(units // 2, 8) for units in config.hidden_units)
        self.tower = mlp(2 * dim, mlp_units, out_features=None)
        self.output = nn.Linear(dim + mlp_units[-1], 1)

    def forward(self, batch: Batch) -> torch.Tensor:
        user, movie = self.inputs.ids(batch)
        gmf = self.gmf_user(user) * self.gmf_movie(movie)
        tower = self.tower(torch.cat([self.inputs.user(user), self.inputs.movie(movie)], dim=1))
        return self.output(torch.cat([gmf, tower], dim=1)).squeeze(-1)
