"""Ranking metrics, the popularity baseline, training data loading, the training loop and `starling train`."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner

from starling.cli import cli
from starling.errors import StarlingError
from training.artifacts import load_artifact, resolve_artifact
from training.data import TrainingDataError, check_encoded, load_training_data
from training.loop import fit, predict_proba, seed_everything
from training.models import build_model
from training.models.base import ModelConfig
from training.popularity import PopularityScorer
from training.ranking_metrics import auc, logloss, pr_auc
from training.synthetic import synthetic_samples, write_synthetic_features

# ------------------------------------------------------------------------------------------------ metrics


def test_auc_counts_each_correctly_ordered_pair_and_ties_as_half() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    # pairs (positive, negative): (.5,.1)=1, (.5,.5)=0.5, (.9,.1)=1, (.9,.5)=1 -> 3.5 / 4
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == 0.875


def test_pr_auc_is_average_precision_with_tied_scores_as_one_threshold() -> None:
    # positives at ranks 1 and 3: precision 1 and 2/3, each worth half the recall
    assert pr_auc(np.array([1, 0, 1, 0]), np.array([0.9, 0.8, 0.7, 0.1])) == pytest.approx((1 + 2 / 3) / 2)
    assert pr_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5


def test_logloss_is_mean_cross_entropy_and_clips_certain_mistakes() -> None:
    expected = -(math.log(0.8) + math.log(0.7)) / 2
    assert logloss(np.array([1, 0]), np.array([0.8, 0.3])) == pytest.approx(expected)
    assert logloss(np.array([0, 1]), np.array([1.0, 0.0]), eps=1e-7) == pytest.approx(
        -math.log(1e-7), rel=1e-6
    )


@pytest.mark.parametrize(
    ("labels", "scores", "message"),
    [
        ([1, 1], [0.2, 0.3], "AUC needs both classes"),
        ([0, 1], [0.2, float("nan")], r"scores must be finite \(1 are not; first at row 1"),
        ([0, 2], [0.2, 0.3], r"labels must be 0 or 1 \(row 1 has 2\)"),
        ([0, 1, 1], [0.2, 0.3], "same length"),
    ],
)
def test_metrics_refuse_bad_input_with_the_reason(labels, scores, message) -> None:
    with pytest.raises(StarlingError, match=message):
        auc(np.array(labels), np.array(scores))


def test_popularity_scores_train_rating_counts_and_zero_for_unseen_movies() -> None:
    scorer = PopularityScorer.fit(np.array([5, 3, 5, 9, 5, 3]))
    np.testing.assert_array_equal(scorer.score(np.array([5, 3, 9, 7, 100])), [3, 2, 1, 0, 0])


# ------------------------------------------------------------------------------------------- data, loop


@pytest.fixture(scope="module")
def synthetic_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic_features(tmp_path_factory.mktemp("synthetic"))


def test_load_training_data_encodes_every_split_once(synthetic_workdir: Path) -> None:
    data = load_training_data(synthetic_workdir)
    assert data.row_counts() == {"train": 16_000, "valid": 2_000, "test": 2_000}
    train = data.splits["train"]
    assert train.features["user_genres"].shape == (16_000, 5)
    assert train.features["numeric"].dtype == torch.float32
    assert set(torch.unique(train.labels).tolist()) == {0.0, 1.0}


def test_load_training_data_names_the_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TrainingDataError, match=r"samples.parquet: not found \(run `starling features build"):
        load_training_data(tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("split", "holdout", r"row 7 has split 'holdout'; expected one of \['train', 'valid', 'test'\]"),
        ("label", None, "row 7 has a null label"),
    ],
)
def test_bad_samples_are_refused_with_the_row(tmp_path: Path, column: str, value, message: str) -> None:
    samples = synthetic_samples(n_rows=500)
    samples = samples.with_columns(samples[column].scatter(7, value))
    write_synthetic_features(tmp_path, samples)
    with pytest.raises(TrainingDataError, match=message):
        load_training_data(tmp_path)


def test_encoded_indices_outside_the_tables_are_refused(synthetic_workdir: Path) -> None:
    data = load_training_data(synthetic_workdir)
    encoded = {key: value[:10].numpy().copy() for key, value in data.splits["valid"].features.items()}
    encoded["movie_genres"][3, 1] = data.spec.vocab_size("genre")
    with pytest.raises(
        TrainingDataError, match=r"encoded 'movie_genres' has indices outside its table \(row 3"
    ):
        check_encoded(encoded, data.spec, "test rows")


def test_training_learns_and_restores_the_best_epoch(synthetic_workdir: Path) -> None:
    data = load_training_data(synthetic_workdir)
    train, valid = data.splits["train"], data.splits["valid"]
    config = ModelConfig(embedding_dim=8, hidden_units=(32, 32), max_epochs=6, patience=1)
    seed_everything(config.seed)  # the initial weights too, whatever ran before in this process
    model = build_model("embedding_mlp", data.spec, config)
    untrained_auc = auc(valid.labels.numpy(), predict_proba(model, valid.features))
    result = fit(model, train, valid, config, torch.device("cpu"))
    assert result.failure is None
    assert result.best_valid_auc > untrained_auc + 0.2
    popularity_auc = auc(valid.labels.numpy(), PopularityScorer.fit(train.movie_ids).score(valid.movie_ids))
    assert result.best_valid_auc > popularity_auc + 0.2
    # the model holds the best epoch's weights, whichever epoch ended training
    assert auc(valid.labels.numpy(), predict_proba(model, valid.features)) == pytest.approx(
        result.best_valid_auc
    )
    assert [stats.epoch for stats in result.history] == list(range(1, len(result.history) + 1))


def test_a_diverging_run_is_stopped_and_reported(synthetic_workdir: Path) -> None:
    data = load_training_data(synthetic_workdir)
    config = ModelConfig(embedding_dim=4, hidden_units=(8,), max_epochs=3, learning_rate=float("inf"))
    result = fit(
        build_model("embedding_mlp", data.spec, config), data.splits["train"], data.splits["valid"], config
    )
    assert result.failure == "non-finite training loss (nan) in epoch 1"
    assert result.best_epoch is None and len(result.history) == 1


# -------------------------------------------------------------------------------------- ml-latest-small


@pytest.mark.slow
def test_starling_train_on_ml_latest_small_beats_popularity_and_publishes(ml_small_features: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(ml_small_features), "--model", "din", "--epochs", "3"])
    assert result.exit_code == 0, result.output
    assert "serving model: din; published as current" in result.output
    artifact = load_artifact(resolve_artifact(ml_small_features))
    metrics = artifact.manifest["gate"]
    assert artifact.manifest["models"]["din"]["valid_auc"] > metrics["popularity_valid_auc"]
    samples = pl.read_parquet(ml_small_features / "features" / "samples.parquet").filter(
        pl.col("split") == "test"
    )
    probabilities = artifact.predict(samples)
    assert auc(samples["label"].to_numpy(), probabilities) > 0.7
