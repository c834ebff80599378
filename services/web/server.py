"""Entry point of the web gateway: ``python -m services.web.server``.

Serves the pages and /api on ``STARLING_HOST:STARLING_WEB_PORT`` (default 127.0.0.1:8088) in front of the
RecommendService/CatalogService at ``STARLING_WEB_RECOMMEND_TARGET`` (default 127.0.0.1:recommend_port).
JSON logs; on SIGTERM/SIGINT it stops accepting and lets in-flight requests finish (shutdown_grace_s).
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

import starling
from services.common.jsonlog import configure_logging
from services.common.observability import BUILD_INFO
from services.web.app import create_app
from services.web.security import WebSecurity
from starling.auth import client_token, keys_file
from starling.config import Settings, get_settings


def recommend_target(settings: Settings) -> str:
    return settings.web_recommend_target or f"127.0.0.1:{settings.recommend_port}"


async def serve_until_signalled() -> None:
    log = configure_logging("web")
    settings = get_settings()
    BUILD_INFO.labels("web", starling.__version__).set(1)
    target = recommend_target(settings)
    security = WebSecurity.create(
        settings.web_session_secret,
        keys_file(settings),
        settings.web_open_sign_in,
        settings.web_allowed_origins,
    )
    app = create_app(target, security, timeout_s=settings.web_timeout_s, token=client_token(settings))
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=settings.shutdown_grace_s)
    await runner.setup()
    try:
        await web.TCPSite(runner, settings.host, settings.web_port).start()
    except OSError as exc:
        await runner.cleanup()
        log.error("cannot start: %s", exc)
        raise SystemExit(1) from exc
    log.info("serving", extra={"port": settings.web_port, "backend": target})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("draining", extra={"grace_s": settings.shutdown_grace_s})
    await runner.cleanup()
    log.info("stopped")


def main() -> None:
    asyncio.run(serve_until_signalled())


if __name__ == "__main__":
    main()
