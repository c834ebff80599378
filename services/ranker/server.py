"""Ranker entry point: a KServe ModelServer (v2 gRPC + REST) serving :class:`RankerModel`.

Two departures from KServe's defaults, both for safety:

- both ports bind ``STARLING_HOST`` (127.0.0.1 locally; 0.0.0.0 only in the container), where KServe binds
  every interface;
- a payload that is not a valid message is answered INVALID_ARGUMENT (services/common/decoding.py);
- server reflection v1 and v1alpha (KServe has none), and model metadata listing the inputs and outputs;
- the model repository extension (``POST /v2/repository/models/<name>/load|unload`` and the gRPC
  ``RepositoryModelLoad/Unload``) is refused: the ranker serves what ``starling train`` published and reloads
  by itself, so nobody can unload it over the network.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent import futures

from grpc import aio
from kserve import ModelServer
from kserve.model_repository import ModelRepository
from kserve.model_server import FASTAPI_APP_IMPORT_STRING
from kserve.model_server import args as kserve_args
from kserve.protocol.grpc import grpc_predict_v2_pb2_grpc
from kserve.protocol.grpc.interceptors import ExceptionToStatusInterceptor, LoggingInterceptor
from kserve.protocol.grpc.server import GRPCServer
from kserve.protocol.grpc.servicer import InferenceServicer
from kserve.protocol.model_repository_extension import ModelRepositoryExtension
from kserve.protocol.rest.server import RESTServer

import starling
from services.common.decoding import MalformedRequestInterceptor
from services.common.experiments import ExperimentsConfigError, ExperimentsWatcher, pinned_versions
from services.common.jsonlog import configure_logging
from services.common.models import ranker_model_name
from services.common.observability import BUILD_INFO
from services.common.reflection import enable_reflection
from services.common.server import MAX_MESSAGE_BYTES
from services.ranker.model import RankerModel, torch_threads
from starling.config import Settings, get_settings

INFERENCE_SERVICE = "inference.GRPCInferenceService"
log = logging.getLogger("starling.ranker")


class RepositoryControlDisabled(NotImplementedError):
    """Answered UNIMPLEMENTED (gRPC) / 501 (REST) by KServe's own error handlers."""

    def __init__(self, model_name: str) -> None:
        self.reason = (
            f"model repository control is disabled: {model_name!r} serves the version `starling train` "
            "published and reloads by itself when a new one is published"
        )
        super().__init__(self.reason)


class PublishedModelsOnly(ModelRepositoryExtension):
    """The repository extension without load/unload: the index (read-only) still answers."""

    async def load(self, model_name: str) -> None:
        raise RepositoryControlDisabled(model_name)

    async def unload(self, model_name: str) -> None:
        raise RepositoryControlDisabled(model_name)


class BoundGRPCServer(GRPCServer):
    """KServe's v2 gRPC server, listening on one interface instead of all of them."""

    def __init__(self, host: str, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._host = host

    async def start(self, max_workers: int) -> None:
        self._server = aio.server(
            futures.ThreadPoolExecutor(max_workers=max_workers),
            interceptors=(
                MalformedRequestInterceptor(),
                LoggingInterceptor(),
                ExceptionToStatusInterceptor(),
            ),
            options=[
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 0),
            ],
        )
        grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            InferenceServicer(self._data_plane, self._model_repository_extension), self._server
        )
        enable_reflection(self._server, [INFERENCE_SERVICE])
        address = f"{self._host}:{self._port}"
        if self._server.add_insecure_port(address) == 0:
            raise OSError(f"ranker: could not bind {address}")
        await self._server.start()
        await self._server.wait_for_termination()


