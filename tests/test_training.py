"""Ranking metrics, the listwise loss and loop, training windows and candidate sets, and `starling train`."""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
from click.testing import CliRunner
from conftest import copy_workdir

from starling.cli import cli
from starling.errors import StarlingError
from starling.features.spec import CANDIDATE_FEATURES
from training.artifacts import load_artifact, resolve_artifact
from training.loop import fit_ranking, listwise_loss, predict_logits, seed_everything
from training.ltr import EncodedGroups, WindowConfig, training_windows, window_targets
from training.models import MODELS, build_model
from training.models.base import ModelConfig
from training.popularity import PopularityScorer
from training.ranking_metrics import auc, grouped_auc, grouped_ndcg, logloss, pr_auc

# ------------------------------------------------------------------------------------------------ metrics


def test_auc_counts_each_correctly_ordered_pair_and_ties_as_half() -> None:
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert auc(np.array([0, 1]), np.array([0.5, 0.5])) == 0.5
    # pairs (positive, negative): (.5,.1)=1, (.5,.5)=0.5, (.9,.1)=1, (.9,.5)=1 -> 3.5 / 4
    assert auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.5, 0.5, 0.9])) == 0.875


def test_pr_auc_is_average_precision_with_tied_scores_as_one_threshold() -> None:
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


def test_grouped_ndcg_and_auc_match_per_group_definitions() -> None:
    rng = np.random.default_rng(0)
    sizes = np.array([5, 1, 8, 4])
    offsets = np.r_[0, np.cumsum(sizes)]
    scores = rng.normal(size=offsets[-1]).round(1)  # ties included
    labels = (rng.random(offsets[-1]) < 0.4).astype(float)
    labels[offsets[0]] = 1.0
    n_relevant = np.array([labels[a:b].sum() + 1 for a, b in itertools.pairwise(offsets)])
    n_relevant[3] = 0
    ndcg = grouped_ndcg(scores, labels, offsets, n_relevant.astype(int), k=3)
    aucs = grouped_auc(scores, labels, offsets)
    for g, (a, b) in enumerate(itertools.pairwise(offsets)):
        order = np.lexsort((np.arange(a, b), -scores[a:b]))
        gains = labels[a:b][order][:3] / np.log2(np.arange(2, 5))[: min(3, b - a)]
        ideal = (1 / np.log2(np.arange(2, 5)))[: min(3, int(n_relevant[g]))].sum()
        expected = gains.sum() / ideal if ideal else np.nan
        np.testing.assert_allclose(ndcg[g], expected, err_msg=f"group {g}")
        positives = labels[a:b].sum()
        if 0 < positives < b - a:
            assert aucs[g] == pytest.approx(auc(labels[a:b].astype(int), scores[a:b]))
        else:
            assert np.isnan(aucs[g])


def test_popularity_scores_train_rating_counts_and_zero_for_unseen_movies() -> None:
    scorer = PopularityScorer.fit(np.array([5, 3, 5, 9, 5, 3]))
    np.testing.assert_array_equal(scorer.score(np.array([5, 3, 9, 7, 100])), [3, 2, 1, 0, 0])


# --------------------------------------------------------------------------------- listwise loss and loop


def test_listwise_loss_is_the_cross_entropy_to_the_positives_and_pushes_them_up() -> None:
    logits = torch.tensor([1.0, 0.0, -1.0, 0.5, 0.5], requires_grad=True)
    labels = torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0])
    group = torch.tensor([0, 0, 0, 1, 1])
    loss = listwise_loss(logits, labels, group, 2)
    first = torch.log_softmax(logits[:3].detach(), 0)
    second = torch.log_softmax(logits[3:].detach(), 0)
    expected = (-(first[1] + first[2]) / 2 - second[1]) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert (logits.grad[labels > 0] < 0).all() and (logits.grad[labels == 0] > 0).all()


