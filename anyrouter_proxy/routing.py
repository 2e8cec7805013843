"""Which (model, route) pairs serve a request, in which order (pure logic, no I/O).

Authority, highest first: the X-AnyRouter-Provider header (one provider among the model's
routes); the request's OpenRouter-style `provider` preferences (`order`, `only`, `ignore`,
`allow_fallbacks`, `sort`); the config's priorities, with `weight` spreading load among
routes of equal priority. The `models` field adds fallback models, tried in turn. Both
fields are the upstream's instead when every route of the model goes to a provider with
`forward_routing_fields` (OpenRouter): they name its providers and models, not ours.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from itertools import groupby
from typing import Any

from .config.model import ModelConfig, Pricing, ProviderConfig, Route
from .errors import InvalidRequest, ServiceUnavailable

SORTS = ("price", "latency", "throughput")
MAX_FALLBACK_MODELS = 8


@dataclass(frozen=True, slots=True)
class ProviderPrefs:
    order: tuple[str, ...] = ()
    only: frozenset[str] | None = None
    ignore: frozenset[str] = frozenset()
    allow_fallbacks: bool = True
    sort: str | None = None


@dataclass(frozen=True, slots=True)
class Target:
    model: ModelConfig
    route: Route
    provider: ProviderConfig

    @property
    def pricing(self) -> Pricing:
        return self.route.pricing or self.model.pricing


def parse_prefs(raw: Any) -> ProviderPrefs | None:
    """The request's `provider` object; 400 naming the field when it is malformed."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise InvalidRequest("'provider' must be an object", param="provider")

    def names(field: str) -> tuple[str, ...] | None:
        value = raw.get(field)
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise InvalidRequest(f"'provider.{field}' must be a list of provider ids",
                                 param=f"provider.{field}")
        return tuple(value)

    allow = raw.get("allow_fallbacks", True)
    if not isinstance(allow, bool):
        raise InvalidRequest("'provider.allow_fallbacks' must be a boolean",
                             param="provider.allow_fallbacks")
    sort = raw.get("sort")
    if sort is not None and sort not in SORTS:
        raise InvalidRequest(f"'provider.sort' must be one of {', '.join(SORTS)}",
                             param="provider.sort")
    only = names("only")
    return ProviderPrefs(order=names("order") or (),
                         only=frozenset(only) if only is not None else None,
                         ignore=frozenset(names("ignore") or ()),
                         allow_fallbacks=allow, sort=sort)


def routing_fields_go_upstream(model: ModelConfig,
                               providers: Mapping[str, ProviderConfig]) -> bool:
    """Whether the request's `provider` and `models` fields belong to the upstream: every
    route of the model goes to a provider with `forward_routing_fields` (OpenRouter), so
    they name its providers and models, not ours."""
    return all(providers[r.provider].forward_routing_fields for r in model.routes)


def fallback_models(body: Mapping[str, Any]) -> list[str]:
    """Model ids to try, in order: `model`, then the `models` list (OpenRouter)."""
    primary = body.get("model")
    extra = body.get("models")
    if extra is None:
        return [primary] if isinstance(primary, str) else []
    if not isinstance(extra, list) or not all(isinstance(m, str) and m for m in extra):
        raise InvalidRequest("'models' must be a list of model ids", param="models")
    if len(extra) > MAX_FALLBACK_MODELS:
        raise InvalidRequest(f"'models' lists at most {MAX_FALLBACK_MODELS} models",
                             param="models")
    ordered = ([primary] if isinstance(primary, str) else []) + extra
    return list(dict.fromkeys(ordered))


