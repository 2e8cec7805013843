"""Running the app: event loop, logging, listen, drain on SIGTERM (SPEC §2)."""

from __future__ import annotations

import asyncio
import logging

from aiohttp import web

from ..config.model import Config
from ..logs import setup_logging
from .app import create_app

log = logging.getLogger("anyrouter_proxy")


def serve(config: Config, *, host: str | None = None, port: int | None = None,
          log_level: str | None = None, log_format: str | None = None) -> int:
    setup_logging(log_level or config.server.log_level, log_format or config.server.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        pass
    else:
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    host = host or config.server.host
    port = port if port is not None else config.server.port
    app = create_app(config, reload_signals=True)
    web.run_app(
        app, host=host, port=port,
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        shutdown_timeout=config.server.shutdown_grace_s,
        access_log=None,
        print=lambda _: log.info("AnyRouter proxy listening on http://%s:%d", host, port),
    )
    return 0
