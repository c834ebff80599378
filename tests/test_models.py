"""Ranking models: shapes, gradients, the shared input layer, FM and DIN building blocks, the registry."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import torch

from starling.errors import StarlingError
from starling.features.spec import FeatureSpec, fit_feature_spec
from starling.features.transform import transform
from training.models import MODELS, build_model
from training.models.base import FEATURE_KEYS, ModelConfig
from training.models.deepfm import pairwise_interactions
from training.models.din import InterestAttention
from training.synthetic import synthetic_samples


@pytest.fixture(scope="module")
def spec_and_batch() -> tuple[FeatureSpec, dict[str, torch.Tensor]]:
    """A real spec fitted on synthetic train samples, and 256 rows encoded by the real transform."""
    samples = synthetic_samples(n_rows=2_000, n_users=50, n_movies=80, n_genres=6)
    spec = fit_feature_spec(samples.filter(pl.col("split") == "train"))
    encoded = transform(samples.head(256), spec)
    return spec, {key: torch.from_numpy(np.array(value)) for key, value in encoded.items()}


EMBEDDING_MODELS = [name for name in MODELS if name != "rank_mlp"]  # rank_mlp reads numeric features only


@pytest.mark.parametrize("name", list(MODELS))
def test_forward_gives_one_logit_per_row_and_every_parameter_gets_a_gradient(name, spec_and_batch) -> None:
    spec, batch = spec_and_batch
    torch.manual_seed(0)
    model = build_model(name, spec, ModelConfig(embedding_dim=8, hidden_units=(32, 16)))
    logits = model({key: batch[key] for key in FEATURE_KEYS})
    assert logits.shape == (256,)
    assert torch.isfinite(logits).all()
    torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["label"]).backward()
    without_gradient = [
        param_name
        for param_name, parameter in model.named_parameters()
        if parameter.grad is None or not parameter.grad.abs().sum() > 0
    ]
    assert without_gradient == []
    tables = [n for n, module in model.named_modules() if isinstance(module, torch.nn.Embedding)]
    if name in EMBEDDING_MODELS:
        assert {"inputs.user", "inputs.movie"} <= set(tables)


@pytest.mark.parametrize("name", list(MODELS))
def test_a_row_scores_the_same_alone_or_batched_with_other_requests(name, spec_and_batch) -> None:
    """The ranker scores requests that queue under load in one pass (services/ranker/batching.py)."""
    from services.ranker.scoring import score_encoded

    spec, batch = spec_and_batch
    model = build_model(name, spec, ModelConfig(embedding_dim=8, hidden_units=(32, 16))).eval()
    encoded = {key: batch[key].numpy() for key in FEATURE_KEYS}
    cuts = [(0, 5), (5, 105), (105, 106), (106, 256)]
    alone = [
        score_encoded(model, {k: v[a:b] for k, v in encoded.items()}, torch.device("cpu")) for a, b in cuts
    ]
    together = score_encoded(model, encoded, torch.device("cpu"))
    np.testing.assert_allclose(together, np.concatenate(alone), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", EMBEDDING_MODELS)
def test_eval_mode_is_deterministic_and_training_mode_drops_ids(name, spec_and_batch) -> None:
    spec, batch = spec_and_batch
    model = build_model(name, spec, ModelConfig(embedding_dim=8, hidden_units=(16,), id_dropout=0.5))
    features = {key: batch[key] for key in FEATURE_KEYS}
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(features), model(features))
        model.train()
        assert not torch.equal(model(features), model(features))  # a different random half of ids is unknown


def test_unknown_ids_and_null_genres_use_the_reserved_index(spec_and_batch) -> None:
    spec, batch = spec_and_batch
    model = build_model("embedding_mlp", spec, ModelConfig(embedding_dim=4)).eval()
    assert torch.equal(model.inputs.genre.weight[0], torch.zeros(4))  # null genre = fixed zero vector
    features = {key: batch[key].clone() for key in FEATURE_KEYS}
    features["user"][:] = 0
    features["user_genres"][:] = 0
    with torch.no_grad():
        assert torch.isfinite(model(features)).all()


def test_pairwise_interactions_match_the_explicit_sum_over_field_pairs() -> None:
    fields = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(1))
    explicit = sum((fields[:, i] * fields[:, j]).sum(1) for i in range(5) for j in range(i + 1, 5))
    torch.testing.assert_close(pairwise_interactions(fields), explicit)


def test_din_attention_ignores_masked_liked_movies() -> None:
    torch.manual_seed(0)
    attention = InterestAttention(dim=4)
    query, keys = torch.randn(2, 4), torch.randn(2, 5, 4)
    mask = torch.tensor([[True, True, False, False, False], [False] * 5])
    before = attention(query, keys, mask)
    changed = keys.clone()
    changed[:, 2:] = 100.0
    changed[1] = 100.0
    torch.testing.assert_close(attention(query, changed, mask), before)
    torch.testing.assert_close(before[1], torch.zeros(4))  # no liked movies -> no interest vector


def test_build_model_refuses_unknown_names_and_config_round_trips(spec_and_batch) -> None:
    spec, _ = spec_and_batch
    with pytest.raises(StarlingError, match="unknown model 'xgboost'; choose one of embedding_mlp"):
        build_model("xgboost", spec)
    config = ModelConfig(embedding_dim=12, hidden_units=(64, 32), learning_rate=1e-3)
    assert ModelConfig.from_dict(config.to_dict()) == config
    with pytest.raises(StarlingError, match=r"unknown hyperparameters \['dropout'\]"):
        ModelConfig.from_dict({"dropout": 0.5})


def test_rank_mlp_ensemble_trains_each_member_and_averages_them(spec_and_batch) -> None:
    spec, batch = spec_and_batch
    features = {key: batch[key] for key in FEATURE_KEYS}
    model = build_model("rank_mlp", spec, ModelConfig(hidden_units=(8,), ensemble=3))
    model.train()
    members = model(features)
    assert members.shape == (256, 3) and not torch.equal(members[:, 0], members[:, 1])
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(features), members.detach().mean(dim=1))
        changed = dict(
            features, user=torch.zeros_like(features["user"]), movie=torch.zeros_like(features["movie"])
        )
        assert torch.equal(model(changed), model(features)), "ids do not enter the dense ranker"
