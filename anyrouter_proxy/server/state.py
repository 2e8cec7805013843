"""Typed keys for what hangs on the app and the request (aiohttp: no singletons)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from ..config.model import KeyConfig

if TYPE_CHECKING:
    from ..batch import BatchRunner
    from ..gateway import Gateway, ProxyRequest
    from ..logs import AccessLog
    from ..metrics import Metrics
    from ..ratelimit import Limiter
    from ..usage_store import UsageStore

GATEWAY: web.AppKey[Gateway] = web.AppKey("gateway")
LIMITER: web.AppKey[Limiter] = web.AppKey("limiter")
STORE: web.AppKey[UsageStore] = web.AppKey("store")
METRICS: web.AppKey[Metrics] = web.AppKey("metrics")
BATCHES: web.AppKey[BatchRunner] = web.AppKey("batches")
ACCESS_LOG: web.AppKey[AccessLog] = web.AppKey("access_log")

# Per-request values.
KEY: web.RequestKey[KeyConfig] = web.RequestKey("key", KeyConfig)
TRACE_ID: web.RequestKey[str] = web.RequestKey("trace_id", str)
PROXIED: web.RequestKey[ProxyRequest] = web.RequestKey("proxied")
