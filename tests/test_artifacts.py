"""Versioned artifacts: the round trip, safe loading, atomic publishing and the quality gate."""

from __future__ import annotations

import json
import os
import pickle
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from training.artifacts import (
    ArtifactError,
    VersionWriter,
    current_version,
    load_artifact,
    publish,
    resolve_artifact,
    sha256_file,
)
from training.gate import QualityGateError, gate_failures
from training.ltr import WindowConfig
from training.models.base import ModelConfig
from training.train import RankingData, pipeline_valid_ndcg, prepare_ranking_data, run_training

FAST = ModelConfig(embedding_dim=8, hidden_units=(32, 16), max_epochs=2, learning_rate=3e-3)


@pytest.fixture(scope="module")
def prepared(synthetic_features: Path, tmp_path_factory: pytest.TempPathFactory) -> RankingData:
    from conftest import copy_workdir

    workdir = copy_workdir(synthetic_features, tmp_path_factory.mktemp("artifacts"))
    return prepare_ranking_data(workdir, WindowConfig(windows=3, step_days=120))


@pytest.fixture(scope="module")
def trained(prepared: RankingData) -> tuple[Path, str]:
    """A synthetic workdir with one published version holding rank_mlp and din."""
    workdir = prepared.spec_path.parent.parent
    report = run_training(workdir, prepared, ["rank_mlp", "din"], FAST)
    assert report.published
    return workdir, report.version


def test_version_layout_and_manifest(trained: tuple[Path, str]) -> None:
    workdir, version = trained
    path = resolve_artifact(workdir)
    assert path == workdir / "models" / version
    manifest = json.loads((path / "manifest.json").read_text())
    expected = {
        "feature_spec.json",
        "fingerprint.json",
        "metrics.json",
        "popularity.parquet",
        "recall/params.json",
        "recall/state.npz",
        *(f"{name}/{file}" for name in ("rank_mlp", "din") for file in ("weights.pt", "config.json")),
        "learning_curves/rank_mlp.png",
        "learning_curves/din.png",
    }
    assert set(manifest["files"]) == expected
    scores = {name: entry["pipeline_valid_ndcg@10"] for name, entry in manifest["models"].items()}
    assert manifest["serving_model"] == max(scores, key=scores.__getitem__)
    fingerprint = json.loads((path / "fingerprint.json").read_text())
    assert fingerprint["samples_sha256"] == sha256_file(workdir / "features" / "samples.parquet")
    assert fingerprint["row_counts"]["train_groups"] > 0
    config = json.loads((path / "din" / "config.json").read_text())
    assert config["hyperparameters"]["embedding_dim"] == 8 and config["best_epoch"] in (1, 2)
    assert (path / "learning_curves" / "din.png").read_bytes()[:4] == b"\x89PNG"


def test_loaded_models_reproduce_the_recorded_pipeline_ndcg(
    trained: tuple[Path, str], prepared: RankingData
) -> None:
    from services.rerank.logic import load_rules

    workdir, _ = trained
    artifact = load_artifact(resolve_artifact(workdir))
    serving = artifact.manifest["serving_model"]
    for name, model in artifact.models.items():
        assert not model.training
        measured = pipeline_valid_ndcg(prepared, model, load_rules()).mean()
        recorded = artifact.manifest["models"][name]["pipeline_valid_ndcg@10"]
        if name == serving:  # its weights are the refit's; selection scored the model before it
            config = json.loads((resolve_artifact(workdir) / name / "config.json").read_text())
            recorded = config["refit"]["pipeline_valid_ndcg@10_in_sample"]
        assert measured == pytest.approx(recorded, abs=1e-9)


def test_weights_round_trip_through_weights_only_load(
    trained: tuple[Path, str], prepared: RankingData, tmp_path: Path
) -> None:
    workdir, _ = trained
    artifact = load_artifact(resolve_artifact(workdir))
    writer = VersionWriter(tmp_path, "v1")
    writer.add_model("din", artifact.models["din"], {})
    state = torch.load(writer.path("din/weights.pt"), weights_only=True)
    from training.models import build_model

    reloaded = build_model("din", artifact.spec, FAST)
    reloaded.load_state_dict(state)
    features = {key: value[:300] for key, value in prepared.valid.features.items()}
    with torch.no_grad():
        assert torch.equal(reloaded.eval()(features), artifact.models["din"](features))