def grouped_problem(groups: int, size: int, seed: int, spec) -> EncodedGroups:
    """Candidates whose first numeric feature decides relevance (plus noise): a learnable ranking."""
    rng = np.random.default_rng(seed)
    n = groups * size
    n_numeric = len(spec.numeric_fields)
    numeric = rng.normal(size=(n, n_numeric)).astype(np.float32)
    labels = (numeric[:, 0] + 0.5 * rng.normal(size=n) > 1.2).astype(np.float32)
    features = {
        "user": torch.zeros(n, dtype=torch.int64),
        "movie": torch.zeros(n, dtype=torch.int64),
        "user_genres": torch.zeros((n, 5), dtype=torch.int64),
        "movie_genres": torch.zeros((n, 3), dtype=torch.int64),
        "liked_movies": torch.zeros((n, 5), dtype=torch.int64),
        "numeric": torch.from_numpy(numeric),
        "numeric_missing": torch.zeros((n, n_numeric)),
        "numeric_buckets": torch.ones((n, n_numeric), dtype=torch.int64),
    }
    offsets = np.arange(0, n + 1, size)
    n_relevant = np.add.reduceat(labels, offsets[:-1]).astype(np.int64) + 1  # one relevant movie missed
    return EncodedGroups(features, torch.from_numpy(labels), offsets, n_relevant)


@pytest.fixture(scope="module")
def spec(synthetic_features: Path):
    from starling.features.spec import FeatureSpec

    base = FeatureSpec.load(synthetic_features / "features" / "feature_spec.json")
    frame = pl.DataFrame(
        np.random.default_rng(0).normal(size=(50, len(CANDIDATE_FEATURES))),
        schema=list(CANDIDATE_FEATURES),
        orient="row",
    )
    return base.with_candidate_stats(frame)


def test_fit_ranking_learns_and_restores_the_best_epoch(spec) -> None:
    train, valid = grouped_problem(120, 40, 0, spec), grouped_problem(40, 40, 1, spec)
    config = ModelConfig(hidden_units=(16,), learning_rate=3e-3, max_epochs=6, patience=2, ensemble=2)
    seed_everything(0)
    model = build_model("rank_mlp", spec, config)
    untrained = np.nanmean(
        grouped_ndcg(
            predict_logits(model, valid.features), valid.labels.numpy(), valid.offsets, valid.n_relevant
        )
    )
    result = fit_ranking(model, train, valid, config, torch.device("cpu"))
    assert result.failure is None and result.best_valid_ndcg > untrained + 0.2
    now = np.nanmean(
        grouped_ndcg(
            predict_logits(model, valid.features), valid.labels.numpy(), valid.offsets, valid.n_relevant
        )
    )
    assert now == pytest.approx(result.best_valid_ndcg), "the model holds its best epoch's weights"
    assert [stats.epoch for stats in result.history] == list(range(1, len(result.history) + 1))
    assert all(stats.valid_auc is not None for stats in result.history)


def test_a_diverging_run_is_stopped_and_reported(spec) -> None:
    train, valid = grouped_problem(20, 10, 0, spec), grouped_problem(10, 10, 1, spec)
    config = ModelConfig(hidden_units=(8,), max_epochs=3, learning_rate=float("inf"))
    result = fit_ranking(build_model("rank_mlp", spec, config), train, valid, config, torch.device("cpu"))
    assert result.failure is not None and "non-finite" in result.failure
    assert result.best_epoch is None


# ----------------------------------------------------------------------------- windows and candidate sets


def test_training_windows_end_at_the_valid_cutoff_and_skip_the_sparse_start() -> None:
    start = datetime(2010, 1, 1, tzinfo=UTC)
    ratings = pl.DataFrame({"event_timestamp": [start + timedelta(days=d) for d in range(0, 1000, 2)]})
    valid_cutoff = start + timedelta(days=900)
    windows = training_windows(
        ratings, valid_cutoff, WindowConfig(horizon_days=100, step_days=50, windows=40)
    )
    assert windows[0] == (valid_cutoff - timedelta(days=100), valid_cutoff)
    assert all(a - b == timedelta(days=50) for (a, _), (b, _) in itertools.pairwise(windows))
    assert min(w[0] for w in windows) > start + timedelta(days=50), "5% of the ratings come before any window"


