"""The Feast feature store: apply the repo in ``feature_repo/``, materialize the serving files, read them online.

The Feast objects live in ``feature_repo/definitions.py`` (also usable with the bare ``feast`` CLI); this module
builds the store configuration from :mod:`starling.config` settings instead of ``feature_store.yaml``, so the
online store is sqlite at ``WORKDIR/feast/online.db`` by default and Redis in Kubernetes
(``STARLING_ONLINE_STORE=redis``, ``STARLING_REDIS_CONNECTION_STRING``).
"""

from __future__ import annotations

import importlib.util
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa

from starling.config import Settings, get_settings
from starling.errors import StarlingError
from starling.progress import progress

if TYPE_CHECKING:
    from feast import FeatureStore, RepoConfig

USER_VIEW = "user_features"
MOVIE_VIEW = "movie_features"
RANKING_SERVICE = "ranking_model"
USER_PUSH_SOURCE = "user_features_push"
#: feature view -> (join key, serving file name under WORKDIR/features)
VIEW_FILES: dict[str, tuple[str, str]] = {
    USER_VIEW: ("user_id", "user_features.parquet"),
    MOVIE_VIEW: ("movie_id", "movie_features.parquet"),
}
TIMESTAMP_COLUMN = "event_timestamp"


class FeatureStoreError(StarlingError):
    """The feature files, the Feast registry or the online store are missing or unusable."""


# ------------------------------------------------------------------------------------------ configuration
def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else get_settings()


def registry_path(workdir: Path, settings: Settings | None = None) -> Path:
    settings = _settings(settings)
    return settings.feast_registry or Path(workdir) / "feast" / "registry.db"


def sqlite_online_path(workdir: Path, settings: Settings | None = None) -> Path:
    settings = _settings(settings)
    return settings.feast_online_path or Path(workdir) / "feast" / "online.db"


def online_store_location(workdir: Path, settings: Settings | None = None) -> str:
    """Where online rows go, for humans: the sqlite file, or the Redis address without any password."""
    settings = _settings(settings)
    if settings.online_store == "redis":
        return "redis://" + re.sub(r"password=[^,]*", "password=***", settings.redis_connection_string)
    return str(sqlite_online_path(workdir, settings))


def build_repo_config(workdir: Path, settings: Settings | None = None) -> RepoConfig:
    """The RepoConfig equivalent of ``feature_repo/feature_store.yaml``, with paths and stores from settings."""
    from feast import RepoConfig

    settings = _settings(settings)
    if settings.online_store == "redis":
        online_store: dict[str, Any] = {
            "type": "redis",
            "connection_string": settings.redis_connection_string,
        }
    else:
        online_store = {"type": "sqlite", "path": str(sqlite_online_path(workdir, settings).resolve())}
    return RepoConfig(
        project=settings.feast_project,
        provider="local",
        registry={"registry_type": "file", "path": str(registry_path(workdir, settings).resolve())},
        online_store=online_store,
        offline_store={"type": "file"},
        entity_key_serialization_version=3,
        repo_path=settings.feature_repo.resolve(),
    )


def get_feature_store(workdir: Path, settings: Settings | None = None) -> FeatureStore:
    """A Feast FeatureStore for WORKDIR: registry and (sqlite) online store under WORKDIR/feast by default."""
    from feast import FeatureStore

    config = build_repo_config(workdir, settings)
    registry_path(workdir, settings).parent.mkdir(parents=True, exist_ok=True)
    if config.online_store.type == "sqlite":
        Path(config.online_store.path).parent.mkdir(parents=True, exist_ok=True)
    return FeatureStore(config=config)


def load_definitions(features_dir: Path, settings: Settings | None = None) -> dict[str, Any]:
    """The Feast objects of ``feature_repo/definitions.py`` with their file sources under ``features_dir``."""
    module = _definitions_module(_settings(settings).feature_repo)
    return module.build_definitions(features_dir)


