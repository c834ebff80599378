"""The design's ranking model: every field embedding plus the dense features into an MLP 128-128-1."""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import Batch, InputLayer, ModelConfig, SpecLike, mlp


class EmbeddingMLP(nn.Module):
    """Ids, genres (shared genre table), numeric buckets, the mean liked-movie embedding, z-scores and
    missing flags, concatenated into an MLP (ReLU); returns logits."""

    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        self.inputs = InputLayer(spec, config)
        self.tower = mlp(self.inputs.flat_dim(), config.hidden_units)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.tower(self.inputs(batch).flat()).squeeze(-1)
