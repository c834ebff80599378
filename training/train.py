"""`starling train`: rank for top-N. Train ranking model(s) on what recall returns, select them on the served
pipeline's validation NDCG@10, write a versioned artifact with the recall state, gate it, publish it.

Steps (each a function below):
1. the validation task (users who liked something between the valid and the test cut-off) and the recall
   parameters tuned on it (the popular channel's half-life);
2. training windows before the valid cut-off (training/ltr.py): at each, the snapshot of that moment
   (training/replay.py) recalls candidates for the users who went on to like something; labels = liked next;
3. the feature spec gets the candidate features' statistics (fitted on the training candidates only);
4. every model trains with a listwise loss (training/loop.py: fit_ranking), early-stopped on the valid groups;
5. every model is replayed through the whole served pipeline at the valid cut-off (recall, ranking, cold
   path, re-ranking); the best validation NDCG@10 serves; the quality gate refuses it unless it beats the
   popularity baseline on the same users;
6. the serving recall state is fitted on every rating, the version written and ``models/current`` swapped.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from torch import nn

from services.recall.state import STATE_DIR, RecallParams, RecallState
from services.rerank.logic import RerankRules, load_rules
from starling.config import get_settings
from starling.errors import StarlingError
from starling.features.spec import FeatureSpec
from training.artifacts import VersionWriter, current_version, data_fingerprint, new_version
from training.artifacts import publish as publish_version
from training.baselines import (
    RetrievalTask,
    broadcast,
    list_metrics,
    per_user_metrics,
    popularity_vector,
    retrieval_task,
    tune_recent_popularity,
)
from training.gate import QualityGateError, gate_failures
from training.loop import FitResult, fit_ranking, seed_everything, training_device, world
from training.ltr import (
    CandidateSet,
    EncodedGroups,
    WindowConfig,
    build_candidate_set,
    encode_candidate_sets,
    sample_users,
    training_windows,
    window_targets,
)
from training.models import MODELS, build_model
from training.models.base import ModelConfig
from training.plots import plot_learning_curves
from training.popularity import PopularityScorer
from training.replay import OfflinePipeline, Ranker, Snapshot, snapshot_as_of

DEFAULT_MAX_EPOCHS = 10
#: Per-model defaults over ModelConfig's: the dense ranker learns best with small towers, a higher rate and
#: more epochs, and averages five of them (the best epoch on the valid groups is kept).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {
    "rank_mlp": {
        "hidden_units": (64, 32),
        "learning_rate": 3e-3,
        "max_epochs": 30,
        "patience": 5,
        "ensemble": 5,
    },
}
ALL = "all"
LIST_SIZES = (10, 50)  # requests replayed for selection and evaluation: @10 metrics read k=10, @50 k=50


def model_names_for(model_name: str) -> list[str]:
    if model_name == ALL:
        return list(MODELS)
    if model_name not in MODELS:
        raise StarlingError(f"unknown model {model_name!r}; choose one of {', '.join(MODELS)} or {ALL}")
    return [model_name]


# ------------------------------------------------------------------------------------------------ inputs
def split_cutoffs(workdir: Path, ratings: pl.DataFrame) -> tuple[datetime, datetime]:
    """(valid cut-off, test cut-off) of `features build`'s time split; for a leave-last-out build, the time
    cut-offs the same fractions would give (the ranker learns from time windows either way)."""
    from starling.features.split import SplitConfig, assign_split

    path = Path(workdir) / "features" / "split.json"
    if not path.is_file():
        raise StarlingError(f"{path} not found: run `starling features build {workdir}` first")
    split = json.loads(path.read_text())
    if split.get("kind") == "time" and split.get("valid_cutoff") and split.get("test_cutoff"):
        return datetime.fromisoformat(split["valid_cutoff"]), datetime.fromisoformat(split["test_cutoff"])
    config = SplitConfig("time", split.get("valid_frac", 0.1) or 0.1, split.get("test_frac", 0.1) or 0.1)
    seconds = ratings["event_timestamp"].dt.epoch("us").to_numpy()
    _, info = assign_split(ratings["user_id"].to_numpy(), seconds, ratings["movie_id"].to_numpy(), config)
    if info.valid_cutoff is None or info.test_cutoff is None:
        raise StarlingError(f"{workdir}: too few ratings for a validation and a test period")
    return info.valid_cutoff, info.test_cutoff


@dataclass
class RankingData:
    """Everything model training and selection read; built once per `starling train`."""

    ratings: pl.DataFrame
    movies: pl.DataFrame
    base_spec: FeatureSpec  # `features build`'s spec (vocabularies, entity statistics)
    spec: FeatureSpec  # plus the candidate features' statistics
    params: RecallParams
    valid_cutoff: datetime
    test_cutoff: datetime
    valid_task: RetrievalTask
    valid_snapshot: Snapshot
    valid_set: CandidateSet
    train_sets: list[CandidateSet]
    train: EncodedGroups
    valid: EncodedGroups  # the valid groups of users with history (those the ranker serves)
    windows: list[tuple[datetime, datetime]]
    window_config: WindowConfig = field(default_factory=WindowConfig)
    tuning: dict[str, Any] = field(default_factory=dict)
    spec_path: Path | None = None
    samples_path: Path | None = None

    def row_counts(self) -> dict[str, int]:
        return {
            "train_candidates": len(self.train),
            "train_groups": self.train.groups,
            "valid_candidates": len(self.valid_set),
            "valid_users": len(self.valid_task.user_ids),
        }


def prepare_ranking_data(
    workdir: Path, windows: WindowConfig | None = None, params: RecallParams | None = None
) -> RankingData:
    """Steps 1-3 of the module docstring."""
    from starling.features.inputs import load_inputs

    workdir = Path(workdir)
    windows = windows or WindowConfig()
    settings = get_settings()
    spec_path = workdir / "features" / "feature_spec.json"
    base_spec = FeatureSpec.load(spec_path)
    ratings, movies = load_inputs(workdir)
    valid_cutoff, test_cutoff = split_cutoffs(workdir, ratings)
    catalog_ids = movies["movie_id"].to_numpy()
    valid_task = retrieval_task(
        "valid", ratings, catalog_ids, valid_cutoff, test_cutoff, settings.like_threshold
    )
    if len(valid_task.user_ids) == 0:
        raise StarlingError(f"{workdir}: nobody liked a new movie in the validation period; cannot select")
    tuned = tune_recent_popularity(valid_task)
    params = params or RecallParams(popular_half_life_days=float(tuned.params["half_life_days"]))
    recall_size = settings.recall_size

    chosen, train_sets = window_sets(ratings, movies, valid_cutoff, windows, params)
    if not train_sets:
        raise StarlingError(
            f"{workdir}: no training window before the valid cut-off {valid_cutoff:%Y-%m-%d} has users who "
            "liked something next; more data (or a smaller --horizon-days) is needed"
        )
    valid_snapshot = snapshot_as_of(ratings, movies, valid_cutoff, params, settings.like_threshold)
    valid_targets = window_targets(ratings, valid_cutoff, test_cutoff, settings.like_threshold)
    valid_set = build_candidate_set("valid", valid_snapshot, valid_targets, valid_task.user_ids, recall_size)

    spec = base_spec.with_candidate_stats(pl.concat([s.frame() for s in train_sets]))
    learnable = learnable_sets(train_sets)
    if not learnable:
        raise StarlingError(f"{workdir}: recall found none of the movies liked in any training window")
    warm_valid = valid_set.select(np.flatnonzero(valid_set.known))
    if warm_valid.groups == 0:
        raise StarlingError(f"{workdir}: no validation user had history before {valid_cutoff:%Y-%m-%d}")
    return RankingData(
        ratings=ratings,
        movies=movies,
        base_spec=base_spec,
        spec=spec,
        params=params,
        valid_cutoff=valid_cutoff,
        test_cutoff=test_cutoff,
        valid_task=valid_task,
        valid_snapshot=valid_snapshot,
        valid_set=valid_set,
        train_sets=learnable,
        train=encode_candidate_sets(learnable, spec),
        valid=encode_candidate_sets([warm_valid], spec),
        windows=chosen,
        window_config=windows,
        tuning={"popular_half_life_days": tuned.grid},
        spec_path=spec_path,
        samples_path=workdir / "features" / "samples.parquet",
    )


def window_sets(
    ratings: pl.DataFrame,
    movies: pl.DataFrame,
    cutoff: datetime,
    windows: WindowConfig,
    params: RecallParams,
) -> tuple[list[tuple[datetime, datetime]], list[CandidateSet]]:
    """The training windows ending at ``cutoff`` and, for each, the candidate set of its snapshot."""
    settings = get_settings()
    chosen, sets = training_windows(ratings, cutoff, windows), []
    for start, end in chosen:  # one snapshot per training window
        snapshot = snapshot_as_of(ratings, movies, start, params, settings.like_threshold)
        targets = window_targets(ratings, start, end, settings.like_threshold)
        users = np.unique(targets["user_id"].to_numpy())
        if not windows.include_cold:
            users = users[np.isin(users, snapshot.history.user_ids)]
        users = sample_users(users, windows.max_users, salt=start.isoformat())
        if len(users):
            name = start.date().isoformat()
            sets.append(build_candidate_set(name, snapshot, targets, users, settings.recall_size))
    return chosen, sets


def learnable_sets(sets: list[CandidateSet]) -> list[CandidateSet]:
    """The groups a ranking loss can learn from: those where recall found a movie the user liked next."""
    kept = [s.select(np.flatnonzero(np.add.reduceat(s.labels, s.offsets[:-1]) > 0)) for s in sets]
    return [s for s in kept if s.groups]


# ---------------------------------------------------------------------------------------------- selection
def pipeline_lists(
    snapshot: Snapshot, users: np.ndarray, ranker: Ranker | None, rules: RerankRules, recall_size: int
) -> dict[int, list[np.ndarray]]:
    """The served pipeline's answers for k in LIST_SIZES for each user (one replayed request per user)."""
    pipeline = OfflinePipeline(snapshot, ranker, rules, recall_size)
    served = [pipeline.recommend(int(u), LIST_SIZES[0], also=LIST_SIZES[1:]) for u in users.tolist()]
    return {k: [s.lists[k] for s in served] for k in LIST_SIZES}