def test_window_targets_are_new_likes_in_the_window() -> None:
    t = datetime(2020, 1, 1, tzinfo=UTC)
    ratings = pl.DataFrame(
        {
            "user_id": [1, 1, 1, 1, 2],
            "movie_id": [10, 11, 10, 12, 10],
            "rating": [4.0, 2.0, 5.0, 4.5, 3.0],
            "event_timestamp": [t, t, t + timedelta(days=2), t + timedelta(days=3), t + timedelta(days=2)],
        }
    )
    targets = window_targets(ratings, t + timedelta(days=1), t + timedelta(days=10), 3.5)
    assert targets.rows() == [(1, 12)], "10 was rated before the window; 2's rating is no like"


@pytest.mark.slow
def test_candidate_sets_come_from_the_served_recall(synthetic_features: Path) -> None:
    from training.train import prepare_ranking_data

    data = prepare_ranking_data(synthetic_features, WindowConfig(windows=3, step_days=120))
    assert data.spec.candidate_stats and tuple(data.spec.candidate_stats) == CANDIDATE_FEATURES
    for candidate_set in data.train_sets:
        positives = np.add.reduceat(candidate_set.labels, candidate_set.offsets[:-1])
        assert (positives > 0).all(), "every training group holds a movie the user went on to like"
        assert (positives <= candidate_set.n_relevant).all()
        assert candidate_set.features.shape == (len(candidate_set), len(CANDIDATE_FEATURES))
    assert data.valid.groups == int(data.valid_set.known.sum())
    assert data.train.features["numeric"].shape[1] == len(data.spec.numeric_fields)
    assert data.windows[0][1] == data.valid_cutoff and data.valid_cutoff < data.test_cutoff


# ----------------------------------------------------------------------------------------- starling train


@pytest.mark.slow
def test_starling_train_selects_on_the_served_pipeline_and_publishes(
    synthetic_features: Path, tmp_path: Path
) -> None:
    workdir = copy_workdir(synthetic_features, tmp_path / "workdir")
    result = CliRunner().invoke(
        cli,
        ["train", str(workdir), "--model", "all", "--epochs", "2", "--windows", "3", "--step-days", "120"],
    )
    assert result.exit_code == 0, result.output
    artifact = load_artifact(resolve_artifact(workdir))
    manifest = artifact.manifest
    assert set(manifest["models"]) == set(MODELS)
    scores = {name: entry["pipeline_valid_ndcg@10"] for name, entry in manifest["models"].items()}
    assert manifest["serving_model"] == max(scores, key=scores.__getitem__)
    assert f"serving model: {manifest['serving_model']}; published as current" in result.output
    gate_baselines = manifest["gate"]["baselines_valid_ndcg@10"]
    assert set(gate_baselines) == {"popularity", "pipeline_without_ranker"}
    assert all(scores[manifest["serving_model"]] > value for value in gate_baselines.values())
    assert artifact.recall_state is not None and manifest["recall_state"] == "recall"
    assert artifact.spec.candidate_stats, "the artifact's spec carries the candidate features' statistics"
    windows = manifest["training"]["windows"]
    assert len(windows) == 3 and windows[0][1] == manifest["training"]["valid_cutoff"]


def test_train_refuses_bad_options(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--windows", "0"])
    assert result.exit_code == 2 and "--windows" in result.output
    result = CliRunner().invoke(cli, ["train", str(tmp_path), "--model", "nope"])
    assert result.exit_code == 2 and "unknown model 'nope'" in result.output
    result = CliRunner().invoke(cli, ["train", str(tmp_path)])
    assert result.exit_code == 2 and "starling features build" in result.output
