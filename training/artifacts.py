"""Versioned model artifacts: WORKDIR/models/<version>/ written once, loaded safely, published atomically.

Layout of a version (every file is listed with its sha256 in ``manifest.json``)::

    manifest.json            format, version, serving model, models, recall state, gate, files
    fingerprint.json         sha256 of samples.parquet, feature spec version, row counts per split
    metrics.json             valid/test metrics of every model and of the popularity baseline
    feature_spec.json        the spec the models were trained with (with their candidate-feature statistics)
    popularity.parquet       the popularity baseline (movie_id, rating_count on train)
    recall/                  the recall state served with the models (params.json, state.npz)
    <model>/weights.pt       state_dict (torch.save); read back only with torch.load(weights_only=True)
    <model>/config.json      model name, hyperparameters, metrics, epochs, best epoch, history
    learning_curves/<model>.png

A version is assembled in a hidden staging directory and renamed into place, so a reader never sees half of
one. ``models/current`` is a relative symlink swapped with ``os.replace`` (atomic on POSIX).
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from services.recall.state import RecallState
from starling.errors import StarlingError
from starling.features.spec import FeatureSpec
from training.models import build_model
from training.models.base import ModelConfig
from training.popularity import PopularityScorer

MANIFEST_FORMAT = 1
MANIFEST_KEYS = (
    "version",
    "serving_model",
    "models",
    "feature_spec",
    "popularity",
    "files",
)
CURRENT = "current"


class ArtifactError(StarlingError):
    """A model artifact is missing, incomplete, tampered with, or does not load."""


def sha256_file(path: Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_bytes):
            digest.update(chunk)
    return digest.hexdigest()


def data_fingerprint(
    samples_path: Path | None, spec: FeatureSpec, row_counts: Mapping[str, int]
) -> dict[str, Any]:
    """What the models were trained on: enough to tell whether two versions saw the same data."""
    return {
        "samples_path": str(samples_path) if samples_path else None,
        "samples_sha256": sha256_file(samples_path) if samples_path else None,
        "feature_spec_version": spec.version,
        "row_counts": dict(row_counts),
    }


def new_version(fingerprint: Mapping[str, Any], now: datetime | None = None) -> str:
    """``<UTC timestamp>-<7 hex>``, e.g. ``20261128T201500Z-3fa2b1c``; the hash covers the data fingerprint
    and the exact time, so two runs in the same second still get different names."""
    now = now or datetime.now(UTC)
    seed = (
        json.dumps(fingerprint, sort_keys=True)
        + now.isoformat()
        + str(time.perf_counter_ns())
        + str(os.getpid())
    )
    return f"{now:%Y%m%dT%H%M%SZ}-{hashlib.sha256(seed.encode()).hexdigest()[:7]}"


def write_json(path: Path, content: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


class VersionWriter:
    """Builds one version in ``models/.staging-<version>``; :meth:`commit` renames it to ``models/<version>``."""

    def __init__(self, models_dir: Path, version: str) -> None:
        self.models_dir = Path(models_dir)
        self.version = version
        self.final_dir = self.models_dir / version
        self.staging_dir = self.models_dir / f".staging-{version}"
        if self.final_dir.exists():
            raise ArtifactError(f"{self.final_dir}: version already exists")
        self.staging_dir.mkdir(parents=True)

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` inside the version (parent directories are created)."""
        target = self.staging_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def add_json(self, relative: str, content: Any) -> None:
        write_json(self.path(relative), content)

    def add_model(self, name: str, model: nn.Module, config: Mapping[str, Any]) -> None:
        state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
        torch.save(state, self.path(f"{name}/weights.pt"))
        self.add_json(f"{name}/config.json", {"model": name, **config})

    def commit(self, manifest: Mapping[str, Any]) -> Path:
        """Hash every file into the manifest, write it, and move the version into place."""
        files = sorted(p for p in self.staging_dir.rglob("*") if p.is_file())
        hashes = {p.relative_to(self.staging_dir).as_posix(): sha256_file(p) for p in files}
        write_json(
            self.staging_dir / "manifest.json",
            {"format": MANIFEST_FORMAT, "version": self.version, **manifest, "files": hashes},
        )
        os.rename(self.staging_dir, self.final_dir)
        return self.final_dir

    def abandon(self) -> None:
        shutil.rmtree(self.staging_dir, ignore_errors=True)