def pipeline_valid_ndcg(data: RankingData, model: nn.Module, rules: RerankRules) -> np.ndarray:
    """Per-user NDCG@10 of the whole served pipeline with ``model`` at the valid cut-off."""
    ranker = Ranker.build(model, data.spec, data.valid_snapshot)
    lists = pipeline_lists(
        data.valid_snapshot, data.valid_task.user_ids, ranker, rules, get_settings().recall_size
    )
    return list_metrics(data.valid_task, lists)["ndcg@10"]


@dataclass
class ModelOutcome:
    name: str
    config: ModelConfig
    fit: FitResult
    metrics: dict[str, float] = field(default_factory=dict)

    @property
    def pipeline_ndcg(self) -> float | None:
        return self.metrics.get("pipeline_valid_ndcg@10")


def train_one(
    name: str, data: RankingData, config: ModelConfig, rules: RerankRules
) -> tuple[nn.Module, ModelOutcome]:
    """Fit one model on the training candidates; replay the pipeline with it on validation."""
    seed_everything(config.seed)
    model = build_model(name, data.spec, config)
    result = fit_ranking(model, data.train, data.valid, config, training_device(), description=name)
    model = model.cpu().eval()
    outcome = ModelOutcome(name, config, result)
    if result.failure is None:
        outcome.metrics = {
            "ranker_valid_ndcg@10": result.best_valid_ndcg,
            "ranker_valid_auc": result.best_valid_auc,
            "pipeline_valid_ndcg@10": float(pipeline_valid_ndcg(data, model, rules).mean()),
        }
    return model, outcome


