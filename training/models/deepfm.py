"""DeepFM (Guo et al. 2017): a factorization machine and a deep MLP over the same field embeddings."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Batch, FirstOrderTerms, InputLayer, ModelConfig, SpecLike, mlp


def pairwise_interactions(field_embeddings: torch.Tensor) -> torch.Tensor:
    """Sum over field pairs i < j of <v_i, v_j> for [n, fields, d], in O(fields * d): [n]."""
    square_of_sum = field_embeddings.sum(1).pow(2)
    sum_of_squares = field_embeddings.pow(2).sum(1)
    return 0.5 * (square_of_sum - sum_of_squares).sum(1)


class DeepFM(nn.Module):
    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        self.first_order = FirstOrderTerms(spec)
        self.inputs = InputLayer(spec, config)
        self.deep = mlp(self.inputs.flat_dim(), config.hidden_units)

    def forward(self, batch: Batch) -> torch.Tensor:
        embedded = self.inputs(batch)
        second_order = pairwise_interactions(embedded.stacked())
        deep = self.deep(embedded.flat()).squeeze(-1)
        return self.first_order(batch) + second_order + deep
