"""Ranking models. Each is a small module over the shared input layer (``base.py``); add one to MODELS."""

from __future__ import annotations

from torch import nn

from starling.errors import StarlingError
from training.models.base import ModelConfig, SpecLike
from training.models.deepfm import DeepFM
from training.models.din import DIN
from training.models.embedding_mlp import EmbeddingMLP
from training.models.neural_cf import NeuralCF
from training.models.rank_mlp import RankMLP
from training.models.wide_deep import WideDeep

MODELS: dict[str, type[nn.Module]] = {
    "embedding_mlp": EmbeddingMLP,
    "wide_deep": WideDeep,
    "neural_cf": NeuralCF,
    "deepfm": DeepFM,
    "din": DIN,
    "rank_mlp": RankMLP,
}


def build_model(name: str, spec: SpecLike, config: ModelConfig | None = None) -> nn.Module:
    """A fresh (untrained) model ``name`` sized by ``spec``'s vocabularies and bucket boundaries."""
    if name not in MODELS:
        raise StarlingError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](spec, config or ModelConfig())


__all__ = ["MODELS", "ModelConfig", "build_model"]
