"""Versioned artifacts: the round trip, safe loading, atomic publishing and the quality gate."""

from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import polars as pl
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
from training.data import load_training_data
from training.gate import QualityGateError, gate_failures
from training.models.base import ModelConfig
from training.synthetic import synthetic_samples, write_synthetic_features
from training.train import run_training

FAST = ModelConfig(embedding_dim=8, hidden_units=(32, 32), max_epochs=2)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A synthetic workdir with one published version holding embedding_mlp and din."""
    workdir = write_synthetic_features(tmp_path_factory.mktemp("artifacts"))
    report = run_training(workdir, load_training_data(workdir), ["embedding_mlp", "din"], FAST)
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
        *(f"{name}/{file}" for name in ("embedding_mlp", "din") for file in ("weights.pt", "config.json")),
        "learning_curves/embedding_mlp.png",
        "learning_curves/din.png",
    }
    assert set(manifest["files"]) == expected
    assert manifest["serving_model"] == max(
        manifest["models"], key=lambda n: manifest["models"][n]["valid_auc"]
    )
    fingerprint = json.loads((path / "fingerprint.json").read_text())
    assert fingerprint["samples_sha256"] == sha256_file(workdir / "features" / "samples.parquet")
    assert fingerprint["row_counts"] == {"train": 16_000, "valid": 2_000, "test": 2_000}
    config = json.loads((path / "din" / "config.json").read_text())
    assert config["hyperparameters"]["embedding_dim"] == 8 and config["best_epoch"] in (1, 2)
    assert (path / "learning_curves" / "din.png").read_bytes()[:4] == b"\x89PNG"


def test_loaded_models_reproduce_the_recorded_valid_auc(trained: tuple[Path, str]) -> None:
    from training.ranking_metrics import auc

    workdir, _ = trained
    artifact = load_artifact(resolve_artifact(workdir))
    valid = pl.read_parquet(workdir / "features" / "samples.parquet").filter(pl.col("split") == "valid")
    for name, model in artifact.models.items():
        assert not model.training
        measured = auc(valid["label"].to_numpy(), artifact.predict(valid, name))
        assert measured == pytest.approx(artifact.manifest["models"][name]["valid_auc"], abs=1e-9)


def test_weights_round_trip_through_weights_only_load(trained: tuple[Path, str], tmp_path: Path) -> None:
    workdir, _ = trained
    artifact = load_artifact(resolve_artifact(workdir))
    writer = VersionWriter(tmp_path, "v1")
    writer.add_model("din", artifact.models["din"], {})
    state = torch.load(writer.path("din/weights.pt"), weights_only=True)
    from training.models import build_model

    reloaded = build_model("din", artifact.spec, FAST)
    reloaded.load_state_dict(state)
    encoded_rows = synthetic_samples(n_rows=300, seed=5)
    from starling.features.transform import transform

    encoded = transform(encoded_rows, artifact.spec)
    features = {key: torch.from_numpy(np.array(value)) for key, value in encoded.items() if key != "label"}
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
    refused = gate_failures(
        {"a": 0.71, "b": 0.60, "c": None}, {"c": "non-finite training loss (nan) in epoch 1"}, 0.65
    )
    assert refused == {
        "b": "valid AUC 0.6000 is not above the popularity baseline's 0.6500",
        "c": "training failed: non-finite training loss (nan) in epoch 1",
    }


@pytest.mark.parametrize("defect", ["inverted train labels", "diverging learning rate"])
def test_the_gate_refuses_a_bad_model_and_leaves_current_alone(
    trained: tuple[Path, str], tmp_path: Path, defect: str
) -> None:
    workdir, good_version = trained
    bad = tmp_path / "bad"
    samples = pl.read_parquet(workdir / "features" / "samples.parquet")
    config = FAST
    if defect == "inverted train labels":  # a model that learns the opposite of the truth
        samples = samples.with_columns(
            label=pl.when(pl.col("split") == "train").then(1 - pl.col("label")).otherwise(pl.col("label"))
        )
    else:
        config = ModelConfig(embedding_dim=8, hidden_units=(32,), max_epochs=2, learning_rate=float("inf"))
    write_synthetic_features(bad, samples)
    (bad / "models").mkdir()
    os.symlink(workdir / "models" / good_version, bad / "models" / good_version)
    publish(bad / "models", good_version)
    with pytest.raises(QualityGateError) as refusal:
        run_training(bad, load_training_data(bad), ["embedding_mlp"], config)
    message = str(refusal.value)
    expected = "is not above the popularity baseline's" if defect.startswith("inverted") else "non-finite"
    assert expected in message and f"`current` still {good_version}" in message
    assert current_version(bad / "models") == good_version
    refused_version = next(p for p in (bad / "models").iterdir() if p.name not in ("current", good_version))
    assert json.loads((refused_version / "manifest.json").read_text())["gate"]["passed"] is False


def test_no_publish_writes_a_version_without_touching_current(trained: tuple[Path, str]) -> None:
    workdir, version = trained
    report = run_training(workdir, load_training_data(workdir), ["neural_cf"], FAST, publish=False)
    assert current_version(workdir / "models") == version
    assert (workdir / "models" / report.version / "manifest.json").is_file()
    assert "not published (--no-publish)" in report.summary()
