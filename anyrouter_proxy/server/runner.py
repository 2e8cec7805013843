"""Running the app: event loop, logging, listen, drain on SIGTERM (docs/operations.md)."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from collections.abc import Callable

from aiohttp import web

from ..config.model import Config
from ..logs import setup_logging
from ..storage.store import StoreError
from .app import create_app
from .lane import open_lane
from .protocol import guard_connections
from .state import GATEWAY, LIFECYCLE

log = logging.getLogger("anyrouter_proxy")

# Python's default (700) is below the container objects one core's worth of requests in
# flight holds at once, so the collector ran thousands of times a second under load and
# full collections paused everything for 13-20 ms (bench chat_c64: p99). Requests make
# almost no cyclic garbage; what they allocate is freed by reference counting.
GC_GEN0_THRESHOLD = 7000


Announce = Callable[[str, int], None]  # told the address once the listener is open


def serve(config: Config, *, host: str | None = None, port: int | None = None,
          log_level: str | None = None, log_format: str | None = None,
          on_listening: Announce | None = None) -> int:
    # The flag, else the config, else readable lines on a terminal and JSON lines elsewhere.
    log_format = log_format or config.server.log_format or (
        "text" if sys.stdout.isatty() else "json")
    setup_logging(log_level or config.server.log_level, log_format)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        runner = asyncio.run
    else:
        runner = uvloop.run
    host = host or config.server.host
    port = port if port is not None else config.server.port
    try:
        runner(_serve(config, host, port, log_format == "json", on_listening))
    except OSError as exc:  # the address is taken, or not ours to bind
        log.error("cannot listen on %s:%d: %s", host, port, exc)
        return 1
    except StoreError as exc:  # an unusable usage database: say so, no traceback
        log.error("cannot start: %s", exc)
        return 1
    return 0


def _settle_gc() -> None:
    """Once started: what start-up built lives as long as the process, so it leaves the
    collector's view (gc.freeze) and full collections scan only what requests allocate."""
    gc.collect()
    gc.freeze()
    _, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, gen1, gen2)


async def _serve(config: Config, host: str, port: int, json_lines: bool,
                 on_listening: Announce | None) -> None:
    app = create_app(config, reload_signals=True, json_access_log=json_lines)
    runner = web.AppRunner(
        app,
        handler_cancellation=True,  # a client that disconnects cancels its upstream call
        shutdown_timeout=config.server.shutdown_grace_s,
        access_log=None,
    )
    await runner.setup()
    assert runner.server is not None
    guard_connections(runner.server, lambda: app[GATEWAY].config.server)
    open_lane(runner.server, app)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024)
        await site.start()
        _settle_gc()
        if on_listening is not None:  # with the port bound (port 0 picks one)
            on_listening(host, runner.addresses[0][1] if runner.addresses else port)
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
