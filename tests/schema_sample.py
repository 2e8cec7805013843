"""What the fake upstreams answer to a JSON schema: an instance that fits it (checked with
jsonschema), and the schema rules the real APIs enforce on structured output."""

from __future__ import annotations

from typing import Any

import jsonschema

SAMPLE_STRING = "Paris"
SAMPLE_NUMBER = 42


def sample_instance(schema: dict[str, Any]) -> Any:
    """A value that `schema` accepts: every property filled in, the first enum value, the
    first non-null option of a union; raises if the result does not validate."""
    value = _sample(schema, schema)
    jsonschema.validate(value, schema)
    return value


def _sample(schema: Any, root: dict[str, Any]) -> Any:
    if not isinstance(schema, dict):
        return {}
    if "$ref" in schema:
        return _sample(_resolve(schema["$ref"], root), root)
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for key in ("anyOf", "oneOf"):
        if key in schema:
            options = [o for o in schema[key] if o.get("type") != "null"] or schema[key]
            return _sample(options[0], root)
    if "allOf" in schema:
        merged: dict[str, Any] = {}
        for part in schema["allOf"]:
            merged.update(_resolve(part["$ref"], root) if "$ref" in part else part)
        return _sample(merged, root)
    kind = schema.get("type", "object")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    return _sample_of_type(kind, schema, root)


def _sample_of_type(kind: str, schema: dict[str, Any], root: dict[str, Any]) -> Any:
    if kind == "object":
        return {name: _sample(sub, root)
                for name, sub in (schema.get("properties") or {}).items()}
    if kind == "array":
        return [_sample(schema.get("items", {}), root)] * max(1, schema.get("minItems", 1))
    if kind == "string":
        return SAMPLE_STRING
    if kind in ("integer", "number"):
        low = schema.get("minimum", SAMPLE_NUMBER)
        return min(max(SAMPLE_NUMBER, low), schema.get("maximum", SAMPLE_NUMBER))
    if kind == "boolean":
        return True
    return None


def _resolve(ref: str, root: dict[str, Any]) -> Any:
    node: Any = root
    for part in ref.removeprefix("#/").split("/"):
        node = node[part]
    return node


def closed_object_problem(schema: Any, path: str = "schema") -> str | None:
    """Anthropic's native structured output (and OpenAI's strict mode): every object schema
    sets additionalProperties false. The first place that does not, or None."""
    for where, node in _subschemas(schema, path):
        if node.get("type") == "object" and node.get("additionalProperties") is not False:
            return f"{where}: For 'object' type, 'additionalProperties' must be explicitly " \
                   "set to false"
    return None


def strict_problem(schema: Any) -> str | None:
    """OpenAI's strict mode: closed objects that require every one of their properties."""
    problem = closed_object_problem(schema)
    if problem is not None:
        return problem
    for where, node in _subschemas(schema, "schema"):
        properties = node.get("properties")
        if isinstance(properties, dict) and set(node.get("required") or []) != set(properties):
            return f"{where}: 'required' is required to be supplied and to be an array " \
                   "including every key in properties"
    return None


def _subschemas(schema: Any, path: str) -> list[tuple[str, dict[str, Any]]]:
    """(path, schema) of `schema` and of every schema inside it."""
    if not isinstance(schema, dict):
        return []
    found = [(path, schema)]
    for key, value in schema.items():
        if key in ("properties", "$defs", "definitions") and isinstance(value, dict):
            for name, sub in value.items():
                found.extend(_subschemas(sub, f"{path}.{key}.{name}"))
        elif key in ("anyOf", "oneOf", "allOf") and isinstance(value, list):
            for n, sub in enumerate(value):
                found.extend(_subschemas(sub, f"{path}.{key}[{n}]"))
        elif key == "items":
            found.extend(_subschemas(value, f"{path}.items"))
    return found


def fragments(text: str, count: int = 3) -> list[str]:
    """`text` cut into `count` consecutive pieces (fewer when it is shorter)."""
    size = max(1, -(-len(text) // count))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]
