"""Running the app: event loop, logging, listen, drain on SIGTERM (SPEC §2)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from aiohttp import web

from ..config.model import Config
from ..logs import setup_logging
from ..usage_store import StoreError
from .app import create_app
from .protocol import answer_protocol_errors_as_envelopes
from .state import LIFECYCLE

log = logging.getLogger("anyrouter_proxy")


def serve(config: Config, *, host: str | None = None, port: int | None = None,
          log_level: str | None = None, log_format: str | None = None) -> int:
    setup_logging(log_level or config.server.log_level, log_format or config.server.log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        runner = asyncio.run
    else:
        runner = uvloop.run
    host = host or config.server.host
    port = port if port is not None else config.server.port
    json_lines = (log_format or config.server.log_format) == "json"
    try:
        runner(_serve(config, host, port, json_lines))
    except OSError as exc:  # the address is taken, or not ours to bind
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    except StoreError as exc:  # an unusable usage database: say so, no traceback
        log.error("cannot start: %s", exc)
        return 1
    return 0


async def _serve(config: Config, host: str, port: int, json_lines: bool) -> None:
    app = create_app(config, reload_signals=True, json_access_log=json_lines)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        shutdown_timeout=config.server.shutdown_grace_s,
        access_log=None,
    )
    await runner.setup()
    assert runner.server is not None
    answer_protocol_errors_as_envelopes(runner.server)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        log.info("AnyRouter proxy listening on http://%s:%d", host, port)
        await stop.wait()
        app[LIFECYCLE].draining = True  # answers from now on close their connection
        # Drain: the listener closes, in-flight requests get the grace period, then the
        # app's cleanup flushes the usage log.
        log.info("draining (up to %g s)", config.server.shutdown_grace_s)
    finally:
        await runner.cleanup()
        log.info("stopped")
        sys.stdout.flush()
