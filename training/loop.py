"""The one training loop every ranking model shares, and batched prediction.

Whole-split tensors are sliced into large batches with a shuffled permutation (no per-row DataLoader). Adam on
BCE-with-logits; after every epoch the valid AUC decides early stopping, and the best weights are restored.
A non-finite loss stops training and is reported (the quality gate then refuses the model).
"""

from __future__ import annotations

import copy
import random
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from starling.config import get_settings
from training.data import EncodedSplit
from training.models.base import ModelConfig
from training.ranking_metrics import auc, logloss

PREDICT_BATCH_SIZE = 65_536


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    valid_auc: float | None  # None when the epoch's loss was not finite
    valid_logloss: float | None
    seconds: float


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_auc: float | None = None
    #: Why training was aborted (non-finite loss), or None.
    failure: str | None = None
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return asdict(self)


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch (all devices) so a training run is repeatable."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def training_device() -> torch.device:
    """CUDA when available (or forced by STARLING_TRAIN_DEVICE), else CPU."""
    choice = get_settings().train_device
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


def progress_enabled() -> bool:
    """Progress bars only on a terminal, and not when STARLING_PROGRESS=0."""
    return get_settings().progress and sys.stderr.isatty()


@torch.no_grad()
def predict_logits(
    model: nn.Module, features: Mapping[str, torch.Tensor], batch_size: int = PREDICT_BATCH_SIZE
) -> np.ndarray:
    """Logits [n] (float32) for whole-split feature tensors, in eval mode, on the model's device."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    n_rows = len(next(iter(features.values())))
    outputs = []
    for start in range(0, n_rows, batch_size):
        batch = {key: value[start : start + batch_size].to(device) for key, value in features.items()}
        outputs.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(outputs).numpy() if outputs else np.zeros(0, dtype=np.float32)


def predict_proba(
    model: nn.Module, features: Mapping[str, torch.Tensor], batch_size: int = PREDICT_BATCH_SIZE
) -> np.ndarray:
    """Probabilities of a like: sigmoid of :func:`predict_logits`."""
    return torch.sigmoid(torch.from_numpy(predict_logits(model, features, batch_size))).numpy()


def fit(
    model: nn.Module,
    train: EncodedSplit,
    valid: EncodedSplit,
    config: ModelConfig,
    device: torch.device | None = None,
    description: str = "train",
) -> FitResult:
    """Train ``model`` in place; on return it holds the weights of its best valid-AUC epoch."""
    seed_everything(config.seed)
    device = device or training_device()
    model.to(device)
    train = train.to(device)
    valid_features = {key: value.to(device) for key, value in valid.features.items()}
    valid_labels = valid.labels.numpy()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    loss_fn = nn.BCEWithLogitsLoss(reduction="sum")
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    n_rows = len(train)
    batches_per_epoch = -(-n_rows // config.batch_size)

    result = FitResult(device=str(device))
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_gain = 0
    started = time.perf_counter()
    bar = tqdm(
        total=config.max_epochs * batches_per_epoch,
        desc=description,
        unit="batch",
        disable=not progress_enabled(),
    )
    for epoch in range(1, config.max_epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(n_rows, generator=generator).to(device)
        for start in range(0, n_rows, config.batch_size):
            rows = order[start : start + config.batch_size]
            batch = {key: value[rows] for key, value in train.features.items()}
            loss = loss_fn(model(batch), train.labels[rows])
            optimizer.zero_grad(set_to_none=True)
            (loss / len(rows)).backward()
            optimizer.step()
            loss_sum += loss.detach()
            bar.update()
        train_loss = float(loss_sum) / n_rows  # one device sync per epoch
        if not np.isfinite(train_loss):
            result.failure = f"non-finite training loss ({train_loss}) in epoch {epoch}"
            result.history.append(
                EpochStats(epoch, train_loss, None, None, time.perf_counter() - epoch_started)
            )
            break
        probabilities = predict_proba(model, valid_features)
        if not np.isfinite(probabilities).all():
            result.failure = f"non-finite valid predictions after epoch {epoch}"
            result.history.append(
                EpochStats(epoch, train_loss, None, None, time.perf_counter() - epoch_started)
            )
            break
        valid_auc = auc(valid_labels, probabilities)
        stats = EpochStats(
            epoch,
            train_loss,
            valid_auc,
            logloss(valid_labels, probabilities),
            time.perf_counter() - epoch_started,
        )
        result.history.append(stats)
        bar.set_postfix(epoch=epoch, loss=f"{train_loss:.4f}", valid_auc=f"{valid_auc:.4f}")
        if result.best_valid_auc is None or valid_auc > result.best_valid_auc:
            result.best_epoch, result.best_valid_auc = epoch, valid_auc
            best_state = copy.deepcopy(
                {key: value.detach().cpu() for key, value in model.state_dict().items()}
            )
            epochs_without_gain = 0
        else:
            epochs_without_gain += 1
            if epochs_without_gain >= config.patience:
                break
    bar.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    result.seconds = time.perf_counter() - started
    return result
