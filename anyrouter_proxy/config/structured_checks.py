"""`structured_output` is read on kind anthropic only: written on another provider, or on
a route to one, it is a config error rather than a setting that silently does nothing.

Runs on a possibly schema-invalid document (plain data), so every access is guarded;
yields (YAML path, message) and the loader adds the line.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

FIELD = "structured_output"
KIND = "anthropic"  # the only kind that reads it
MESSAGE = "only kind anthropic reads it"
Found = Iterator[tuple[tuple[str | int, ...], str]]


def structured_output_problems(providers: Mapping[str, dict[str, Any]],
                               models: Mapping[str, dict[str, Any]]) -> Found:
    for pid, provider in providers.items():
        if FIELD in provider and provider.get("kind") != KIND:
            yield ("providers", pid, FIELD), MESSAGE
    for model_id, model in models.items():
        routes = model.get("routes")
        for i, route in enumerate(routes if isinstance(routes, list) else []):
            if not isinstance(route, dict) or FIELD not in route:
                continue
            target = providers.get(str(route.get("provider")))
            if target is not None and target.get("kind") != KIND:
                yield ("models", model_id, "routes", i, FIELD), \
                    f"{MESSAGE}; this route's provider is kind {target.get('kind')}"
