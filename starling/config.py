"""One place for configuration: typed, read from ``STARLING_*`` environment variables, with defaults.

Every component reads its settings through :func:`get_settings`; nothing else reads the environment.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STARLING_", extra="ignore")

    # --- data -------------------------------------------------------------------------------------------------
    workdir: Path = Field(Path("work"), description="Default working directory for data, features and models.")
    datasets_dir: Path = Field(
        Path.home() / ".cache" / "starling" / "datasets",
        description="Where downloaded MovieLens archives are unpacked (and looked for).",
    )
    dataset_search_path: str = Field(
        str(REPO_ROOT.parent / "shared" / "data"),
        description="os.pathsep-separated directories searched for local copies of named datasets.",
    )
    grouplens_base_url: str = "https://files.grouplens.org/datasets/movielens"

    # --- features -----------------------------------------------------------------------------------------
    like_threshold: float = Field(3.5, description="A rating >= this is a 'like' (label = 1).")

    # --- Feast --------------------------------------------------------------------------------------------
    feature_repo: Path = Field(REPO_ROOT / "feature_repo", description="Feast repository directory.")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    feast_registry: Path | None = Field(None, description="Registry path; default WORKDIR/feast/registry.db.")
    feast_online_path: Path | None = Field(None, description="sqlite online store path; default WORKDIR/feast/online.db.")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
