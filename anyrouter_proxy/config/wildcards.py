"""Wildcard models: a config entry `groq/*` serves every model id under `groq/` (pure).

A request for `groq/llama-3.3-70b` gets a concrete `ModelConfig` made from the entry: its
id is the id asked for, and each route's `*` is replaced by the rest of the id (`model:
"*"` -> `llama-3.3-70b`; `model: "accounts/fireworks/models/*"` works too). An exact entry
wins over a wildcard, and the longest wildcard prefix wins over a shorter one.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import re
from collections.abc import Iterable, Mapping

from .model import WILDCARD_SUFFIX, Config, ModelConfig

# What may follow a wildcard's prefix: a model id as the config writes them (so never a
# dot segment such as `..`, which would climb a URL path).
MODEL_ID_REST = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,199}")
REST_MARK = "*"  # in a wildcard's route model: the rest of the id asked for
_GLOB_CHARS = re.compile(r"[*?\[]")


def wildcard_prefix(model_id: str) -> str | None:
    """`groq/` for `groq/*`; None for an ordinary id."""
    return model_id[:-1] if model_id.endswith(WILDCARD_SUFFIX) else None


def wildcard_entries(models: Iterable[ModelConfig]) -> tuple[ModelConfig, ...]:
    """The wildcard entries, longest prefix first (the order they are tried in)."""
    return tuple(sorted((m for m in models if m.is_wildcard), key=lambda m: -len(m.id)))


def resolve_model(config: Config, model_id: str) -> ModelConfig | None:
    """The model `model_id` names: its own entry (a wildcard entry asked for by its own
    id included), else a concrete model of the longest wildcard that covers it."""
    model = config.models.get(model_id)
    if model is not None:
        return model
    for entry in config.wildcards:
        prefix = entry.id[:-1]
        if model_id.startswith(prefix) and len(model_id) > len(prefix):
            rest = model_id[len(prefix):]
            return concrete_model(entry, model_id, rest) if MODEL_ID_REST.fullmatch(rest) \
                else None
    return None


def concrete_model(entry: ModelConfig, model_id: str, rest: str) -> ModelConfig:
    routes = tuple(dataclasses.replace(r, model=r.model.replace(REST_MARK, rest))
                   for r in entry.routes)
    return dataclasses.replace(entry, id=model_id, name=None, routes=routes,
                               wildcard=entry.id)


def glob_may_match(pattern: str, model_ids: Iterable[str]) -> bool:
    """Whether an allow-list or model_limits glob can match a model of the config: one of
    its ids, or some id under one of its wildcards (judged by the glob's literal start)."""
    for model_id in model_ids:
        if fnmatch.fnmatchcase(model_id, pattern):
            return True
        prefix = wildcard_prefix(model_id)
        if prefix is None:
            continue
        literal = _GLOB_CHARS.split(pattern, 1)[0]
        if literal == pattern:  # no glob: one id, which must be under the prefix
            if len(pattern) > len(prefix) and pattern.startswith(prefix):
                return True
        elif literal.startswith(prefix) or prefix.startswith(literal):
            return True
    return False


def resolves(models: Mapping[str, ModelConfig] | Mapping[str, object], model_id: str) -> bool:
    """Whether `model_id` names a model of `models` (a raw or frozen models section)."""
    if model_id in models:
        return True
    return any(model_id.startswith(prefix) and len(model_id) > len(prefix)
               for m in models if (prefix := wildcard_prefix(m)) is not None)
