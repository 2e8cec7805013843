"""The read endpoints: models, providers, health, credits, key info, generation stats."""

from __future__ import annotations

import functools
import hmac
from decimal import Decimal
from importlib import resources
from typing import Any

import orjson
from aiohttp import web

from ..config.model import Config, ModelConfig
from ..config.wildcards import resolve_model
from ..deprecation import deprecation_headers, is_sunset
from ..errors import AuthenticationFailed, InvalidRequest, NotFound, ServiceUnavailable
from ..health import STATE_CODES
from .inbound import authenticate
from .state import GATEWAY, METRICS, STORE

PER_TOKENS = Decimal(1_000_000)


def json_response(data: Any, status: int = 200,
                  headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), headers=headers,
                        content_type="application/json")


def price_per_token(per_million: float | None) -> str:
    """Plain decimal notation, never exponent form (as OpenRouter writes prices)."""
    if not per_million:
        return "0"
    return _plain(Decimal(str(per_million)) / PER_TOKENS)


def _plain(value: Decimal) -> str:
    text = format(value, "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def model_object(model: ModelConfig, config: Config) -> dict[str, Any]:
    pricing = model.pricing
    prices = {"prompt": price_per_token(pricing.prompt),
              "completion": price_per_token(pricing.completion),
              "request": _plain(Decimal(str(pricing.request or 0))), "image": "0"}
    if pricing.cached_prompt is not None:
        prices["input_cache_read"] = price_per_token(pricing.cached_prompt)
    if pricing.cache_write is not None:
        prices["input_cache_write"] = price_per_token(pricing.cache_write)
    if pricing.web_search is not None:  # USD per search, as OpenRouter lists it
        prices["web_search"] = _plain(Decimal(str(pricing.web_search)))
    if pricing.reasoning is not None:
        prices["internal_reasoning"] = price_per_token(pricing.reasoning)
    owner = model.id.split("/", 1)[0] if "/" in model.id else model.routes[0].provider
    data: dict[str, Any] = {
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": owner,
        "name": model.name or model.id,
        "description": model.description or "",
        "context_length": model.context_length,
        "pricing": prices,
        "top_provider": {"context_length": model.context_length,
                         "max_completion_tokens": model.max_output_tokens,
                         "is_moderated": False},
        "providers": list(dict.fromkeys(r.provider for r in model.routes)),
    }
    if model.is_wildcard or model.wildcard is not None:
        data["wildcard"] = model.wildcard or model.id  # the entry serving ids under its prefix
    if model.deprecated is not None:
        d = model.deprecated
        data["deprecated"] = {"since": d.since.isoformat(),
                              "sunset": d.sunset.isoformat() if d.sunset else None,
                              "successor": d.successor}
    return data


def listed_models(config: Config) -> list[ModelConfig]:
    return [m for m in config.models.values() if not is_sunset(m)]


async def list_models(request: web.Request) -> web.Response:
    authenticate(request)
    config = request.app[GATEWAY].config
    return json_response({"object": "list",
                          "data": [model_object(m, config) for m in listed_models(config)]})


async def count_models(request: web.Request) -> web.Response:
    authenticate(request)
    return json_response({"data": {"count": len(listed_models(request.app[GATEWAY].config))}})


async def get_model(request: web.Request) -> web.Response:
    authenticate(request)
    config = request.app[GATEWAY].config
    model_id = request.match_info["model_id"]
    model = resolve_model(config, model_id)
    if model is None:
        raise NotFound(f"Model {model_id} does not exist", code="model_not_found")
    return json_response(model_object(model, config), headers=deprecation_headers(model))


def provider_statuses(request: web.Request) -> dict[str, dict[str, Any]]:
    gateway = request.app[GATEWAY]
    config, board = gateway.config, gateway.board
    now = board.clock()
    served: dict[str, list[str]] = {pid: [] for pid in config.providers}
    for model in config.models.values():
        for route in model.routes:
            if model.id not in served[route.provider]:
                served[route.provider].append(model.id)
    result = {}
    for pid, provider in config.providers.items():
        health = board.get(pid)
        if not gateway.has_credentials(provider):
            status = "no_credentials"
        elif not health.would_be_available(now):
            status = "circuit_open"
        else:
            status = "ok"
        result[pid] = {"id": pid, "kind": provider.kind, "status": status,
                       "models": served[pid], **health.snapshot(now),
                       "connections": {"max": provider.max_connections,
                                       "per_key": provider.connections_per_key,
                                       "in_flight": gateway.shares.in_flight(pid)}}
    return result


async def list_providers(request: web.Request) -> web.Response:
    authenticate(request)
    return json_response({"object": "list", "data": list(provider_statuses(request).values())})


async def health(request: web.Request) -> web.Response:
    providers = {pid: {"status": s["status"], "kind": s["kind"], "circuit": s["circuit"]}
                 for pid, s in provider_statuses(request).items()}
    serving = any(s["status"] == "ok" for s in providers.values())
    store = request.app[STORE]
    body: dict[str, Any] = {
        "status": "ok" if serving else "unavailable",
        "providers": providers,
        # Degraded while writes fail, and for good once a row was dropped (since start).
        "usage_log": {"status": "degraded" if store.last_error or store.dropped else "ok",
                      "queue_depth": store.queue_depth, "dropped": store.dropped,
                      "dropped_by_kind": dict(store.dropped_by_kind),
                      "last_error": store.last_error},
        "state": {"backend": request.app[GATEWAY].config.state.backend,
                  "status": "ok" if await request.app[GATEWAY].quota.probe()
                  else "unavailable"},
    }
    if not serving:
        body["error"] = ServiceUnavailable("No provider can serve requests").envelope()["error"]
    return json_response(body, status=200 if serving else 503)


async def credits(request: web.Request) -> web.Response:
    key = authenticate(request)
    quota = request.app[GATEWAY].quota
    budget = await quota.budget(key)
    return json_response({"data": {"total_credits": key.credits,
                                   "total_usage": round(await quota.spent(key.name), 10),
                                   "budget": budget.as_json() if budget else None}})


async def key_info(request: web.Request) -> web.Response:
    key = authenticate(request)
    quota = request.app[GATEWAY].quota
    limits = key.limits
    budget = await quota.budget(key)
    return json_response({"data": {
        "label": key.name,
        "usage": round(await quota.spent(key.name), 10),
        "limit": key.credits,
        "limit_remaining": await quota.remaining(key),
        "budget": budget.as_json() if budget else None,
        "is_free_tier": False,
        "rate_limit": {"requests": limits.requests_per_minute, "interval": "1m"},
        "limits": {"requests_per_minute": limits.requests_per_minute,
                   "tokens_per_minute": limits.tokens_per_minute,
                   "concurrent_requests": limits.concurrent_requests},
        "models": list(key.models) if key.models is not None else None,
        "disabled": key.disabled,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "in_flight": await quota.in_flight(key.name),
    }})


async def generation(request: web.Request) -> web.Response:
    key = authenticate(request)
    gen_id = request.match_info.get("gen_id") or request.query.get("id")
    if not gen_id:
        raise InvalidRequest("Pass the generation id: /generation/{id} or /generation?id=",
                             param="id")
    row = await request.app[STORE].get_generation(gen_id, None if key.admin else key.name)
    if row is None:
        raise NotFound(f"Generation {gen_id} not found", code="generation_not_found",
                       param="id")
    return json_response({"data": row})


async def metrics(request: web.Request) -> web.Response:
    token = request.app[GATEWAY].config.server.metrics_token
    if token:
        header = request.headers.get("Authorization", "")
        if not hmac.compare_digest(header.encode("utf-8", "surrogateescape"),
                                   f"Bearer {token}".encode()):
            raise AuthenticationFailed("/metrics needs 'Authorization: Bearer <metrics_token>'")
    app_metrics = request.app[METRICS]
    store = request.app[STORE]

    gateway = request.app[GATEWAY]
    board = gateway.board
    remaining = {key.name: await gateway.quota.remaining(key)
                 for key in gateway.config.keys.values() if key.credits is not None}
    budgets = {key.name: await gateway.quota.budget(key)
               for key in gateway.config.keys.values() if key.budget is not None}

    quota = gateway.quota
    fallbacks: dict[str, int] = dict(getattr(quota, "fallbacks", {}))
    state_ok = await quota.probe()

    def refresh() -> None:
        app_metrics.state_available.set(1 if state_ok else 0)
        for kind, count in fallbacks.items():
            app_metrics.state_fallbacks.labels(kind).set(count)
        # Cleared first: keys and providers removed by a reload must not linger.
        app_metrics.credits_remaining.clear()
        app_metrics.budget_remaining.clear()
        app_metrics.circuit.clear()
        for name, left in remaining.items():
            if left is not None:
                app_metrics.credits_remaining.labels(name).set(left)
        for name, status in budgets.items():
            if status is not None:
                app_metrics.budget_remaining.labels(name).set(status.remaining)
        app_metrics.queue_depth.set(store.queue_depth)
        app_metrics.dropped.set(store.dropped)
        app_metrics.dropped_rows(store.dropped_by_kind)
        for provider, state in board.states().items():
            app_metrics.circuit.labels(provider).set(STATE_CODES[state])

    return web.Response(body=app_metrics.render(refresh),
                        headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3.1 document of this API (no key needed: it is documentation)."""
    return web.Response(body=_openapi_document(), content_type="application/json")


@functools.cache
def _openapi_document() -> bytes:
    return resources.files("anyrouter_proxy").joinpath("openapi.json").read_bytes()
