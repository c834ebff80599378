"""Distributed data parallel training (training/loop.py) with real torch.distributed processes (gloo, CPU):
two ranks train to the quality of one process on the same data and epochs, and end with the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from starling.local import free_port
from training.loop import fit_ranking, world
from training.ltr import EncodedGroups
from training.models.base import ModelConfig

GROUPS, ROWS, DIMENSIONS = 600, 24, 8
CONFIG = ModelConfig(learning_rate=0.01, batch_size=ROWS * 32, max_epochs=6, patience=10, seed=3)


class Scorer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(DIMENSIONS, 16), nn.ReLU(), nn.Linear(16, 1))

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.layers(batch["x"]).squeeze(-1)


def _groups(seed: int, groups: int) -> EncodedGroups:
    """Groups of candidates whose label is a noisy threshold of a fixed direction: learnable, not trivial."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(groups * ROWS, DIMENSIONS)).astype(np.float32)
    direction = np.linspace(1.0, -1.0, DIMENSIONS).astype(np.float32)
    labels = (x @ direction + rng.normal(scale=1.5, size=len(x)) > 2.0).astype(np.float32)
    offsets = np.arange(0, groups * ROWS + 1, ROWS)
    n_relevant = labels.reshape(groups, ROWS).sum(axis=1).astype(np.int64)
    return EncodedGroups({"x": torch.from_numpy(x)}, torch.from_numpy(labels), offsets, n_relevant)


def _train(out: Path) -> dict[str, object]:
    torch.manual_seed(0)  # the same initial weights on every rank (DDP also broadcasts rank 0's)
    model = Scorer()
    result = fit_ranking(model, _groups(1, GROUPS), _groups(2, 200), CONFIG, torch.device("cpu"))
    rank, size = world()
    weights = torch.cat([p.detach().flatten() for p in model.parameters()]).tolist()
    summary = {"rank": rank, "size": size, "auc": result.best_valid_auc, "ndcg": result.best_valid_ndcg}
    (out / f"rank{rank}-of{size}.json").write_text(json.dumps({**summary, "weights": weights}))
    return summary


def _rank_main(rank: int, size: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=size)
    try:
        _train(Path(out))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_train_to_the_quality_of_one(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    single = _train(tmp_path)
    assert single["size"] == 1 and single["auc"] > 0.75, single
    mp.spawn(_rank_main, args=(2, free_port(), str(tmp_path)), nprocs=2, join=True)
    ranks = [json.loads((tmp_path / f"rank{r}-of2.json").read_text()) for r in (0, 1)]
    assert [r["size"] for r in ranks] == [2, 2]
    assert ranks[0]["weights"] == ranks[1]["weights"], "the ranks stay in step"
    assert ranks[0]["auc"] == ranks[1]["auc"], "every rank scores the valid set alike"
    assert abs(ranks[0]["auc"] - single["auc"]) <= 0.01, (ranks[0]["auc"], single["auc"])


@pytest.mark.slow
def test_train_nproc_2_runs_torchrun_and_rank_0_alone_writes_the_version(
    synthetic_features: Path, tmp_path: Path
) -> None:
    import os
    import subprocess
    import sys

    from starling.local import copy_workdir

    workdir = copy_workdir(synthetic_features, tmp_path / "workdir")
    command = [sys.executable, "-m", "starling.cli", "train", str(workdir), "--nproc", "2"]
    command += [
        "--windows",
        "4",
        "--step-days",
        "90",
        "--epochs",
        "3",
        "--no-content-vectors",
        "--no-publish",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, env={**os.environ})
    assert done.returncode == 0, done.stderr[-3000:]
    versions = [p for p in (workdir / "models").iterdir() if p.is_dir() and p.name != "current"]
    assert len(versions) == 1, versions
    assert done.stdout.count("serving model:") == 1, "only rank 0 reports"
    manifest = json.loads((versions[0] / "manifest.json").read_text())
    assert manifest["models"]["rank_mlp"]["pipeline_valid_ndcg@10"] > 0
