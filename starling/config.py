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
    workdir: Path = Field(
        Path("work"), description="Default working directory for data, features and models."
    )
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
    features_engine: str = Field(
        "polars", description="Default engine of `features build`: polars (one process) or spark."
    )
    spark_master: str = Field(
        "local[2]", description="Spark master of `features build --engine spark` when --master is not given."
    )
    spark_driver_memory: str = Field(
        "2g", description="spark.driver.memory of the Spark sessions `features build` starts itself."
    )
    spark_shuffle_partitions: int = Field(
        8,
        description="spark.sql.shuffle.partitions of the Spark sessions `features build` starts itself "
        "(under spark-submit the submitted configuration decides).",
    )

    # --- Feast --------------------------------------------------------------------------------------------
    feature_repo: Path = Field(REPO_ROOT / "feature_repo", description="Feast repository directory.")
    online_store: Literal["sqlite", "redis"] = "sqlite"
    redis_connection_string: str = "127.0.0.1:6379"
    feast_registry: Path | None = Field(None, description="Registry path; default WORKDIR/feast/registry.db.")
    feast_online_path: Path | None = Field(
        None, description="sqlite online store path; default WORKDIR/feast/online.db."
    )
    feast_project: str = Field(
        "starling", description="Feast project; namespaces registry objects and online-store keys."
    )

    # --- training (training/loop.py, training/train.py) -----------------------------------------------------
    progress: bool = Field(
        True,
        description="Progress of long steps on stderr: a tqdm bar on a terminal, one line per step otherwise; 0 turns both off.",
    )
    train_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Device for training: CUDA when available (auto), or forced."
    )

    # --- services -----------------------------------------------------------------------------------------
    host: str = Field("127.0.0.1", description="Interface the gRPC services bind to (0.0.0.0 in Kubernetes).")
    recommend_port: int = Field(50051, description="Public RecommendService port.")
    admin_port: int = Field(
        50060, description="Recommend's admin port: CatalogService with its writes (UpsertMovie); not public."
    )
    candidates_port: int = 50052
    recall_port: int = 50053
    rerank_port: int = 50054
    ranker_grpc_port: int = Field(8081, description="KServe ranker, Open Inference Protocol v2 over gRPC.")
    ranker_http_port: int = Field(8080, description="KServe ranker, v2 REST.")
    metrics_port: int = Field(
        0, description="Prometheus /metrics port of this process; 0 = gRPC port + 1000."
    )
    grpc_workers: int = Field(0, description="Max concurrent RPCs per service; 0 = unlimited.")
    max_in_flight: int = Field(
        64,
        description="Calls a service handles at once; beyond it RESOURCE_EXHAUSTED at once (0 = no limit).",
    )
    shutdown_grace_s: float = Field(5.0, description="On SIGTERM: stop accepting, let in-flight RPCs finish.")
    supervise: bool = Field(
        True, description="`starling up`'s supervisor restarts a service that exits (0: it only watches)."
    )
    log_level: str = "INFO"
    log_format: Literal["json", "text"] = "json"
    milvus_uri: str = Field(
        "", description="Milvus server URI, or empty for a milvus-lite file WORKDIR/milvus.db."
    )
    recall_vector_search: Literal["auto", "milvus", "exact"] = Field(
        "auto",
        description="How recall finds the nearest item vectors: milvus (the vector index: milvus-lite, or the "
        "server at milvus_uri), exact (an inner product with every vector, in memory) or auto: exact while the "
        "catalog has at most recall_exact_max_movies movies and no Milvus server is configured, else milvus.",
    )
    recall_exact_max_movies: int = Field(
        50_000, description="Largest catalog that recall_vector_search=auto searches exactly, in memory."
    )
    recall_embedding: Literal["als"] = Field(
        "als", description="Item vectors in Milvus for the embedding channel: the recall state's ALS factors."
    )
    recall_size: int = Field(500, description="Candidates recall hands to the ranker.")
    candidates_timeout_ms: int = Field(100, description="Per-stage deadline of the recommend orchestrator.")
    recall_timeout_ms: int = 150
    ranker_timeout_ms: int = 200
    rerank_timeout_ms: int = 100
    candidates_target: str = Field("", description="host:port of CandidateService; default 127.0.0.1:port.")
    recall_target: str = ""
    rerank_target: str = ""
    ranker_target: str = Field("", description="host:port of the ranker's v2 gRPC endpoint.")
    ranker_refresh_s: float = Field(
        5.0, description="How often the ranker checks for a new model or features."
    )
    ranker_device: str = Field("auto", description="auto (CUDA when present), cpu or cuda.")
    ranker_torch_threads: int = Field(1, description="torch intra-op threads of the ranker (CPU).")
    ranker_max_movies: int = Field(2000, description="Most movies one ranker request may score.")
    ranker_model_name: str = Field("starling-ranker", description="KServe model name of the ranker.")
    ranker_batching: Literal["auto", "on", "off"] = Field(
        "auto",
        description="Batching under load: requests that queue while a forward pass runs (in a worker thread) "
        "are scored together in the next (services/ranker/batching.py). auto = on CUDA only: on CPU it gained "
        "no throughput and cost 6-25% more CPU per request (README, bench ranker). off = every request alone, "
        "on the event loop.",
    )
    ranker_batch_max_rows: int = Field(
        8192, ge=1, description="Most rows in one batched forward pass (a request alone may have more)."
    )
    ranker_user_cache_size: int = Field(
        100_000,
        description="Users whose online features the ranker keeps between requests (services/ranker/"
        "user_cache.py); 0 = read Feast on every request.",
    )
    ranker_user_cache_ttl_s: float = Field(
        30.0,
        description="Longest time the ranker serves a user's cached online features without reading them.",
    )
    event_poll_s: float = Field(0.2, description="How often services read new feedback from the event log.")
    event_bus: str = Field(
        "",
        description="Where feedback and catalog events are appended and followed (starling/eventbus.py): empty "
        "= the file log under WORKDIR/events (the embedded default, one recommend process); "
        "redis://[:password@]host:port/db (or rediss://) = Redis Streams shared by every replica, movie ids "
        "from one Redis counter.",
    )
    event_bus_prefix: str = Field(
        "starling:",
        description="Key prefix of the event bus's streams and id counters in Redis (one per deployment "
        "sharing a Redis).",
    )
    event_bus_maxlen: int = Field(
        0,
        ge=0,
        description="Trim each Redis stream to about this many entries (one entry per append: a RecordFeedback "
        "batch or an upsert); 0 = keep every event, as the file log does (restarts and training read them all).",
    )
    max_feedback_future_s: float = Field(
        300.0, description="Feedback timestamps may be at most this far ahead."
    )
    rerank_rules: Path | None = Field(
        None, description="Re-ranking rules YAML; default services/rerank/rules.yaml."
    )
    content_vectors: bool = Field(
        True,
        description="`starling train` writes a language-model vector of every catalog movie's text into the "
        "artifact (starling/content.py).",
    )
    content_on_upsert: bool = Field(
        True,
        description="UpsertMovie encodes the movie's text with the language model (when the published "
        "version has text vectors), so recall places a new movie by its text neighbours and genres.",
    )
    content_encoder_wait_s: float = Field(
        60.0, description="How long an UpsertMovie waits for the text encoder still loading at start-up."
    )
    models_cache: Path | None = Field(
        None,
        description="Where packaged model weights are extracted (the text encoder); default "
        "~/.cache/starling/models.",
    )
    experiments: Path | None = Field(
        None,
        description="Experiments YAML (A/B and interleaving arms), re-read on change; default "
        "services/recommend/experiments.yaml.",
    )
    experiments_poll_s: float = Field(1.0, description="How often recommend checks the experiments file.")
    exposure_log: bool = Field(
        True, description="Append every served list to WORKDIR/events/exposures (experiment reports, replay)."
    )
    exposure_fsync: bool = Field(
        False,
        description="fsync each exposure record (survives a machine crash, not only a killed process).",
    )
    exposure_segment_mb: int = Field(64, description="Rotate an exposure log file past this size.")
    exposure_max_segments: int = Field(64, description="Exposure log files kept (the oldest are deleted).")

    # --- authentication (starling/auth.py, services/common/auth.py) -------------------------------------------
    api_keys_file: Path | None = Field(
        None, description="Hashed API keys the services accept; default WORKDIR/secrets/api_keys.json."
    )
    api_token: str = Field(
        "", description="Bearer token this client sends; default WORKDIR/secrets/api-token."
    )
    auth_reads: bool = Field(
        False, description="Require a token (scope `read`) for reads too, not only writes."
    )

    # --- web (services/web: HTTP gateway and pages) --------------------------------------------------------
    web_port: int = Field(8088, description="HTTP port of the web gateway (pages, /api, /healthz, /metrics).")
    web_recommend_target: str = Field(
        "",
        description="host:port of the Recommend/Catalog services for the gateway; default 127.0.0.1:recommend_port.",
    )
    web_timeout_s: float = Field(5.0, description="Deadline of each gRPC call the web gateway makes.")
    web_open_sign_in: bool = Field(
        True, description="POST /api/session signs a browser in as any user (the demo has no accounts)."
    )
    web_session_secret: str = Field(
        "", description="HMAC key of session cookies (shared by replicas); empty = random per process."
    )
    web_allowed_origins: str = Field(
        "", description="Comma-separated origins, besides the gateway's own, allowed to write (CORS-less)."
    )


def stage_target(settings: Settings, stage: Literal["candidates", "recall", "rerank", "ranker"]) -> str:
    """Where the recommend orchestrator reaches a stage: the configured target, else the local default port."""
    configured = getattr(settings, f"{stage}_target")
    port = settings.ranker_grpc_port if stage == "ranker" else getattr(settings, f"{stage}_port")
    return configured or f"127.0.0.1:{port}"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
