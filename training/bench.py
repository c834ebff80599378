"""`starling bench train`: forward + backward + Adam step throughput of embedding_mlp on synthetic batches.

The batches are random encoded tensors shaped as the transform's output, sized like ml-latest-small's
vocabularies (610 users, 9,742 movies, 20 genres, decile buckets); no data on disk is needed.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from torch import nn

from starling.features.spec import NUM_BUCKETS, NUMERIC_FIELDS, FeatureSpec
from training.loop import seed_everything
from training.models import build_model
from training.models.base import ModelConfig

MODEL = "embedding_mlp"
N_USERS, N_MOVIES, N_GENRES = 610, 9_742, 20
WARMUP_STEPS = 5


def ml_small_like_spec() -> FeatureSpec:
    """A feature spec with ml-latest-small-sized vocabularies and standard-normal numeric statistics."""
    boundaries = [float(x) for x in np.linspace(-1.5, 1.5, NUM_BUCKETS - 1)]
    return FeatureSpec(
        vocabularies={
            "user": list(range(1, N_USERS + 1)),
            "movie": list(range(1, N_MOVIES + 1)),
            "genre": [f"genre{g:02d}" for g in range(N_GENRES)],
        },
        numeric_stats={name: {"mean": 0.0, "std": 1.0, "quantiles": boundaries} for name in NUMERIC_FIELDS},
    )


def synthetic_batch(spec: FeatureSpec, n_rows: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """Random encoded features and labels with the transform's keys, dtypes and index ranges."""

    def indices(vocabulary: str, *shape: int) -> torch.Tensor:
        return torch.randint(0, spec.vocab_size(vocabulary), (n_rows, *shape), generator=generator)

    n_numeric = len(NUMERIC_FIELDS)
    return {
        "user": indices("user"),
        "movie": indices("movie"),
        "user_genres": indices("genre", 5),
        "movie_genres": indices("genre", 3),
        "liked_movies": indices("movie", 5),
        "numeric": torch.randn(n_rows, n_numeric, generator=generator),
        "numeric_missing": (torch.rand(n_rows, n_numeric, generator=generator) < 0.05).float(),
        "numeric_buckets": torch.randint(0, NUM_BUCKETS + 1, (n_rows, n_numeric), generator=generator),
        "label": (torch.rand(n_rows, generator=generator) < 0.6).float(),
    }


def measure(device: torch.device, batch_size: int, steps: int) -> dict[str, float | int]:
    """Samples per second of training steps on ``device`` after a warm-up."""
    seed_everything(0)
    spec = ml_small_like_spec()
    model = build_model(MODEL, spec, ModelConfig(batch_size=batch_size)).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = nn.BCEWithLogitsLoss()
    generator = torch.Generator().manual_seed(0)
    batches = [
        {key: value.to(device) for key, value in synthetic_batch(spec, batch_size, generator).items()}
        for _ in range(4)
    ]

    def step(batch: dict[str, torch.Tensor]) -> None:
        loss = loss_fn(model(batch), batch["label"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    model.train()
    for i in range(WARMUP_STEPS):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for i in range(steps):
        step(batches[i % len(batches)])
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - started
    return {"samples_per_second": round(steps * batch_size / seconds), "seconds": round(seconds, 3)}


def bench_train(batch_size: int = 4096, steps: int = 30) -> dict:
    """One JSON-able object: CPU throughput (and CUDA's when a GPU is present)."""
    cpu = measure(torch.device("cpu"), batch_size, steps) | {"threads": torch.get_num_threads()}
    cuda = None
    device_name = "cpu"
    if torch.cuda.is_available():
        cuda = measure(torch.device("cuda"), batch_size, steps * 5)
        device_name = torch.cuda.get_device_name(0)
    return {
        "model": MODEL,
        "batch_size": batch_size,
        "samples": steps * batch_size,
        "cpu": cpu,
        "cuda": cuda,
        "device_name": device_name,
    }
