"""The Config page's data: providers and models as loaded, without any secret (no
provider API key, no header value, no credentials or query in a URL)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from aiohttp import web
from yarl import URL

from ...config.model import Config, Deprecation, Pricing, ProviderConfig
from ..state import GATEWAY, RELOADS


def config_view(request: web.Request, *, admin: bool) -> dict[str, Any]:
    config: Config = request.app[GATEWAY].config
    status = request.app[RELOADS]
    return {
        "path": str(config.path) if config.path else None,
        "providers": [_provider(p) for p in config.providers.values()],
        "models": [{"id": m.id, "name": m.name or "", "context_length": m.context_length,
                    "pricing": _pricing(m.pricing) if m.priced else "unpriced",
                    "routes": [{"provider": r.provider, "model": r.model,
                                "priority": r.priority, "weight": r.weight,
                                "pricing": _pricing(r.pricing) if r.pricing else ""}
                               for r in m.routes],
                    "deprecated": _deprecation(m.deprecated)}
                   for m in config.models.values()],
        "endpoint_deprecations": [{"path": path, **_deprecation_fields(d)}
                                  for path, d in config.deprecations.items()],
        "loaded_at": _when(status.loaded_at),
        "last_reload_at": _when(status.last_reload_at),
        "reload_result": None if status.accepted is None
        else ("accepted" if status.accepted else "rejected"),
        # Problems may quote the file's values: for admin keys only.
        "problems": list(status.problems) if admin else [],
        "problem_count": len(status.problems),
    }


def _provider(provider: ProviderConfig) -> dict[str, Any]:
    return {"id": provider.id, "kind": provider.kind,
            "base_url": public_url(provider.base_url),
            "credentials": "set" if provider.has_credentials else "missing",
            "headers": sorted(provider.headers), "timeouts": provider.timeouts,
            "limits": provider.limits, "max_connections": provider.max_connections,
            "circuit": f"{provider.circuit_failures} failures, "
                       f"{provider.circuit_cooldown_s:g} s cool-down"}


def public_url(url: str) -> str:
    """A URL without user, password, query or fragment (they may carry credentials)."""
    if not url:
        return ""
    try:
        parsed = URL(url)
    except ValueError:
        return "(not shown)"
    return str(parsed.with_user(None).with_query(None).with_fragment(None))


def _pricing(pricing: Pricing) -> str:
    parts = [f"prompt {pricing.prompt:g}", f"completion {pricing.completion:g}"]
    for name in ("cached_prompt", "reasoning", "cache_write", "web_search", "request"):
        value = getattr(pricing, name)
        if value is not None:
            parts.append(f"{name} {value:g}")
    return ", ".join(parts)


def _deprecation_fields(d: Deprecation) -> dict[str, Any]:
    return {"since": d.since.isoformat(), "sunset": d.sunset.isoformat() if d.sunset else "",
            "successor": d.successor or ""}


def _deprecation(d: Deprecation | None) -> str:
    if d is None:
        return ""
    fields = _deprecation_fields(d)
    text = f"since {fields['since']}"
    if fields["sunset"]:
        text += f", sunset {fields['sunset']}"
    if fields["successor"]:
        text += f", successor {fields['successor']}"
    return text


def _when(at: float | None) -> str | None:
    if at is None:
        return None
    return dt.datetime.fromtimestamp(at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
