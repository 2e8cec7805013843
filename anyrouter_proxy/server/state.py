"""Typed keys for what hangs on the app and the request (aiohttp: no singletons)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.typedefs import Handler

from ..config.model import KeyConfig

if TYPE_CHECKING:
    from ..batch import BatchRunner
    from ..gateway import Gateway, ProxyRequest
    from ..limits.ratelimit import Limiter
    from ..logs import AccessLog
    from ..metrics import Metrics
    from ..storage.store import Store

@dataclass(slots=True)
class Lifecycle:
    """Mutable after start-up (an aiohttp app's own mapping is frozen by then)."""

    draining: bool = False


@dataclass(slots=True)
class ReloadStatus:
    """When the config was loaded, and the last reload's outcome (for the dashboard)."""

    loaded_at: float = field(default_factory=time.time)
    last_reload_at: float | None = None
    accepted: bool | None = None
    problems: tuple[str, ...] = ()


GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
STORE: web.AppKey[Store] = web.AppKey("store")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
BATCHES: web.AppKey[BatchRunner] = web.AppKey("batches")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")
LIFECYCLE: web.AppKey[Lifecycle] = web.AppKey("lifecycle", Lifecycle)
RELOADS: web.AppKey[ReloadStatus] = web.AppKey("reloads", ReloadStatus)
# The proxied POST routes by path, each inside the app's middlewares (server/lane.py).
LANE_ROUTES: web.AppKey[dict[str, Handler]] = web.AppKey("lane_routes", dict)

@dataclass(slots=True)
class RequestContext:
    """What one request learns on its way through, for the access line and the headers
    every answer carries: one object on the request rather than three keys (each lookup
    of a missing key costs an exception)."""

    key: KeyConfig | None = None
    trace_id: str | None = None
    proxied: ProxyRequest | None = None  # a proxied request, once it has a generation id


CONTEXT: web.RequestKey[RequestContext] = web.RequestKey("context", RequestContext)


def context(request: web.Request) -> RequestContext:
    """The request's context (the gateway middleware gives every request one)."""
    try:
        return request[CONTEXT]
    except KeyError:
        ctx = request[CONTEXT] = RequestContext()
        return ctx