def _copy_version(workdir: Path, tmp_path: Path) -> Path:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(resolve_artifact(workdir), copy)
    return copy


def test_a_modified_file_is_refused(trained: tuple[Path, str], tmp_path: Path) -> None:
    copy = _copy_version(trained[0], tmp_path)
    with open(copy / "din" / "weights.pt", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(ArtifactError, match=r"din/weights.pt: sha256 differs from the manifest"):
        load_artifact(copy)


class Payload:
    """Stands for arbitrary pickled code, which weights_only loading must never unpickle."""


def test_pickled_objects_are_refused_even_with_a_matching_manifest(
    trained: tuple[Path, str], tmp_path
) -> None:
    copy = _copy_version(trained[0], tmp_path)
    weights = copy / "din" / "weights.pt"
    torch.save({"payload": Payload()}, weights)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["files"]["din/weights.pt"] = sha256_file(weights)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match="cannot load the din weights"):
        load_artifact(copy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(weights, weights_only=True)


def test_publish_swaps_current_atomically(tmp_path: Path) -> None:
    models = tmp_path / "models"
    for version in ("v1", "v2"):
        writer = VersionWriter(models, version)
        writer.add_json("metrics.json", {})
        writer.commit({})
    with pytest.raises(ArtifactError, match="no published model"):
        resolve_artifact(tmp_path)
    publish(models, "v1")
    assert current_version(models) == "v1"
    publish(models, "v2")
    assert current_version(models) == "v2" and os.readlink(models / "current") == "v2"
    assert resolve_artifact(tmp_path) == models / "v2"
    assert resolve_artifact(tmp_path, "v1") == models / "v1"
    assert sorted(p.name for p in models.iterdir()) == ["current", "v1", "v2"]  # no temporary links left
    with pytest.raises(ArtifactError, match="not a complete model version"):
        publish(models, "v3")


def test_gate_failures_state_the_numbers() -> None:
    failures = {"c": "non-finite training loss (nan) in epoch 1"}
    baselines = {"popularity": 0.25, "pipeline_without_ranker": 0.28}
    assert gate_failures({"a": 0.31, "b": 0.20, "c": None}, failures, baselines, "a") == {
        "c": "training failed: non-finite training loss (nan) in epoch 1"
    }
    assert gate_failures({"a": 0.26, "b": 0.20}, {}, baselines, "a") == {
        "a": "the served pipeline's validation NDCG@10 0.2600 is not above the baseline: "
        "pipeline_without_ranker 0.2800"
    }
    assert gate_failures({"a": 0.21}, {}, baselines, "a") == {
        "a": "the served pipeline's validation NDCG@10 0.2100 is not above the baseline: popularity 0.2500, "
        "pipeline_without_ranker 0.2800"
    }


@pytest.mark.parametrize("defect", ["inverted train labels", "diverging learning rate"])
def test_the_gate_refuses_a_bad_model_and_leaves_current_alone(
    trained: tuple[Path, str], prepared: RankingData, defect: str
) -> None:
    workdir, good_version = trained
    data, config = prepared, FAST
    if defect == "inverted train labels":  # a ranker that learns the opposite of the truth
        data = replace(prepared, train=replace(prepared.train, labels=1.0 - prepared.train.labels))
    else:
        config = ModelConfig(hidden_units=(32,), max_epochs=2, learning_rate=float("inf"))
    before = set((workdir / "models").iterdir())
    with pytest.raises(QualityGateError) as refusal:
        run_training(workdir, data, ["rank_mlp"], config)
    message = str(refusal.value)
    expected = "is not above the baseline" if defect.startswith("inverted") else "non-finite"
    assert expected in message and f"`current` still {good_version}" in message
    assert current_version(workdir / "models") == good_version
    (refused_version,) = set((workdir / "models").iterdir()) - before
    assert json.loads((refused_version / "manifest.json").read_text())["gate"]["passed"] is False


def test_no_publish_writes_a_version_without_touching_current(
    trained: tuple[Path, str], prepared: RankingData
) -> None:
    workdir, version = trained
    report = run_training(workdir, prepared, ["rank_mlp"], FAST, publish=False)
    assert current_version(workdir / "models") == version
    assert (workdir / "models" / report.version / "manifest.json").is_file()
    assert "not published (--no-publish)" in report.summary()
    assert f"learning curves: {report.path / 'learning_curves' / 'rank_mlp.png'}" in report.summary()
