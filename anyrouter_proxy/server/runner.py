"""Running the app: event loop, logging, listen, drain on SIGTERM (SPEC §2)."""

from __future__ import annotations

import asyncio
import logging
import sys

from aiohttp import web

from ..config.model import Config
from .app import create_app

log = logging.getLogger("anyrouter_proxy")


def setup_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def serve(config: Config, *, host: str | None = None, port: int | None = None,
          log_level: str | None = None) -> int:
    setup_logging(log_level or config.server.log_level)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    host = host or config.server.host
    port = port if port is not None else config.server.port
    app = create_app(config)
    web.run_app(
        app, host=host, port=port,
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        shutdown_timeout=config.server.shutdown_grace_s,
        access_log=None,
        print=lambda _: log.info("AnyRouter proxy listening on http://%s:%d", host, port),
    )
    return 0