def refit(data: RankingData, outcome: ModelOutcome) -> tuple[nn.Module, dict[str, Any]]:
    """The selected model trained again, with the epochs selection found best, on the training windows that
    end at the *test* cut-off: the validation period's behaviour is learnt too, and nothing after the test
    cut-off is (so `starling evaluate` still measures the served model honestly)."""
    windows, sets = window_sets(data.ratings, data.movies, data.test_cutoff, data.window_config, data.params)
    learnable = learnable_sets(sets)
    if not learnable:
        raise StarlingError("refit: no training window before the test cut-off has a learnable group")
    encoded = encode_candidate_sets(learnable, data.spec)
    config = replace(outcome.config, max_epochs=max(outcome.fit.best_epoch or 1, 1))
    seed_everything(config.seed)
    model = build_model(outcome.name, data.spec, config)
    result = fit_ranking(model, encoded, None, config, training_device(), description=f"{outcome.name} refit")
    info = {
        "model": outcome.name,
        "windows_end": data.test_cutoff.isoformat(),
        "windows": len(windows),
        "train_groups": encoded.groups,
        "epochs": config.max_epochs,
        "failure": result.failure,
    }
    return model.cpu().eval(), info


@dataclass
class TrainReport:
    version: str
    path: Path
    published: bool
    serving_model: str | None
    baselines: dict[str, float]
    outcomes: dict[str, ModelOutcome]
    row_counts: dict[str, int]
    seconds: float
    refit: dict[str, Any] | None = None

    def summary(self) -> str:
        lines = [
            f"version {self.version} -> {self.path}",
            "rows: " + ", ".join(f"{name} {count:,}" for name, count in self.row_counts.items()),
            "validation NDCG@10 (ranker: its valid candidates; pipeline: the served path, all valid users)",
            f"{'model':<14} {'epochs':>6} {'best':>4} {'ranker':>8} {'pipeline':>9} {'AUC':>7} {'seconds':>8}",
        ]
        for name, outcome in self.outcomes.items():
            m = outcome.metrics
            lines.append(
                f"{name:<14} {len(outcome.fit.history):>6} {outcome.fit.best_epoch or 0:>4} "
                f"{m.get('ranker_valid_ndcg@10', float('nan')):>8.4f} "
                f"{m.get('pipeline_valid_ndcg@10', float('nan')):>9.4f} "
                f"{m.get('ranker_valid_auc', float('nan')):>7.4f} {outcome.fit.seconds:>8.1f}"
            )
        lines.append(
            "gate baselines (validation NDCG@10): "
            + ", ".join(f"{name} {value:.4f}" for name, value in self.baselines.items())
        )
        if self.refit:
            lines.append(
                f"{self.refit['model']} refit for serving: {self.refit['epochs']} epochs on "
                f"{self.refit['train_groups']:,} groups of the windows before {self.refit['windows_end'][:10]}"
            )
        curves = sorted((self.path / "learning_curves").glob("*.png"))
        if curves:
            lines.append(f"learning curves: {', '.join(str(c) for c in curves)}")
        state = "published as current" if self.published else "not published (--no-publish)"
        lines.append(f"serving model: {self.serving_model}; {state}; {self.seconds:.1f} s")
        return "\n".join(lines)


