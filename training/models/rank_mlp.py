"""An MLP over the numeric features only: the entity statistics and recall's candidate features (clipped
z-scores and missing flags), no id or genre embeddings. With the listwise loss it ranks recalled candidates
by what generalises across users and time (popularity now, quality, age, the user's activity and affinity,
each channel's score) rather than by memorised ids.

``config.ensemble`` towers are initialised independently and each learns from its own loss (in training the
model returns their logits side by side, [n, ensemble]); at inference it returns their mean, which is less
sensitive to any one initialisation than a single tower.
"""

from __future__ import annotations

import torch
from torch import nn

from training.models.base import NUMERIC_CLIP, Batch, ModelConfig, SpecLike, mlp


class RankMLP(nn.Module):
    encoded_inputs = ("numeric", "numeric_missing")  # see training.models.base.model_inputs

    def __init__(self, spec: SpecLike, config: ModelConfig) -> None:
        super().__init__()
        width = 2 * len(spec.numeric_fields)
        self.towers = nn.ModuleList(mlp(width, config.hidden_units) for _ in range(max(config.ensemble, 1)))

    def forward(self, batch: Batch) -> torch.Tensor:
        numeric = batch["numeric"].clamp(-NUMERIC_CLIP, NUMERIC_CLIP)
        inputs = torch.cat([numeric, batch["numeric_missing"]], dim=1)
        logits = torch.cat([tower(inputs) for tower in self.towers], dim=1)
        return logits if self.training and len(self.towers) > 1 else logits.mean(dim=1)