class RankerServer(ModelServer):
    """ModelServer with one REST worker and the gRPC server, both bound to ``host``, repository control off."""

    def __init__(self, host: str, **kwargs) -> None:
        super().__init__(**kwargs)
        self.host = host
        self.model_repository_extension = PublishedModelsOnly(model_registry=self.registered_models)

    def start(self, models: list[RankerModel]) -> None:
        self._register_and_check_atleast_one_model_is_ready(models)
        self._rest_server = RESTServer(
            FASTAPI_APP_IMPORT_STRING,
            self.dataplane,
            self.model_repository_extension,
            self.http_port,
            workers=1,
            grace_period=self.grace_period,
            event_loop=self.event_loop,
            timeout_keep_alive=self.timeout_keep_alive,
        )
        self._rest_server.config.host = self.host
        self.servers.append(self._rest_server.start())
        self._grpc_server = BoundGRPCServer(
            self.host,
            self.grpc_port,
            self.dataplane,
            self.model_repository_extension,
            kwargs=vars(kserve_args),
            grace_period=self.grace_period,
        )
        self.servers.append(self._grpc_server.start(self.max_threads))
        self.setup_event_loop()
        self.register_signal_handler()
        asyncio.run(self._serve())


class PinnedVersions:
    """The model versions experiment arms pin (services/common/experiments.py, ``ranker_version``), each
    served beside the published model as ``<ranker name>-<version>``; the experiments file is followed, so a
    new arm's version is loaded and a dropped one unloaded without a restart."""

    def __init__(self, repository: ModelRepository, settings: Settings) -> None:
        self.repository = repository
        self.settings = settings
        self.watcher: ExperimentsWatcher | None = None
        try:
            self.watcher = ExperimentsWatcher(settings.experiments, settings.workdir)
        except ExperimentsConfigError as exc:  # recommend refuses it too; the published model still serves
            log.error("experiments file rejected; no pinned model versions", extra={"error": str(exc)})
        self.loaded: dict[str, RankerModel] = {}
        self._stop = threading.Event()

    def models(self) -> list[RankerModel]:
        """Build the pinned versions of the current experiments (called once, before serving)."""
        self._sync(register=False)
        return list(self.loaded.values())

    def _sync(self, register: bool = True) -> None:
        wanted = pinned_versions(self.watcher.config) if self.watcher else set()
        for version in sorted(wanted - set(self.loaded)):
            model = RankerModel(
                ranker_model_name(self.settings.ranker_model_name, version),
                self.settings.workdir,
                self.settings,
                version=version,
            )
            try:
                model.load()
            except Exception:
                log.exception("pinned model version failed to load", extra={"version": version})
                continue
            self.loaded[version] = model
            if register:
                self.repository.update(model)
            log.info("pinned model version loaded", extra={"version": version, "model": model.name})
        for version in sorted(set(self.loaded) - wanted):
            model = self.loaded.pop(version)
            self.repository.unload(model.name)
            log.info("pinned model version unloaded", extra={"version": version})

    def follow(self) -> None:
        """Forever (a daemon thread): re-read the experiments file and load or unload versions."""
        while self.watcher is not None and not self._stop.wait(self.settings.experiments_poll_s):
            try:
                if self.watcher.poll():
                    self._sync()
            except Exception:
                log.exception("following the experiments file failed")


def main() -> None:
    settings = get_settings()
    configure_logging("ranker")
    # KServe logs two INFO lines per request (method and latency); latency lives in /metrics instead.
    for name in ("kserve", "kserve.trace"):
        logging.getLogger(name).setLevel(logging.WARNING)
    torch_threads(settings)
    BUILD_INFO.labels("ranker", starling.__version__).set(1)
    model = RankerModel(settings.ranker_model_name, settings.workdir, settings)
    model.load()
    server = RankerServer(
        settings.host,
        http_port=settings.ranker_http_port,
        grpc_port=settings.ranker_grpc_port,
        workers=1,
        enable_docs_url=False,
        enable_latency_logging=False,
    )
    pinned = PinnedVersions(server.registered_models, settings)
    pinned_models = pinned.models()
    threading.Thread(target=pinned.follow, name="ranker-pinned-versions", daemon=True).start()
    server.start([model, *pinned_models])


if __name__ == "__main__":
    main()
