"""Hot reload (SIGHUP, or a change of the file when `reload.watch` is on).

The new file is validated fully before anything changes; a valid one is swapped in with
one assignment (requests in flight keep the config they started with), an invalid one is
logged, audited and counted, and the running config stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from aiohttp import web

from ..config.loader import ConfigError, load_config
from .state import GATEWAY, METRICS, RELOADS, STORE

log = logging.getLogger(__name__)


def reload_config(app: web.Application) -> bool:
    """Load the config file again; True when the new one is in force."""
    gateway, metrics, store = app[GATEWAY], app[METRICS], app[STORE]
    old = gateway.config
    if old.path is None:
        return False
    try:
        new = load_config(old.path)
    except ConfigError as exc:
        reasons = [p.render(exc.source) for p in exc.problems]
        log.error("config reload rejected, the running config stays:\n%s", "\n".join(reasons))
        metrics.reloads.labels("rejected").inc()
        store.audit("config_reload_rejected", detail={"problems": reasons[:20]})
        _note(app, accepted=False, problems=tuple(reasons[:20]))
        return False
    changed = [name for name, before, after in (
        ("server.host", old.server.host, new.server.host),
        ("server.port", old.server.port, new.server.port),
        ("server.log_level", old.server.log_level, new.server.log_level),
        ("server.log_format", old.server.log_format, new.server.log_format),
        ("server.shutdown_grace_s", old.server.shutdown_grace_s, new.server.shutdown_grace_s),
        ("reload", old.reload, new.reload),
        ("storage", old.storage, new.storage),
        ("state", old.state, new.state)) if before != after]
    if changed:
        log.warning("config reload: %s changed and take effect at the next restart",
                    ", ".join(changed))
    gateway.reconfigure(new)
    gateway.http.retire(new.providers.values())
    metrics.reloads.labels("accepted").inc()
    metrics.config_loaded.set(time.time())
    store.audit("config_reloaded", detail={"providers": len(new.providers),
                                           "models": len(new.models), "keys": len(new.keys)})
    log.info("config reloaded from %s", old.path)
    _note(app, accepted=True)
    return True


def _note(app: web.Application, *, accepted: bool, problems: tuple[str, ...] = ()) -> None:
    status = app.get(RELOADS)
    if status is None:  # an app made without create_app (tests of reload alone)
        return
    now = time.time()
    status.last_reload_at, status.accepted, status.problems = now, accepted, problems
    if accepted:
        status.loaded_at = now


async def _watch(app: web.Application, path: Path, interval_s: float) -> None:
    def stamp() -> tuple[float, int] | None:
        try:
            stat = path.stat()
        except OSError:
            return None
        return stat.st_mtime, stat.st_size

    last = stamp()
    while True:
        await asyncio.sleep(interval_s)
        current = stamp()
        if current is not None and current != last:
            last = current
            reload_config(app)


def reload_context(*, signals: bool, watch: bool, interval_s: float
                   ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx entry: SIGHUP handler and/or file watcher for the app's lifetime."""

    async def context(app: web.Application) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        if signals:
            loop.add_signal_handler(signal.SIGHUP, reload_config, app)
        path = app[GATEWAY].config.path
        watcher = asyncio.create_task(_watch(app, path, interval_s)) \
            if watch and path is not None else None
        yield
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
        if signals:
            loop.remove_signal_handler(signal.SIGHUP)

    return context