def _definitions_module(feature_repo: Path) -> ModuleType:
    path = Path(feature_repo) / "definitions.py"
    if not path.is_file():
        raise FeatureStoreError(f"{path}: Feast definitions not found (check STARLING_FEATURE_REPO)")
    spec = importlib.util.spec_from_file_location("starling_feast_definitions", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# -------------------------------------------------------------------------------------------- validation
_POLARS_TYPE_FOR_FEAST = {"Int64": pl.Int64, "Int32": pl.Int32, "Float64": pl.Float64, "String": pl.String}


def _expected_columns(view: Any, join_key: str) -> dict[str, pl.DataType]:
    columns: dict[str, pl.DataType] = {join_key: pl.Int64}
    for feature in view.features:
        columns[feature.name] = _POLARS_TYPE_FOR_FEAST[str(feature.dtype)]
    return columns


def _check_feature_file(path: Path, view: Any, join_key: str) -> pl.DataFrame:
    """Read a serving file and make sure Feast will write every row of it; returns key and timestamp columns.

    Feast would silently skip rows with a null key or timestamp and keep only one of duplicated keys, so
    each of those is an error here, naming the file, the column and the rows.
    """
    if not path.is_file():
        raise FeatureStoreError(
            f"{path}: feature file missing; run `starling features build {path.parent.parent}` first"
        )
    try:
        schema = pl.read_parquet_schema(path)
    except Exception as exc:  # polars raises several error types for unreadable files
        raise FeatureStoreError(f"{path}: not a readable parquet file ({exc})") from exc

    expected = _expected_columns(view, join_key)
    missing = [name for name in [*expected, TIMESTAMP_COLUMN] if name not in schema]
    if missing:
        raise FeatureStoreError(
            f"{path}: missing column(s) {', '.join(missing)} required by Feast view {view.name}"
        )
    wrong = [
        f"{name} is {schema[name]}, expected {dtype}"
        for name, dtype in expected.items()
        if schema[name] != dtype
    ]
    if not isinstance(schema[TIMESTAMP_COLUMN], pl.Datetime):
        wrong.append(f"{TIMESTAMP_COLUMN} is {schema[TIMESTAMP_COLUMN]}, expected Datetime")
    if wrong:
        raise FeatureStoreError(f"{path}: wrong column type(s): {'; '.join(wrong)}")

    keys = pl.read_parquet(path, columns=[join_key, TIMESTAMP_COLUMN]).with_row_index("row")
    if keys.height == 0:
        raise FeatureStoreError(f"{path}: no rows; nothing to materialize for {view.name}")
    for column in (join_key, TIMESTAMP_COLUMN):
        null_rows = keys.filter(pl.col(column).is_null())["row"]
        if null_rows.len():
            raise FeatureStoreError(
                f"{path}: {null_rows.len()} row(s) with null {column} (row index {_first(null_rows)}); "
                "Feast cannot store them"
            )
    duplicated = keys.filter(pl.col(join_key).is_duplicated())
    if duplicated.height:
        first_key = duplicated[join_key][0]
        rows = duplicated.filter(pl.col(join_key) == first_key)["row"]
        raise FeatureStoreError(
            f"{path}: {duplicated[join_key].n_unique()} {join_key} value(s) appear more than once, e.g. "
            f"{join_key}={first_key} at row index {_first(rows)}; the serving file must hold one row per entity"
        )
    return keys


def _first(values: pl.Series, limit: int = 5) -> str:
    shown = ", ".join(str(v) for v in values.head(limit).to_list())
    return shown + (", ..." if values.len() > limit else "")


# ----------------------------------------------------------------------------------------- materialize
@dataclass(frozen=True)
class MaterializeReport:
    rows_per_view: dict[str, int]
    seconds: float
    online_store: str
    online_location: str
    registry: Path
    project: str
    window: tuple[datetime, datetime] = field(repr=False)

    def summary(self) -> str:
        rows = ", ".join(f"{view}={n:,}" for view, n in self.rows_per_view.items())
        start, end = self.window
        return (
            f"materialized {rows} rows into {self.online_store} ({self.online_location}) in {self.seconds:.1f}s; "
            f"project {self.project}, registry {self.registry}, event window "
            f"{start:%Y-%m-%d %H:%M:%S} .. {end:%Y-%m-%d %H:%M:%S} UTC"
        )


def materialize(workdir: Path, settings: Settings | None = None) -> MaterializeReport:
    """Apply the Feast objects and load WORKDIR/features/{user,movie}_features.parquet into the online store.

    MovieLens events are 1996-2018, so the window is explicit: [oldest event - 1 s, max(now, newest event + 1 s)].
    """
    settings = _settings(settings)
    started = time.perf_counter()
    features_dir = Path(workdir) / "features"
    definitions = load_definitions(features_dir, settings)

    keys = {
        view: _check_feature_file(features_dir / file_name, definitions[view], join_key)
        for view, (join_key, file_name) in VIEW_FILES.items()
    }
    oldest = min(frame[TIMESTAMP_COLUMN].min() for frame in keys.values())
    newest = max(frame[TIMESTAMP_COLUMN].max() for frame in keys.values())
    start = _as_utc(oldest) - timedelta(seconds=1)
    end = max(datetime.now(UTC), _as_utc(newest) + timedelta(seconds=1))

    store = get_feature_store(workdir, settings)
    with (
        _online_store_errors(workdir, settings),
        progress("materialize", total=len(VIEW_FILES), unit="views") as step,
    ):
        store.apply(list(definitions.values()))
        for view in VIEW_FILES:
            store.materialize(start_date=start, end_date=end, feature_views=[view])
            step.update(**{view: keys[view].height})
    return MaterializeReport(
        rows_per_view={view: frame.height for view, frame in keys.items()},
        seconds=time.perf_counter() - started,
        online_store=settings.online_store,
        online_location=online_store_location(workdir, settings),
        registry=registry_path(workdir, settings),
        project=settings.feast_project,
        window=(start, end),
    )


def _as_utc(value: datetime) -> datetime:
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


@contextmanager
def _online_store_errors(workdir: Path, settings: Settings) -> Iterator[None]:
    """Turns 'cannot reach Redis' into a one-line error naming the address."""
    import redis

    try:
        yield
    except redis.exceptions.ConnectionError as exc:
        location = online_store_location(workdir, settings)
        raise FeatureStoreError(f"cannot reach the online store at {location}: {exc}") from exc


# ----------------------------------------------------------------------------------------- online reads
class OnlineFeatures:
    """Reads the ``ranking_model`` feature service from the online store; keep one per process for serving.

    :meth:`read` returns ``{"users": [...], "movies": [...]}`` in the order asked, each entry
    ``{"user_id"/"movie_id": id, "found": bool, <feature>: value, ...}`` with plain Python values. An id the
    online store does not know gets ``found: False`` and null features (no error); a known entity's missing
    features are null too.
    """

    def __init__(self, workdir: Path, settings: Settings | None = None) -> None:
        from feast.errors import FeatureServiceNotFoundException

        self.workdir = Path(workdir)
        self.settings = _settings(settings)
        registry = registry_path(self.workdir, self.settings)
        if not registry.is_file():
            raise FeatureStoreError(
                f"{registry}: no Feast registry; run `starling features materialize {workdir}` first"
            )
        self.store = get_feature_store(self.workdir, self.settings)
        try:
            service = self.store.get_feature_service(RANKING_SERVICE)
        except FeatureServiceNotFoundException as exc:
            raise FeatureStoreError(
                f"{registry}: {exc}; run `starling features materialize {workdir}` first"
            ) from exc
        #: feature view -> feature references ("view:feature") selected by the service
        self.refs = {
            projection.name_to_use(): [f"{projection.name_to_use()}:{f.name}" for f in projection.features]
            for projection in service.feature_view_projections
        }

    def read(self, user_ids: list[int], movie_ids: list[int]) -> dict[str, list[dict[str, Any]]]:
        with _online_store_errors(self.workdir, self.settings):
            return {
                "users": self._read_view(USER_VIEW, user_ids),
                "movies": self._read_view(MOVIE_VIEW, movie_ids),
            }

    def _read_view(self, view: str, ids: list[int]) -> list[dict[str, Any]]:
        from feast.protos.feast.serving.ServingService_pb2 import FieldStatus

        if not ids:
            return []
        join_key = VIEW_FILES[view][0]
        refs = self.refs[view]
        response = self.store.get_online_features(
            features=refs, entity_rows={join_key: np.asarray(ids, dtype=np.int64).tolist()}
        )
        names = list(response.proto.metadata.feature_names.val)
        feature_names = [ref.split(":", 1)[1] for ref in refs]
        statuses = np.asarray(response.proto.results[names.index(feature_names[0])].statuses)
        table = response.to_arrow().append_column("found", pa.array(statuses != FieldStatus.NOT_FOUND))
        return table.select([join_key, "found", *feature_names]).to_pylist()


def read_online_features(
    workdir: Path, user_ids: list[int], movie_ids: list[int], settings: Settings | None = None
) -> dict[str, list[dict[str, Any]]]:
    """One-off read of users' and movies' online features (see :class:`OnlineFeatures` for the format)."""
    return OnlineFeatures(workdir, settings).read(user_ids, movie_ids)
