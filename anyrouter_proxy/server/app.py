"""create_app(config): the aiohttp application, its routes and its resources."""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator

from aiohttp import web
from aiohttp.typedefs import Handler

from ..accounting import Ledger
from ..batch import BatchRunner
from ..config.model import Config
from ..gateway import Gateway
from ..limits.budget import PERIODS, window
from ..limits.credits import CreditLedger
from ..limits.quota import MemoryQuota, Quota
from ..limits.ratelimit import Limiter
from ..logs import AccessLog
from ..metrics import Metrics
from ..providers.mock import MockUpstream
from ..storage.backends import build_store
from ..storage.batches import BatchStore
from ..storage.store import Store
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, MESSAGES, RESPONSES
from ..upstream import HttpUpstream, Upstream
from . import batch_handlers as batch
from . import info_handlers as info
from . import responses_handlers as responses
from .activity_handlers import activity
from .dashboard.routes import setup_dashboard
from .middlewares import gateway_middleware
from .proxy_handlers import count_tokens, proxy_handler
from .reload import reload_context
from .state import (
    ACCESS_LOG,
    BATCHES,
    GATEWAY,
    LANE_ROUTES,
    LIFECYCLE,
    LIMITER,
    METRICS,
    RELOADS,
    STORE,
    Lifecycle,
    ReloadStatus,
)

API_PREFIXES = ("/api/v1", "/v1")


def create_app(config: Config, *, http: Upstream | None = None,
               reload_signals: bool = False, json_access_log: bool = False) -> web.Application:
    """The whole proxy for `config`. `http` replaces the outbound seam (tests);
    `reload_signals` installs the SIGHUP handler and `json_access_log` the direct JSON
    access log (the CLI's server does both)."""
    app = web.Application(middlewares=[gateway_middleware],
                          client_max_size=config.server.max_body_bytes)
    store = build_store(config.storage)
    metrics = Metrics()
    limiter = Limiter(config)
    upstream = http or HttpUpstream()
    local_quota = MemoryQuota(limiter, CreditLedger())
    quota: Quota = local_quota
    if config.state.backend == "redis":  # shared by replicas; this process's as fallback
        from ..limits.redis_quota import RedisQuota
        quota = RedisQuota(config, local_quota, spend_source=store.spend_snapshot)
    gateway = Gateway(config, http=upstream, mock=MockUpstream(), quota=quota,
                      ledger=Ledger(store, metrics))
    batches = BatchRunner(gateway, BatchStore(store))
    app[GATEWAY], app[LIMITER], app[STORE], app[METRICS] = gateway, limiter, store, metrics
    app[BATCHES] = batches
    app[ACCESS_LOG] = access_log = AccessLog(json_access_log)

    async def resources(app: web.Application) -> AsyncIterator[None]:
        await gateway.open()
        await store.open()
        try:
            # Requests an earlier process died with are charged before anything is read.
            interrupted = await store.recover_interrupted()
            await gateway.quota.load_spend(await store.spend_by_key())  # never refills a key
            await gateway.quota.charge_interrupted(interrupted)
            await _load_period_spend(gateway.quota, store)
        except BaseException:
            await store.close()  # its threads must not keep a failed start alive
            raise
        store.start_retention(config.storage.retention_days)
        await batches.resume(gateway.config.keys)
        yield
        await batches.close(gateway.config.server.shutdown_grace_s)
        await upstream.close()
        await gateway.close()
        await store.close()
        await gateway.quota.close()
        access_log.flush()

    app.cleanup_ctx.append(resources)

    lifecycle = app[LIFECYCLE] = Lifecycle()
    app[RELOADS] = ReloadStatus()

    async def drain_begins(app: web.Application) -> None:
        lifecycle.draining = True
        batches.stop_starting()

    async def close_while_draining(request: web.Request, response: web.StreamResponse) -> None:
        if lifecycle.draining:  # keep-alive clients must not reuse a closing connection
            response.force_close()
            response.headers["Connection"] = "close"  # headers are already prepared

    app.on_shutdown.append(drain_begins)
    app.on_response_prepare.append(close_while_draining)
    app.cleanup_ctx.append(reload_context(signals=reload_signals, watch=config.reload.watch,
                                          interval_s=config.reload.interval_s))
    _add_routes(app)
    return app


def _within_middlewares(app: web.Application, handler: Handler) -> Handler:
    """`handler` as aiohttp calls it: inside the app's middlewares, outermost first."""
    for middleware in reversed(app.middlewares):
        handler = functools.partial(middleware, handler=handler)
    return handler


async def _load_period_spend(quota: Quota, store: Store) -> None:
    """Each key's spend in the current day, week and month, from the usage log."""
    now = time.time()
    for period in PERIODS:
        start = window(period, now).start
        await quota.load_period_spend(period, start, await store.spend_since(start))


def _add_routes(app: web.Application) -> None:
    router = app.router
    lane = app[LANE_ROUTES] = {}
    for prefix in API_PREFIXES:
        for endpoint, path in ((CHAT, "/chat/completions"), (COMPLETIONS, "/completions"),
                               (EMBEDDINGS, "/embeddings"), (MESSAGES, "/messages"),
                               (RESPONSES, "/responses")):
            handler = proxy_handler(endpoint)
            router.add_post(prefix + path, handler)
            lane[prefix + path] = _within_middlewares(app, handler)
        router.add_get(prefix + "/responses/{response_id}", responses.get_response)
        router.add_delete(prefix + "/responses/{response_id}", responses.delete_response)
        router.add_get(prefix + "/responses/{response_id}/input_items", responses.input_items)
        router.add_post(prefix + "/messages/count_tokens", count_tokens)
        router.add_get(prefix + "/openapi.json", info.openapi)
        router.add_get(prefix + "/models", info.list_models)
        router.add_get(prefix + "/models/count", info.count_models)
        router.add_get(prefix + "/models/{model_id:.+}", info.get_model)
        router.add_get(prefix + "/providers", info.list_providers)
        router.add_get(prefix + "/health", info.health)
        router.add_get(prefix + "/credits", info.credits)
        router.add_get(prefix + "/auth/key", info.key_info)
        router.add_get(prefix + "/key", info.key_info)
        router.add_get(prefix + "/activity", activity)
        router.add_get(prefix + "/generation", info.generation)
        router.add_get(prefix + "/generation/{gen_id}", info.generation)
        router.add_post(prefix + "/batch", batch.create_batch)
        router.add_get(prefix + "/batch/{batch_id}", batch.get_batch)
        router.add_get(prefix + "/batch/{batch_id}/results", batch.batch_results)
        router.add_post(prefix + "/batch/{batch_id}/cancel", batch.cancel_batch)
    router.add_get("/health", info.health)
    router.add_get("/metrics", info.metrics)
    setup_dashboard(app)
