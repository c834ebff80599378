"""Shared fixtures. Real data: the MovieLens ml-latest-small copy beside the checkout (never committed)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from starling.config import REPO_ROOT, Settings
from starling.local import copy_workdir

# Content vectors (a language model over the whole catalog, ~25 s a training) only where a test asks for them:
# the served ml-latest-small artifact (ml_small_trained) has them; the many other trainings skip them.
os.environ.setdefault("STARLING_CONTENT_VECTORS", "0")

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


def fast_windows():
    """Fewer, sparser training windows than `starling train`'s default: the tests check behaviour, not the last
    point of quality (README's figures come from the defaults)."""
    from training.ltr import WindowConfig

    return WindowConfig(windows=8, step_days=90)


@pytest.fixture(scope="session")
def ml_small_trained(ml_small_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of that workdir, materialized into the sqlite online store, with the serving ranker trained on
    recalled candidates (fast windows) and published as `current`.

    Its own copy, so that tests training other versions in ``ml_small_features`` cannot change what is served.
    Tests that publish here themselves must work on a copy (see :func:`copy_workdir`).
    """
    from starling.featurestore import materialize
    from training.train import train_command

    workdir = copy_workdir(ml_small_features, tmp_path_factory.mktemp("ml_small_trained"))
    materialize(workdir)
    train_command(workdir, "rank_mlp", publish=True, windows=fast_windows(), content_vectors=True)
    return workdir


@pytest.fixture(scope="session")
def synthetic_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Generated MovieLens-shaped data with planted tastes (synthetic:40000), ingested and featurized."""
    from starling.data.ingest import ingest
    from starling.features.build import SplitConfig, build_features

    workdir = tmp_path_factory.mktemp("synthetic")
    ingest("synthetic:40000", workdir)
    build_features(workdir, SplitConfig())
    return workdir


@pytest.fixture(scope="session")
def synthetic_trained(synthetic_features: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the synthetic workdir, materialized, with the serving ranker trained (fast windows) and
    published: the world whose true tastes the simulator knows."""
    from starling.featurestore import materialize
    from training.train import train_command

    workdir = copy_workdir(synthetic_features, tmp_path_factory.mktemp("synthetic_trained"))
    materialize(workdir)
    train_command(workdir, "rank_mlp", publish=True, windows=fast_windows())
    return workdir


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where tests write the README's figures and screenshots: docs/ with STARLING_UPDATE_DOCS=1 (`make
    docs-figures`), else a temporary folder, so that `make test` leaves the checkout as it found it."""
    if os.environ.get("STARLING_UPDATE_DOCS") == "1":
        return REPO_ROOT / "docs"
    return tmp_path_factory.mktemp("docs")


@pytest.fixture(scope="session")
def free_port() -> Callable[[], int]:
    """Returns a function giving a TCP port that was free a moment ago."""
    from starling.local import free_port as pick

    return pick


@pytest.fixture(scope="session")
def helm() -> str:
    """A Helm binary: the one on PATH, else the pinned one scripts/install-helm.sh puts in .tools/bin."""
    import shutil
    import subprocess

    on_path = shutil.which("helm")
    if on_path:
        return on_path
    done = subprocess.run(
        [str(REPO_ROOT / "scripts" / "install-helm.sh")], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, f"scripts/install-helm.sh failed:\n{done.stderr}"
    return done.stdout.strip().splitlines()[-1]


@contextmanager
def running_stack(workdir: Path, **overrides: object) -> Iterator[Settings]:
    """Every service of `starling up` as real processes on free ports, stopped on exit.

    Stage deadlines are generous: the tests check behaviour on a shared, noisy machine, not speed.
    """
    from starling.local import down, up_on_free_ports

    deadlines = {f"{stage}_timeout_ms": 5000 for stage in ("candidates", "recall", "ranker", "rerank")}
    settings = up_on_free_ports(
        workdir, Settings(workdir=workdir, **{**deadlines, **overrides}), timeout_s=240
    )
    try:
        yield settings
    finally:
        down(workdir)
