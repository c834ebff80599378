"""Scoring an encoded batch with a ranking model: what the KServe ranker's ``predict`` does, as a plain function
that the offline replay of the pipeline (training/replay.py) calls too."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from training.models.base import model_inputs


def score_encoded(model: nn.Module, encoded: Mapping[str, np.ndarray], device: torch.device) -> np.ndarray:
    """float32 scores in (0, 1): the sigmoid of the model's logits for each encoded row.

    With a ranking loss the logits order a user's candidates; the sigmoid only bounds them for display and
    re-ranking adjustments (it is not a calibrated probability).
    """
    features = {
        key: torch.from_numpy(np.ascontiguousarray(encoded[key])).to(device) for key in model_inputs(model)
    }
    with torch.inference_mode():
        return torch.sigmoid(model(features)).float().cpu().numpy().reshape(-1)
