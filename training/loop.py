"""The training loops the ranking models share, and batched prediction.

Whole-split tensors are sliced into large batches (no per-row DataLoader); Adam; the best epoch's weights are
restored; a non-finite loss stops training and is reported (the quality gate then refuses the model).

:func:`fit_ranking`: recalled candidates grouped per user request, a listwise softmax loss (ListNet: each
group's positives share a target distribution), early stopping on the valid groups' NDCG@10 (relevant movies
that recall missed count as misses); the per-group AUC is recorded as a diagnostic.

Distributed data parallel (`starling train --nproc N`, torchrun): when a torch.distributed process group of
more than one rank is initialized, :func:`fit_ranking` wraps the model in DistributedDataParallel (gloo on CPU,
NCCL on CUDA). Every rank draws the same permutation of the groups each epoch and trains on its own share
(rank r takes groups r, r + N, ...), with ``1/N`` of the single-process batch, so that a step still averages
the gradient of one single-process batch of groups and an epoch has the same number of steps. Every rank
scores the (small) valid set itself: the weights are identical after each step, so every rank makes the same
early-stopping decision without another collective.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from starling.config import get_settings
from starling.progress import Progress
from training.ltr import EncodedGroups, group_rows
from training.models.base import ModelConfig

PREDICT_BATCH_SIZE = 65_536


@dataclass
class EpochStats:
    epoch: int  # 1-based
    train_loss: float
    valid_auc: float | None  # None when the epoch's loss was not finite
    valid_logloss: float | None
    seconds: float
    valid_ndcg: float | None = None  # fit_ranking: mean NDCG@10 of the valid groups


@dataclass
class FitResult:
    history: list[EpochStats] = field(default_factory=list)
    best_epoch: int | None = None
    best_valid_auc: float | None = None
    best_valid_ndcg: float | None = None
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


def world() -> tuple[int, int]:
    """(rank, world size) of the initialized torch.distributed process group; (0, 1) without one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def training_device() -> torch.device:
    """CUDA when available (or forced by STARLING_TRAIN_DEVICE), else CPU."""
    choice = get_settings().train_device
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(choice)


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


def listwise_loss(
    logits: torch.Tensor, labels: torch.Tensor, group: torch.Tensor, groups: int
) -> torch.Tensor:
    """Mean over groups with a positive of the cross-entropy between the group's softmax over its rows and
    the uniform distribution over its positive rows (ListNet with binary relevance)."""
    top = torch.zeros(groups, device=logits.device, dtype=logits.dtype).scatter_reduce(
        0, group, logits.detach(), reduce="amax", include_self=False
    )
    shifted = logits - top[group]
    denominator = torch.zeros(groups, device=logits.device, dtype=logits.dtype).index_add(
        0, group, torch.exp(shifted)
    )
    log_softmax = shifted - torch.log(denominator[group])
    positives = torch.zeros(groups, device=logits.device, dtype=logits.dtype).index_add(0, group, labels)
    weights = labels / positives.clamp_min(1.0)[group]
    return -(weights * log_softmax).sum() / (positives > 0).sum().clamp_min(1)


def fit_ranking(
    model: nn.Module,
    train: EncodedGroups,
    valid: EncodedGroups | None,
    config: ModelConfig,
    device: torch.device | None = None,
    description: str = "train",
) -> FitResult:
    """Train ``model`` in place on grouped candidates; on return it holds its best valid-NDCG@10 epoch.

    Without ``valid`` (a refit on more recent windows after selection) it trains exactly ``max_epochs``.
    """
    from training.ranking_metrics import grouped_auc, grouped_ndcg

    seed_everything(config.seed)
    device = device or training_device()
    model.to(device)
    rank, size = world()
    trained: nn.Module = model
    if size > 1:
        from torch.nn.parallel import DistributedDataParallel

        on_one_gpu = device.type == "cuda" and device.index is not None
        trained = DistributedDataParallel(model, device_ids=[device.index] if on_one_gpu else None)
    features = {key: value.to(device) for key, value in train.features.items()}
    labels = train.labels.to(device)
    if valid is not None:
        valid_features = {key: value.to(device) for key, value in valid.features.items()}
        valid_labels = valid.labels.numpy()
    optimizer = torch.optim.Adam(
        model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay
    )
    generator = torch.Generator(device="cpu").manual_seed(config.seed)
    sizes = np.diff(train.offsets)
    groups_per_batch = max(1, int(config.batch_size // max(sizes.mean(), 1.0)))
    # distributed: each rank takes an equal share of the groups (the last size - 1 of a permutation are left
    # for that epoch, so that every rank runs the same number of steps) in 1/size of the batch
    shared_groups = train.groups - train.groups % size
    groups_per_batch = max(1, groups_per_batch // size)
    own_groups = shared_groups // size
    batches_per_epoch = -(-own_groups // groups_per_batch)

    result = FitResult(device=str(device))
    best_state: dict[str, torch.Tensor] | None = None
    epochs_without_gain = 0
    started = time.perf_counter()
    bar = Progress(description, total=config.max_epochs * batches_per_epoch, unit="batches")
    for epoch in range(1, config.max_epochs + 1):
        epoch_started = time.perf_counter()
        model.train()
        loss_sum = torch.zeros((), device=device)
        order = torch.randperm(train.groups, generator=generator).numpy()[:shared_groups][rank::size]
        for start in range(0, own_groups, groups_per_batch):
            rows, local = group_rows(train.offsets, order[start : start + groups_per_batch])
            rows_t = torch.from_numpy(rows).to(device)
            batch = {key: value[rows_t] for key, value in features.items()}
            n_groups = int(local[-1]) + 1
            logits, group = trained(batch), torch.from_numpy(local).to(device)
            columns = logits.unsqueeze(1) if logits.dim() == 1 else logits  # ensembles: one loss per member
            loss = sum(
                listwise_loss(columns[:, j], labels[rows_t], group, n_groups) for j in range(columns.shape[1])
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach() * n_groups
            bar.update()
        if size > 1:  # the mean over every rank's groups
            import torch.distributed as dist

            dist.all_reduce(loss_sum)
        train_loss = float(loss_sum) / max(shared_groups, 1)  # one device sync per epoch
        if not np.isfinite(train_loss):
            result.failure = f"non-finite training loss ({train_loss}) in epoch {epoch}"
            result.history.append(
                EpochStats(epoch, train_loss, None, None, time.perf_counter() - epoch_started)
            )
            break
        if valid is None:
            result.history.append(
                EpochStats(epoch, train_loss, None, None, time.perf_counter() - epoch_started)
            )
            result.best_epoch = epoch
            continue
        scores = predict_logits(model, valid_features)
        if not np.isfinite(scores).all():
            result.failure = f"non-finite valid scores after epoch {epoch}"
            result.history.append(
                EpochStats(epoch, train_loss, None, None, time.perf_counter() - epoch_started)
            )
            break
        valid_ndcg = float(np.nanmean(grouped_ndcg(scores, valid_labels, valid.offsets, valid.n_relevant)))
        valid_auc = float(np.nanmean(grouped_auc(scores, valid_labels, valid.offsets)))
        stats = EpochStats(
            epoch, train_loss, valid_auc, None, time.perf_counter() - epoch_started, valid_ndcg=valid_ndcg
        )
        result.history.append(stats)
        bar.update(0, epoch=epoch, loss=round(train_loss, 4), valid_ndcg=round(valid_ndcg, 4))
        if result.best_valid_ndcg is None or valid_ndcg > result.best_valid_ndcg:
            result.best_epoch, result.best_valid_ndcg, result.best_valid_auc = epoch, valid_ndcg, valid_auc
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
