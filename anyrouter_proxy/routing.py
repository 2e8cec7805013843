"""Which routes serve a request, in which order (pure logic, no I/O)."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from itertools import groupby

from .config.model import ModelConfig, ProviderConfig, Route
from .errors import InvalidRequest, ServiceUnavailable


@dataclass(frozen=True, slots=True)
class Target:
    route: Route
    provider: ProviderConfig


def resolve_targets(
    model: ModelConfig,
    providers: Mapping[str, ProviderConfig],
    *,
    forced: str | None = None,
    draw: Callable[[], float] = random.random,
) -> list[Target]:
    """The model's routes to try, best first.

    Routes are ordered by priority; routes sharing a priority are shuffled by weight, so
    load spreads in proportion to it while every route stays a fallback. A forced
    provider (X-AnyRouter-Provider) must be one of the model's routes.
    """
    routes = model.routes
    if forced is not None:
        routes = tuple(r for r in routes if r.provider == forced)
        if not routes:
            allowed = ", ".join(dict.fromkeys(r.provider for r in model.routes))
            raise InvalidRequest(
                f"Provider {forced!r} is not available for model {model.id} "
                f"(allowed: {allowed})", code="provider_not_available",
                param="X-AnyRouter-Provider")
    usable = [r for r in routes if providers[r.provider].has_credentials]
    if not usable:
        raise ServiceUnavailable(
            f"No provider with credentials serves model {model.id}",
            metadata={"providers": [r.provider for r in routes]})
    ordered = order_routes(usable, draw)
    return [Target(r, providers[r.provider]) for r in ordered]


def order_routes(routes: list[Route], draw: Callable[[], float]) -> list[Route]:
    """Priority order; weighted random order within each priority."""
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