def publish(models_dir: Path, version: str) -> None:
    """Point ``models/current`` at ``version``: a temporary symlink renamed over the old one (atomic)."""
    models_dir = Path(models_dir)
    if not (models_dir / version / "manifest.json").is_file():
        raise ArtifactError(f"{models_dir / version}: not a complete model version (no manifest.json)")
    temporary = models_dir / f".{CURRENT}-{os.getpid()}-{time.perf_counter_ns()}"
    os.symlink(version, temporary, target_is_directory=True)
    try:
        os.replace(temporary, models_dir / CURRENT)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def current_version(models_dir: Path) -> str | None:
    """The version ``models/current`` points at, or None when nothing has been published."""
    link = Path(models_dir) / CURRENT
    return os.readlink(link) if link.is_symlink() else None


def resolve_artifact(workdir: Path, version: str = CURRENT) -> Path:
    """The directory of ``version`` (default: the published one) under WORKDIR/models."""
    models_dir = Path(workdir) / "models"
    if version == CURRENT:
        target = current_version(models_dir)
        if target is None:
            raise ArtifactError(
                f"{models_dir / CURRENT}: no published model (run `starling train {workdir}` first)"
            )
        version = target
    path = models_dir / version
    if not (path / "manifest.json").is_file():
        raise ArtifactError(f"{path}: no such model version (missing manifest.json)")
    return path


@dataclass
class Artifact:
    """A loaded version: models in eval mode on CPU, the spec they expect, and what else was trained."""

    path: Path
    manifest: dict[str, Any]
    spec: FeatureSpec
    models: dict[str, nn.Module]
    configs: dict[str, dict[str, Any]]
    popularity: PopularityScorer
    recall_state: RecallState | None = None

    @property
    def version(self) -> str:
        return self.manifest["version"]

    @property
    def serving_model(self) -> str:
        """The model with the best validation NDCG@10 of the served pipeline; what the ranker serves."""
        return self.manifest["serving_model"]

    def model(self, name: str | None = None) -> nn.Module:
        name = name or self.serving_model
        if name not in self.models:
            raise ArtifactError(f"{self.path}: has no model {name!r} (has {sorted(self.models)})")
        return self.models[name]


def load_artifact(path: Path) -> Artifact:
    """Load a version, checking every file against the manifest's sha256 before reading it.

    Weights are read with ``torch.load(weights_only=True)``: tensors only, never pickled code.
    """
    path = Path(path)
    manifest_path = path / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ArtifactError(f"{manifest_path}: not a readable manifest ({exc})") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ArtifactError(f"{manifest_path}: format {found!r}, this code reads {MANIFEST_FORMAT}")
    missing = [key for key in MANIFEST_KEYS if key not in manifest]
    if missing:
        raise ArtifactError(f"{manifest_path}: lacks keys {missing}")
    for relative, expected in manifest["files"].items():
        file = path / relative
        if not file.is_file():
            raise ArtifactError(f"{file}: listed in the manifest but missing")
        if sha256_file(file) != expected:
            raise ArtifactError(f"{file}: sha256 differs from the manifest (modified or truncated)")

    spec = FeatureSpec.load(path / manifest["feature_spec"])
    models: dict[str, nn.Module] = {}
    configs: dict[str, dict[str, Any]] = {}
    for name, entry in manifest["models"].items():
        configs[name] = json.loads((path / entry["config"]).read_text())
        model = build_model(name, spec, ModelConfig.from_dict(configs[name]["hyperparameters"]))
        weights_path = path / entry["weights"]
        try:
            state = torch.load(weights_path, map_location="cpu", weights_only=True)
            model.load_state_dict(state)
        except (RuntimeError, OSError, KeyError, pickle.UnpicklingError) as exc:
            raise ArtifactError(f"{weights_path}: cannot load the {name} weights ({exc})") from exc
        models[name] = model.eval()
    popularity = PopularityScorer.load(path / manifest["popularity"])
    recall_state = RecallState.load(path / manifest["recall_state"]) if manifest.get("recall_state") else None
    return Artifact(path, manifest, spec, models, configs, popularity, recall_state)
