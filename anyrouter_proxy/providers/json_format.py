"""Anthropic structured output -> OpenAI `response_format`, for Messages clients on an
OpenAI-compatible route (pure, no I/O).

| Anthropic request | OpenAI request |
|---|---|
| output_config.format {type: json_schema, schema} | response_format {type: json_schema, ...} |
| output_format (the beta's name), the same shape | the same |

json_schema is {name, schema, strict}: the name is the schema's `title` (made of letters,
digits, _ and -, at most 64 characters), else "response"; `strict` is true when the
schema meets OpenAI's strict rules (every object has additionalProperties false and
requires all its properties), else false (OpenAI refuses strict for other schemas).
The answer needs nothing back: the JSON comes as the message's text.
"""

from __future__ import annotations

import re
from typing import Any

from anyrouter_proxy.providers.shapes import bad_type, need_dict, need_str

DEFAULT_NAME = "response"
_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
_SCHEMA_MAPS = ("properties", "$defs", "definitions", "patternProperties")
_SCHEMA_LISTS = ("anyOf", "oneOf", "allOf", "prefixItems")
_SCHEMA_ONES = ("items", "additionalProperties", "not", "contains")


def openai_response_format(body: dict[str, Any]) -> dict[str, Any] | None:
    """The response_format of an Anthropic body's output format; None when it has none.
    Raises InvalidRequest (400) for one of the wrong shape."""
    param, fmt = "output_format", body.get("output_format")
    config = body.get("output_config")
    if config is not None and need_dict(config, "output_config").get("format") is not None:
        param, fmt = "output_config.format", config["format"]
    if fmt is None:
        return None
    fmt = need_dict(fmt, param)
    if need_str(fmt.get("type"), f"{param}.type") != "json_schema":
        raise bad_type(f"{param}.type", "'json_schema'")
    schema = need_dict(fmt.get("schema"), f"{param}.schema")
    title = schema.get("title")
    name = title if isinstance(title, str) and _NAME.match(title) else DEFAULT_NAME
    return {"type": "json_schema",
            "json_schema": {"name": name, "schema": schema, "strict": strict_ready(schema)}}


def strict_ready(schema: Any) -> bool:
    """Whether OpenAI accepts `schema` with strict: true (its object rules; too deep: no)."""
    try:
        return _strict_ready(schema)
    except RecursionError:
        return False


def _strict_ready(schema: Any) -> bool:
    if not isinstance(schema, dict):
        return True
    properties = schema.get("properties")
    if schema.get("type") == "object" or isinstance(properties, dict):
        names = set(properties) if isinstance(properties, dict) else set()
        required = schema.get("required")
        if schema.get("additionalProperties") is not False or not isinstance(required, list) \
                or not all(isinstance(r, str) for r in required) or set(required) != names:
            return False
    subschemas: list[Any] = []
    for key in _SCHEMA_MAPS:
        if isinstance(schema.get(key), dict):
            subschemas.extend(schema[key].values())
    for key in _SCHEMA_LISTS:
        if isinstance(schema.get(key), list):
            subschemas.extend(schema[key])
    subschemas.extend(schema.get(key) for key in _SCHEMA_ONES)
    return all(_strict_ready(s) for s in subschemas)