def resolve_targets(
    models: Sequence[ModelConfig],
    providers: Mapping[str, ProviderConfig],
    *,
    forced: str | None = None,
    prefs: ProviderPrefs | None = None,
    draw: Callable[[], float] = random.random,
    latency: Callable[[str], float | None] = lambda _: None,
    throughput: Callable[[str], float | None] = lambda _: None,
    usable: Callable[[ProviderConfig], bool] = lambda provider: provider.has_credentials,
) -> list[Target]:
    """Every (model, route) to try, best first; raises when none is left. `usable`: the
    provider has credentials (the gateway also knows those looked up at run time)."""
    if forced is not None and not any(r.provider == forced for m in models for r in m.routes):
        raise _not_available(models, f"Provider {forced!r} is not available for model "
                                     f"{models[0].id}", "X-AnyRouter-Provider")
    targets: list[Target] = []
    filtered_out = False
    for model in models:
        routes = [r for r in model.routes if forced is None or r.provider == forced]
        if prefs is not None and forced is None:
            kept = [r for r in routes if (prefs.only is None or r.provider in prefs.only)
                    and r.provider not in prefs.ignore]
            filtered_out |= len(kept) < len(routes)
            routes = kept
        with_credentials = [r for r in routes if usable(providers[r.provider])]
        ordered = _order(model, with_credentials, prefs if forced is None else None, draw,
                         latency, throughput)
        filtered_out |= bool(with_credentials) and not ordered  # `order` + no fallbacks named none
        targets.extend(Target(model, r, providers[r.provider]) for r in ordered)
    if targets:
        return targets
    if filtered_out:
        raise _not_available(models, "No provider is left after the request's provider "
                                     "preferences", "provider")
    raise ServiceUnavailable(f"No provider with credentials serves model {models[0].id}",
                             metadata={"providers": [r.provider for m in models
                                                     for r in m.routes]})


def _not_available(models: Sequence[ModelConfig], message: str,
                   param: str) -> InvalidRequest:
    allowed = ", ".join(dict.fromkeys(r.provider for m in models for r in m.routes))
    return InvalidRequest(f"{message} (allowed: {allowed})", code="provider_not_available",
                          param=param)


def _order(model: ModelConfig, routes: list[Route], prefs: ProviderPrefs | None,
           draw: Callable[[], float], latency: Callable[[str], float | None],
           throughput: Callable[[str], float | None]) -> list[Route]:
    if prefs is not None and prefs.sort is not None:
        routes = sorted(routes, key=_sort_key(model, prefs.sort, latency, throughput))
    else:
        routes = order_routes(routes, draw)
    if prefs is None:
        return routes
    if prefs.order:
        rank = {pid: i for i, pid in enumerate(prefs.order)}
        listed = sorted((r for r in routes if r.provider in rank), key=lambda r: rank[r.provider])
        rest = [r for r in routes if r.provider not in rank]
        return listed + rest if prefs.allow_fallbacks else listed
    return routes if prefs.allow_fallbacks else routes[:1]


def _sort_key(model: ModelConfig, sort: str, latency: Callable[[str], float | None],
              throughput: Callable[[str], float | None]) -> Callable[[Route], float]:
    unknown = float("inf")
    if sort == "price":
        def price(r: Route) -> float:
            pricing = r.pricing or model.pricing
            return pricing.prompt + pricing.completion
        return price
    if sort == "latency":
        return lambda r: _or(latency(r.provider), unknown)
    return lambda r: -_or(throughput(r.provider), -unknown)


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def order_routes(routes: list[Route], draw: Callable[[], float]) -> list[Route]:
    """Priority order; weighted random order within each priority."""
    if len(routes) < 2:  # the usual model: one route
        return routes
    result: list[Route] = []
    for _, group_iter in groupby(sorted(routes, key=lambda r: r.priority),
                                 key=lambda r: r.priority):
        group = list(group_iter)
        if len(group) > 1:
            group = _weighted_order(group, draw)
        result.extend(group)
    return result


def _weighted_order(group: list[Route], draw: Callable[[], float]) -> list[Route]:
    # Efraimidis-Spirakis: sort by u ** (1 / weight), a weighted sample without replacement.
    return sorted(group, key=lambda r: draw() ** (1.0 / r.weight), reverse=True)