# --------------------------------------------------------------------------------------------- the command
def train_command(
    workdir: Path,
    model_name: str,
    epochs: int | None = None,
    publish: bool = True,
    windows: WindowConfig | None = None,
    configs: dict[str, ModelConfig] | None = None,
    refit_serving: bool = True,
    content_vectors: bool | None = None,
) -> TrainReport:
    """Train ``model_name`` (or every model for ``all``) into a new version; ``content_vectors`` (default:
    STARLING_CONTENT_VECTORS) adds the catalog's language-model vectors to it."""
    names = model_names_for(model_name)
    if epochs is not None and epochs < 1:
        raise StarlingError(f"--epochs must be at least 1 (got {epochs})")
    configs = {name: (configs or {}).get(name) or default_config(name, epochs) for name in names}
    data = prepare_ranking_data(workdir, windows)
    return run_training(
        workdir, data, names, default_config(names[0], epochs), publish=publish, configs=configs,
        refit_serving=refit_serving, content_vectors=content_vectors,
    )  # fmt: skip


def default_config(name: str, epochs: int | None = None) -> ModelConfig:
    """ModelConfig's defaults with the model's own (MODEL_DEFAULTS); ``epochs`` caps the epochs."""
    values: dict[str, Any] = {"max_epochs": DEFAULT_MAX_EPOCHS, **MODEL_DEFAULTS.get(name, {})}
    if epochs is not None:
        values["max_epochs"] = epochs
    return ModelConfig(**values)


