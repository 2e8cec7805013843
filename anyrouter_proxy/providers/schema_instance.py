"""The smallest JSON value a JSON Schema accepts, for the demo provider's tool calls and
structured output: required properties only, the first enum value, numbers at their
lower bound, strings of a known `format` in that format.

It covers what OpenAI's structured outputs and function parameters use (and what pydantic
and the openai SDK generate): types, `enum` / `const`, `properties` / `required`, `items` /
`prefixItems` / `minItems`, `anyOf` / `oneOf` / `allOf`, local `$ref`s (`#/$defs/...`),
numeric bounds and `multipleOf`, `minLength` / `maxLength`. `pattern` is not followed.
"""

from __future__ import annotations

import math
from typing import Any

DEMO_STRING = "demo"
MAX_DEPTH = 32  # references expanded within one another, at most
FORMATS = {
    "date": "2025-01-01",
    "date-time": "2025-01-01T00:00:00Z",
    "time": "00:00:00Z",
    "duration": "P1D",
    "email": "demo@example.com",
    "idn-email": "demo@example.com",
    "hostname": "example.com",
    "idn-hostname": "example.com",
    "ipv4": "127.0.0.1",
    "ipv6": "::1",
    "uri": "https://example.com/",
    "iri": "https://example.com/",
    "uri-reference": "https://example.com/",
    "uuid": "00000000-0000-4000-8000-000000000000",
}


class _TooDeep(Exception):
    pass


def minimal_instance(schema: Any) -> Any:
    """A value `schema` accepts (None for a schema without constraints)."""
    try:
        return _instance(schema, schema, ())
    except _TooDeep:
        return None


def _instance(schema: Any, root: Any, refs: tuple[str, ...]) -> Any:
    """`refs`: the references being expanded; meeting one again is a cycle."""
    if len(refs) > MAX_DEPTH or not isinstance(schema, dict):
        return None  # `true`, or anything that is not a schema object
    if "$ref" in schema:
        ref = schema["$ref"]
        if ref in refs:
            raise _TooDeep
        return _instance(_resolve(ref, root), root, (*refs, str(ref)))
    if "const" in schema:
        return schema["const"]
    enum = schema.get("enum")
    if isinstance(enum, list) and enum:
        return enum[0]
    for key in ("anyOf", "oneOf"):
        if isinstance(schema.get(key), list) and schema[key]:
            return _first_branch(schema[key], root, refs)
    if isinstance(schema.get("allOf"), list):
        return _instance(_merged(schema, root), root, refs)
    return _typed(schema, _type_of(schema), root, refs)


def _first_branch(branches: list[Any], root: Any, refs: tuple[str, ...]) -> Any:
    """null when a branch allows it (the smallest value), else the first branch that has
    a finite instance (a recursive one may not)."""
    if any(isinstance(b, dict) and b.get("type") == "null" for b in branches):
        return None
    for branch in branches:
        try:
            return _instance(branch, root, refs)
        except _TooDeep:
            continue
    raise _TooDeep


def _merged(schema: dict[str, Any], root: Any) -> dict[str, Any]:
    """allOf as one schema: its parts' properties and required lists together."""
    merged = {k: v for k, v in schema.items() if k != "allOf"}
    for part in schema["allOf"]:
        if isinstance(part, dict) and "$ref" in part:
            part = _resolve(part["$ref"], root)
        if not isinstance(part, dict):
            continue
        for key, value in part.items():
            if key == "properties" and isinstance(value, dict):
                merged["properties"] = {**merged.get("properties", {}), **value}
            elif key == "required" and isinstance(value, list):
                merged["required"] = [*merged.get("required", []), *value]
            else:
                merged[key] = value
    return merged


def _resolve(ref: Any, root: Any) -> Any:
    """A local reference (`#/$defs/Name`); anything else is unconstrained."""
    if not isinstance(ref, str) or not ref.startswith("#"):
        return {}
    node = root
    for part in ref[1:].split("/")[1:]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            return {}
        node = node[part]
    return node


def _type_of(schema: dict[str, Any]) -> str | None:
    kind = schema.get("type")
    if isinstance(kind, list):
        kinds = [k for k in kind if k != "null"]
        return kinds[0] if kinds else "null"
    if isinstance(kind, str):
        return kind
    if "properties" in schema or "required" in schema:
        return "object"
    if "items" in schema or "prefixItems" in schema:
        return "array"
    return None


def _typed(schema: dict[str, Any], kind: str | None, root: Any, refs: tuple[str, ...]) -> Any:
    if kind == "object":
        return _object(schema, root, refs)
    if kind == "array":
        return _array(schema, root, refs)
    if kind == "string":
        return _string(schema)
    if kind in ("integer", "number"):
        return _number(schema, integer=kind == "integer")
    if kind == "boolean":
        return False
    return None


def _object(schema: dict[str, Any], root: Any, refs: tuple[str, ...]) -> dict[str, Any]:
    properties = schema.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    required = schema.get("required")
    names = [n for n in required if isinstance(n, str)] if isinstance(required, list) else []
    wanted = schema.get("minProperties")
    if isinstance(wanted, int):  # then optional ones, in order, until there are enough
        names += [n for n in properties if n not in names][:max(0, wanted - len(names))]
    return {name: _instance(properties.get(name, {}), root, refs) for name in names}


def _array(schema: dict[str, Any], root: Any, refs: tuple[str, ...]) -> list[Any]:
    prefix = schema.get("prefixItems")
    values = [_instance(s, root, refs) for s in prefix] if isinstance(prefix, list) else []
    wanted = schema.get("minItems")
    if isinstance(wanted, int) and wanted > len(values):
        item = _instance(schema.get("items", {}), root, refs)
        values += [item] * (wanted - len(values))
    return values


def _string(schema: dict[str, Any]) -> str:
    value = FORMATS.get(str(schema.get("format")), DEMO_STRING)
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    if isinstance(shortest, int) and len(value) < shortest:
        value = (value * (shortest // len(value) + 1))[:shortest]
    if isinstance(longest, int) and len(value) > longest:
        value = value[:longest]
    return value


def _number(schema: dict[str, Any], *, integer: bool) -> int | float:
    low, high = _bound(schema, "minimum"), _bound(schema, "maximum")
    above, below = _bound(schema, "exclusiveMinimum"), _bound(schema, "exclusiveMaximum")
    value = 0.0
    if low is not None and value < low:
        value = low
    if above is not None and value <= above:
        step_up = 1.0 if below is None else (below - above) / 2
        value = math.floor(above) + 1 if integer else above + step_up
    if high is not None and value > high:
        value = high
    if below is not None and value >= below:
        value = math.ceil(below) - 1 if integer else below - 1
    step = _bound(schema, "multipleOf")
    if step is not None and step > 0:
        value = math.ceil(value / step) * step
    if integer or value == int(value):
        return math.ceil(value)
    return value


def _bound(schema: dict[str, Any], key: str) -> float | None:
    value = schema.get(key)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None
