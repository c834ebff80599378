"""item2vec: skip-gram with negative sampling over each user's time-ordered liked movies.

Items are movie vocabulary indices (index 0 = unknown, never trained). Pairs (center, context) are every two
likes of the same user at most ``window`` positions apart, both directions; built with numpy, one loop over
window offsets. Negatives come from the unigram^0.75 distribution of the training likes.

Exported vectors are the L2-normalized input ("center") embeddings. A movie that never occurs in a training
pair (cold, or unknown to the vocabulary) gets the reserved unknown embedding: the zero vector, so any dot
product with it is 0 (neutral) and lookups never fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from starling.errors import StarlingError


@dataclass(frozen=True)
class Item2VecConfig:
    dim: int = 32
    window: int = 5
    negatives: int = 5
    epochs: int = 5
    batch_size: int = 8192
    learning_rate: float = 0.01
    seed: int = 0


def skipgram_pairs(sequence_ids: np.ndarray, items: np.ndarray, window: int) -> tuple[np.ndarray, np.ndarray]:
    """(center, context) pairs within ``window`` positions of the same sequence, both directions.

    ``sequence_ids`` and ``items`` are parallel arrays sorted by (sequence, time): one row per event.
    """
    centers: list[np.ndarray] = []
    contexts: list[np.ndarray] = []
    for offset in range(1, window + 1):
        same_sequence = sequence_ids[:-offset] == sequence_ids[offset:]
        left, right = items[:-offset][same_sequence], items[offset:][same_sequence]
        centers += [left, right]
        contexts += [right, left]
    if not centers:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(centers).astype(np.int64), np.concatenate(contexts).astype(np.int64)


class SkipGram(nn.Module):
    """Center and context embedding tables; row 0 (unknown) is padding and stays zero."""

    def __init__(self, n_items: int, dim: int) -> None:
        super().__init__()
        self.center = nn.Embedding(n_items, dim, padding_idx=0)
        self.context = nn.Embedding(n_items, dim, padding_idx=0)
        nn.init.uniform_(self.center.weight, -0.5 / dim, 0.5 / dim)
        nn.init.zeros_(self.context.weight)
        with torch.no_grad():
            self.center.weight[0].zero_()

    def loss(self, centers: torch.Tensor, contexts: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
        """Negative-sampling loss: -log σ(c·o) - Σ log σ(-c·n), averaged over the batch."""
        center = self.center(centers)  # [b, d]
        positive = (center * self.context(contexts)).sum(-1)
        negative = torch.bmm(self.context(negatives), center.unsqueeze(-1)).squeeze(-1)  # [b, k]
        return -(F.logsigmoid(positive) + F.logsigmoid(-negative).sum(-1)).mean()


def train_item2vec(
    sequence_ids: np.ndarray, items: np.ndarray, n_items: int, config: Item2VecConfig = Item2VecConfig()
) -> np.ndarray:
    """Train on liked-item sequences; returns float32 [n_items, dim] (zero rows for items never in a pair)."""
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise StarlingError(f"item indices must lie in 0..{n_items - 1}, got {items.min()}..{items.max()}")
    known = items > 0
    centers, contexts = skipgram_pairs(sequence_ids[known], items[known], config.window)
    if centers.size == 0:
        raise StarlingError(
            "item2vec: no two liked movies share a user in the training data; nothing to learn"
        )
    generator = torch.Generator().manual_seed(config.seed)
    torch.manual_seed(config.seed)
    model = SkipGram(n_items, config.dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.learning_rate)
    frequency = np.bincount(centers, minlength=n_items).astype(np.float64)
    noise = torch.from_numpy(frequency**0.75)
    noise /= noise.sum()
    centers_t, contexts_t = torch.from_numpy(centers), torch.from_numpy(contexts)
    for _ in range(config.epochs):
        order = torch.randperm(centers.size, generator=generator)
        for start in range(0, centers.size, config.batch_size):
            batch = order[start : start + config.batch_size]
            negatives = torch.multinomial(
                noise, batch.numel() * config.negatives, replacement=True, generator=generator
            ).view(batch.numel(), config.negatives)
            loss = model.loss(centers_t[batch], contexts_t[batch], negatives)
            if not torch.isfinite(loss):
                raise StarlingError(f"item2vec: non-finite loss {loss.item()} (learning rate too high?)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    vectors = F.normalize(model.center.weight.detach(), dim=1).numpy().astype(np.float32)
    vectors[frequency == 0] = 0.0
    return vectors
