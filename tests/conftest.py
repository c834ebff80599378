"""Shared fixtures. Real data: the MovieLens ml-latest-small copy beside the checkout (never committed)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from starling.config import REPO_ROOT

ML_LATEST_SMALL = Path(
    os.environ.get("STARLING_ML_LATEST_SMALL", REPO_ROOT.parent / "shared" / "data" / "ml-latest-small")
)


@pytest.fixture(scope="session")
def ml_small_dir() -> Path:
    """The real ml-latest-small directory; set STARLING_ML_LATEST_SMALL to point elsewhere."""
    if not (ML_LATEST_SMALL / "ratings.csv").is_file():
        pytest.fail(f"ml-latest-small not found at {ML_LATEST_SMALL} (set STARLING_ML_LATEST_SMALL)")
    return ML_LATEST_SMALL


@pytest.fixture(scope="session")
def ml_small_ingested(ml_small_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A workdir holding the canonical parquet of ml-latest-small (ingested once per session).

    The shared copy carries one planted bad row (a rating of unknown movie 999999), so it is ingested with
    ``on_bad="skip"``, which reports what it dropped.
    """
    from starling.data.ingest import ingest

    workdir = tmp_path_factory.mktemp("ml_small")
    ingest(str(ml_small_dir), workdir, on_bad="skip")
    return workdir


@pytest.fixture(scope="session")
def ml_small_features(ml_small_ingested: Path) -> Path:
    """The same workdir after `features build` with the default split (built once per session)."""
    from starling.features.build import SplitConfig, build_features

    build_features(ml_small_ingested, SplitConfig())
    return ml_small_ingested


@pytest.fixture(scope="session")
def ml_small_trained(ml_small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of that workdir, materialized into the sqlite online store, with every model and item embedding
    trained (early stopping, as `starling train --model all` does) and published as `current`.

    Its own copy, so that tests training other versions in ``ml_small_features`` cannot change what is served.
    Tests that publish here themselves must work on a copy (see :func:`copy_workdir`).
    """
    from starling.featurestore import materialize
    from training.train import train_command

    workdir = copy_workdir(ml_small_features, tmp_path_factory.mktemp("ml_small_trained"))
    materialize(workdir)
    train_command(workdir, "all", publish=True)
    return workdir


def copy_workdir(source: Path, target: Path) -> Path:
    """Copy a workdir without its running-service state (run/) or vector store file."""
    import shutil

    shutil.copytree(
        source,
        target,
        dirs_exist_ok=True,
        symlinks=True,
        ignore=shutil.ignore_patterns("run", "milvus.db", ".milvus.db.lock"),
    )
    return target


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def free_port() -> Callable[[], int]:
    """Returns a function giving a TCP port that was free a moment ago (good enough for tests)."""
    return _free_port
