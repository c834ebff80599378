"""Ranker entry point: a KServe ModelServer (v2 gRPC + REST) serving :class:`RankerModel`."""

from __future__ import annotations

import logging

from kserve import ModelServer

import starling
from services.common.jsonlog import configure_logging
from services.common.observability import BUILD_INFO
from services.ranker.model import RankerModel, torch_threads
from starling.config import get_settings


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
    ModelServer(
        http_port=settings.ranker_http_port,
        grpc_port=settings.ranker_grpc_port,
        workers=1,
        enable_docs_url=False,
        enable_latency_logging=False,
    ).start([model])


if __name__ == "__main__":
    main()
