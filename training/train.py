"""`starling train`: train ranking model(s), write a versioned artifact, gate it, publish it.

Steps: load and encode the splits once (training/data.py) -> fit each model with the shared loop
(training/loop.py) -> score valid and test -> (``--model all``) item embeddings -> write the version
(training/artifacts.py) -> quality gate against popularity (training/gate.py) -> swap ``models/current``.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from torch import nn

from starling.errors import StarlingError
from training.artifacts import (
    VersionWriter,
    current_version,
    data_fingerprint,
    new_version,
)
from training.artifacts import (
    publish as publish_version,
)
from training.data import EncodedSplit, TrainingData, load_training_data
from training.gate import QualityGateError, gate_failures
from training.loop import FitResult, fit, predict_proba, seed_everything, training_device
from training.models import MODELS, build_model
from training.models.base import ModelConfig
from training.plots import plot_learning_curves
from training.popularity import PopularityScorer
from training.ranking_metrics import auc, logloss, pr_auc

DEFAULT_MAX_EPOCHS = 10
EMBEDDING_METHODS = ("item2vec", "two_tower")
ALL = "all"


def split_metrics(labels: np.ndarray, scores: np.ndarray, probabilities: bool = True) -> dict[str, float]:
    """AUC and PR-AUC of ``scores``; log loss too when they are probabilities."""
    metrics = {"auc": auc(labels, scores), "pr_auc": pr_auc(labels, scores)}
    if probabilities:
        metrics["logloss"] = logloss(labels, scores)
    return metrics


@dataclass
class ModelOutcome:
    name: str
    config: ModelConfig
    fit: FitResult
    metrics: dict[str, dict[str, float]] = field(default_factory=dict)  # split -> metric -> value

    @property
    def valid_auc(self) -> float | None:
        return self.metrics.get("valid", {}).get("auc")


@dataclass
class TrainReport:
    version: str
    path: Path
    published: bool
    serving_model: str | None
    popularity_metrics: dict[str, dict[str, float]]
    outcomes: dict[str, ModelOutcome]
    item_embeddings: list[str]
    row_counts: dict[str, int]
    seconds: float

    def summary(self) -> str:
        lines = [
            f"version {self.version} -> {self.path}",
            "rows: " + ", ".join(f"{name} {count:,}" for name, count in self.row_counts.items()),
            f"{'model':<14} {'epochs':>6} {'best':>4} {'valid AUC':>9} {'test AUC':>9} {'seconds':>8}",
        ]
        for name, outcome in self.outcomes.items():
            valid = outcome.metrics.get("valid", {}).get("auc", float("nan"))
            test = outcome.metrics.get("test", {}).get("auc", float("nan"))
            lines.append(
                f"{name:<14} {len(outcome.fit.history):>6} {outcome.fit.best_epoch or 0:>4} {valid:>9.4f} "
                f"{test:>9.4f} {outcome.fit.seconds:>8.1f}"
            )
        popularity_valid = self.popularity_metrics["valid"]["auc"]
        popularity_test = self.popularity_metrics.get("test", {}).get("auc", float("nan"))
        lines.append(f"{'popularity':<14} {'':>6} {'':>4} {popularity_valid:>9.4f} {popularity_test:>9.4f}")
        if self.item_embeddings:
            lines.append(f"item embeddings: {', '.join(self.item_embeddings)}")
        state = "published as current" if self.published else "not published (--no-publish)"
        lines.append(f"serving model: {self.serving_model}; {state}; {self.seconds:.1f} s")
        return "\n".join(lines)


def model_names_for(model_name: str) -> list[str]:
    if model_name == ALL:
        return list(MODELS)
    if model_name not in MODELS:
        raise StarlingError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)} or {ALL}")
    return [model_name]


def train_command(
    workdir: Path, model_name: str, epochs: int | None = None, publish: bool = True
) -> TrainReport:
    """Train ``model_name`` (or every model and the item embeddings for ``all``) into a new version."""
    names = model_names_for(model_name)
    if epochs is not None and epochs < 1:
        raise StarlingError(f"--epochs must be at least 1 (got {epochs})")
    config = ModelConfig(max_epochs=epochs or DEFAULT_MAX_EPOCHS)
    data = load_training_data(workdir)
    methods = EMBEDDING_METHODS if model_name == ALL else ()
    return run_training(workdir, data, names, config, publish=publish, embedding_methods=methods)


def train_one(name: str, data: TrainingData, config: ModelConfig) -> tuple[nn.Module, ModelOutcome]:
    """Fit one model and score it on valid and test (skipped when training failed)."""
    seed_everything(config.seed)
    model = build_model(name, data.spec, config)
    result = fit(
        model, data.splits["train"], data.splits["valid"], config, training_device(), description=name
    )
    outcome = ModelOutcome(name, config, result)
    if result.failure is None:
        for split_name in ("valid", "test"):
            split: EncodedSplit = data.splits[split_name]
            if len(split):
                probabilities = predict_proba(model, split.features)
                outcome.metrics[split_name] = split_metrics(split.labels.numpy(), probabilities)
    return model.cpu(), outcome


def train_item_embeddings_for(workdir: Path, data: TrainingData, method: str) -> pl.DataFrame:
    """Item embeddings from training/embeddings/ (imported lazily: it is a separate component)."""
    from training.embeddings import train_item_embeddings

    frame = train_item_embeddings(workdir, data.spec, method)
    missing = [column for column in ("movie_id", "embedding") if column not in frame.columns]
    if missing:
        raise StarlingError(f"item embeddings ({method}) lack columns {missing}")
    return frame


def run_training(
    workdir: Path,
    data: TrainingData,
    model_names: Sequence[str],
    config: ModelConfig,
    publish: bool = True,
    embedding_methods: Sequence[str] = (),
    configs: dict[str, ModelConfig] | None = None,
) -> TrainReport:
    """Train, write the version, apply the quality gate, and publish. ``configs`` overrides per model."""
    started = time.perf_counter()
    train_split, valid_split, test_split = (data.splits[name] for name in ("train", "valid", "test"))
    popularity = PopularityScorer.fit(train_split.movie_ids)
    popularity_metrics = {
        split.name: split_metrics(
            split.labels.numpy(), popularity.score(split.movie_ids), probabilities=False
        )
        for split in (valid_split, test_split)
        if len(split)
    }
    models: dict[str, nn.Module] = {}
    outcomes: dict[str, ModelOutcome] = {}
    for name in model_names:
        model_config = (configs or {}).get(name, config)
        models[name], outcomes[name] = train_one(name, data, model_config)
    item_embeddings = {
        method: train_item_embeddings_for(workdir, data, method) for method in embedding_methods
    }

    refused = gate_failures(
        {name: outcome.valid_auc for name, outcome in outcomes.items()},
        {name: outcome.fit.failure for name, outcome in outcomes.items()},
        popularity_metrics["valid"]["auc"],
    )
    passing = {name: o.valid_auc for name, o in outcomes.items() if name not in refused and o.valid_auc}
    measured = passing or {name: o.valid_auc for name, o in outcomes.items() if o.valid_auc is not None}
    serving_model = max(measured, key=measured.__getitem__) if measured else None

    fingerprint = data_fingerprint(data.samples_path, data.spec, data.row_counts())
    models_dir = Path(workdir) / "models"
    version = new_version(fingerprint)
    writer = VersionWriter(models_dir, version)
    try:
        path = _write_version(
            writer,
            data,
            models,
            outcomes,
            popularity,
            popularity_metrics,
            item_embeddings,
            fingerprint,
            serving_model,
            refused,
        )
    except BaseException:
        writer.abandon()
        raise
    if refused:
        reasons = "; ".join(f"{name}: {reason}" for name, reason in refused.items())
        raise QualityGateError(
            f"quality gate refused version {version} (written to {path}, `current` still "
            f"{current_version(models_dir) or 'unset'}): {reasons}"
        )
    if publish:
        publish_version(models_dir, version)
    return TrainReport(
        version,
        path,
        publish,
        serving_model,
        popularity_metrics,
        outcomes,
        list(item_embeddings),
        data.row_counts(),
        time.perf_counter() - started,
    )


def _write_version(
    writer: VersionWriter,
    data: TrainingData,
    models: dict[str, nn.Module],
    outcomes: dict[str, ModelOutcome],
    popularity: PopularityScorer,
    popularity_metrics: dict[str, dict[str, float]],
    item_embeddings: dict[str, pl.DataFrame],
    fingerprint: dict[str, Any],
    serving_model: str | None,
    refused: dict[str, str],
) -> Path:
    if data.spec_path is not None:
        writer.add_copy(data.spec_path, "feature_spec.json")
    else:
        data.spec.save(writer.path("feature_spec.json"))
    popularity.save(writer.path("popularity.parquet"))
    for name, outcome in outcomes.items():
        writer.add_model(
            name,
            models[name],
            {
                "hyperparameters": outcome.config.to_dict(),
                "metrics": outcome.metrics,
                "epochs": len(outcome.fit.history),
                "best_epoch": outcome.fit.best_epoch,
                "fit": outcome.fit.to_dict(),
                "feature_spec_version": data.spec.version,
            },
        )
        if outcome.fit.history:
            plot_learning_curves(outcome.fit.history, writer.path(f"learning_curves/{name}.png"), name)
    for method, frame in item_embeddings.items():
        writer.add_parquet(f"item_embeddings/{method}.parquet", frame)
    metrics = {
        "popularity": popularity_metrics,
        "models": {name: outcome.metrics for name, outcome in outcomes.items()},
    }
    gate = {
        "passed": not refused,
        "popularity_valid_auc": popularity_metrics["valid"]["auc"],
        "refused": refused,
    }
    writer.add_json("metrics.json", {**metrics, "gate": gate})
    writer.add_json("fingerprint.json", fingerprint)
    return writer.commit(
        {
            "created_at": writer.version.split("-")[0],
            "serving_model": serving_model,
            "feature_spec": "feature_spec.json",
            "feature_spec_version": data.spec.version,
            "popularity": "popularity.parquet",
            "models": {
                name: {
                    "weights": f"{name}/weights.pt",
                    "config": f"{name}/config.json",
                    "valid_auc": outcome.valid_auc,
                }
                for name, outcome in outcomes.items()
            },
            "item_embeddings": {method: f"item_embeddings/{method}.parquet" for method in item_embeddings},
            "gate": gate,
        }
    )


__all__ = ["ModelOutcome", "TrainReport", "run_training", "train_command"]