def run_training(
    workdir: Path,
    data: RankingData,
    model_names: Sequence[str],
    config: ModelConfig,
    publish: bool = True,
    configs: dict[str, ModelConfig] | None = None,
    refit_serving: bool = True,
    content_vectors: bool | None = None,
) -> TrainReport:
    """Steps 4-6: train, select, refit, write the version, gate, publish. ``configs`` overrides per model."""
    from training.recall_fit import fit_recall_state

    started = time.perf_counter()
    settings = get_settings()
    rules = load_rules(settings.rerank_rules) if settings.rerank_rules else load_rules()
    baselines = {
        "popularity": float(
            per_user_metrics(data.valid_task, broadcast(popularity_vector(data.valid_task)))["ndcg@10"].mean()
        ),
        "pipeline_without_ranker": float(
            list_metrics(
                data.valid_task,
                pipeline_lists(
                    data.valid_snapshot, data.valid_task.user_ids, None, rules, settings.recall_size
                ),
            )["ndcg@10"].mean()
        ),
    }
    models: dict[str, nn.Module] = {}
    outcomes: dict[str, ModelOutcome] = {}
    for name in model_names:
        models[name], outcomes[name] = train_one(name, data, (configs or {}).get(name, config), rules)
    measured = {name: o.pipeline_ndcg for name, o in outcomes.items() if o.pipeline_ndcg is not None}
    serving_model = max(measured, key=measured.__getitem__) if measured else None
    refused = gate_failures(
        {name: outcomes[name].pipeline_ndcg for name in outcomes},
        {name: o.fit.failure for name, o in outcomes.items()},
        baselines,
        serving_model,
    )
    refit_info = None
    if refit_serving and serving_model is not None and not refused:
        models[serving_model], refit_info = refit(data, outcomes[serving_model])
        if refit_info["failure"]:
            refused[serving_model] = f"refit failed: {refit_info['failure']}"
        else:  # in-sample (the refit learnt the validation period): a record of the served weights, not a score
            refit_info["pipeline_valid_ndcg@10_in_sample"] = float(
                pipeline_valid_ndcg(data, models[serving_model], rules).mean()
            )
    if (
        world()[0] != 0
    ):  # distributed (--nproc): the other ranks trained with rank 0, which writes the version
        return TrainReport(
            "", Path(), False, serving_model, baselines, outcomes,
            data.row_counts(), time.perf_counter() - started, refit_info,
        )  # fmt: skip
    recall_state = fit_recall_state(
        data.ratings, data.movies["movie_id"].to_numpy(), data.params, settings.like_threshold
    )

    fingerprint = data_fingerprint(data.samples_path, data.spec, data.row_counts())
    models_dir = Path(workdir) / "models"
    version = new_version(fingerprint)
    writer = VersionWriter(models_dir, version)
    try:
        path = _write_version(
            writer, data, models, outcomes, baselines, recall_state, fingerprint,
            serving_model, refused, refit_info, Path(workdir),
            settings.content_vectors if content_vectors is None else content_vectors,
        )  # fmt: skip
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
        version, path, publish, serving_model, baselines, outcomes,
        data.row_counts(), time.perf_counter() - started, refit_info,
    )  # fmt: skip


def _write_version(
    writer: VersionWriter,
    data: RankingData,
    models: dict[str, nn.Module],
    outcomes: dict[str, ModelOutcome],
    baselines: dict[str, float],
    recall_state: RecallState,
    fingerprint: dict[str, Any],
    serving_model: str | None,
    refused: dict[str, str],
    refit_info: dict[str, Any] | None,
    workdir: Path,
    with_content: bool,
) -> Path:
    data.spec.save(writer.path("feature_spec.json"))
    train_history = data.ratings.filter(pl.col("event_timestamp") < data.valid_cutoff)
    PopularityScorer.fit(train_history["movie_id"].to_numpy()).save(writer.path("popularity.parquet"))
    recall_state.save(writer.path(f"{STATE_DIR}/params.json").parent)
    content = None
    if with_content:  # the catalog's text through the language model (starling/content.py)
        from starling.content import CONTENT_DIR, content_vectors, save_content

        content = save_content(
            writer.path(f"{CONTENT_DIR}/movie_ids.npy").parent, *content_vectors(workdir, data.movies)
        )
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
                "refit": refit_info if name == serving_model else None,
            },
        )
        if outcome.fit.history:
            plot_learning_curves(outcome.fit.history, writer.path(f"learning_curves/{name}.png"), name)
    gate = {
        "passed": not refused,
        "metric": "pipeline_valid_ndcg@10",
        "baselines_valid_ndcg@10": baselines,
        "refused": refused,
    }
    training = {
        "valid_cutoff": data.valid_cutoff.isoformat(),
        "test_cutoff": data.test_cutoff.isoformat(),
        "windows": [[start.isoformat(), end.isoformat()] for start, end in data.windows],
        "recall_params": data.params.to_dict(),
        "tuning": data.tuning,
        "rows": data.row_counts(),
        "refit": refit_info,
    }
    writer.add_json(
        "metrics.json",
        {
            "baselines_valid_ndcg@10": baselines,
            "models": {name: outcome.metrics for name, outcome in outcomes.items()},
            "gate": gate,
            "training": training,
        },
    )
    writer.add_json("fingerprint.json", fingerprint)
    return writer.commit(
        {
            "created_at": writer.version.split("-")[0],
            "serving_model": serving_model,
            "feature_spec": "feature_spec.json",
            "feature_spec_version": data.spec.version,
            "popularity": "popularity.parquet",
            "recall_state": STATE_DIR,
            "content": content,
            "models": {
                name: {
                    "weights": f"{name}/weights.pt",
                    "config": f"{name}/config.json",
                    "pipeline_valid_ndcg@10": outcome.pipeline_ndcg,
                }
                for name, outcome in outcomes.items()
            },
            "gate": gate,
            "training": training,
        }
    )


__all__ = [
    "ModelOutcome",
    "RankingData",
    "TrainReport",
    "prepare_ranking_data",
    "run_training",
    "train_command",
]
