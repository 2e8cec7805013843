"""The fake Anthropic upstream's rules: what the real Messages API refuses that a
translating gateway could get wrong, and what the model answers (tests/fakes.py)."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any

import jsonschema

from tests.schema_sample import closed_object_problem, sample_instance

ANSWER = "Hello from the fake upstream!"
TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,64}$")
STRUCTURED_BETA = "structured-outputs-2025-11-13"
WEATHER_INPUT = {"city": "Paris"}
FORCED_THINKING = "Thinking may not be enabled when tool_choice forces tool use."
THINKING = "Let me think about this."  # the model's thinking, when enabled
SIGNATURE_PREFIX = "EqFakeSignature"  # what this fake signs its thinking with


def anthropic_problem(headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
    """The message of the 400 the real API would answer, or None."""
    if not headers.get("x-api-key"):
        return "x-api-key header is required"
    if not headers.get("anthropic-version"):
        return "anthropic-version header is required"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    for i, message in enumerate(body.get("messages", [])):
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{i}.role: Input should be 'user' or 'assistant'"
        content = message.get("content")
        for block in content if isinstance(content, list) else []:
            if block.get("type") == "thinking" and not str(
                    block.get("signature", "")).startswith(SIGNATURE_PREFIX):
                return f"messages.{i}.content: Invalid `signature` in `thinking` block"
    return _tools_problem(body) or _output_problem(headers, body)


def _tools_problem(body: dict[str, Any]) -> str | None:
    tools = body.get("tools") or []
    names = [tool.get("name") for tool in tools]
    for i, tool in enumerate(tools):
        if not isinstance(tool.get("name"), str) or not TOOL_NAME.match(tool["name"]):
            return f"tools.{i}.custom.name: String should match pattern '{TOOL_NAME.pattern}'"
        if tool.get("type", "custom") != "custom":
            continue  # a server tool (web search, ...): no input schema
        schema = tool.get("input_schema")
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"tools.{i}.custom.input_schema.type: Input should be 'object'"
        try:
            jsonschema.Draft202012Validator.check_schema(schema)
        except jsonschema.SchemaError as exc:
            return f"tools.{i}.custom.input_schema: JSON schema is invalid: {exc.message}"
    if len(set(names)) != len(names):
        return "tools: Tool names must be unique."
    choice = body.get("tool_choice")
    if choice is None:
        return None
    kind = choice.get("type")
    if kind not in ("auto", "any", "tool", "none"):
        return "tool_choice.type: Input should be 'auto', 'any', 'tool' or 'none'"
    if kind in ("any", "tool") and not tools:
        return "tool_choice: tool_choice may only be specified while providing tools."
    if kind == "tool" and choice.get("name") not in names:
        return f"tool_choice.name: Tool '{choice.get('name')}' not found in the provided tools"
    thinking = body.get("thinking") or {}
    if kind in ("any", "tool") and thinking.get("type") == "enabled":
        return FORCED_THINKING
    return None


def _output_problem(headers: Mapping[str, str], body: dict[str, Any]) -> str | None:
    """Structured output: output_config.format, or the beta's output_format with its
    header; a closed schema (additionalProperties false on every object)."""
    fmt, where = body.get("output_format"), "output_format"
    if fmt is not None and STRUCTURED_BETA not in headers.get("anthropic-beta", ""):
        return "output_format: Extra inputs are not permitted"
    config = body.get("output_config")
    if config is not None:
        extra = set(config) - {"format", "effort"}
        if extra:
            return f"output_config.{sorted(extra)[0]}: Extra inputs are not permitted"
        fmt, where = config.get("format"), "output_config.format"
    if fmt is None:
        return None
    if fmt.get("type") != "json_schema" or not isinstance(fmt.get("schema"), dict):
        return f"{where}: Input should be {{type: 'json_schema', schema: {{...}}}}"
    problem = closed_object_problem(fmt["schema"], f"{where}.schema")
    return problem


def output_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    config = body.get("output_config") or {}
    fmt = config.get("format") or body.get("output_format")
    return fmt["schema"] if fmt else None


def answer_content(body: dict[str, Any]) -> list[dict[str, Any]]:
    """What the model writes: JSON text for a structured output; a call of the forced
    tool (for `any`: the first tool, or the last one once a tool result came back); with
    tools and `auto`, text and a call of the first tool (text alone once a tool result came
    back); else the plain answer."""
    schema = output_schema(body)
    if schema is not None:
        return [{"type": "text", "text": json.dumps(sample_instance(schema))}]
    tools = body.get("tools") or []
    choice = (body.get("tool_choice") or {"type": "auto"})["type"]
    if not tools or choice == "none" or (choice == "auto" and _after_tool_result(body)):
        return [{"type": "text", "text": ANSWER}]
    if choice == "tool":
        name = body["tool_choice"]["name"]
        return [_call(next(t for t in tools if t["name"] == name))]
    if choice == "any":
        return [_call(tools[-1] if _after_tool_result(body) else tools[0])]
    return [{"type": "text", "text": ANSWER}, _call(tools[0])]


def _call(tool: dict[str, Any]) -> dict[str, Any]:
    """A call of `tool` with {"city": "Paris"} where its schema (if any) takes that, else
    with an instance of its schema."""
    schema = tool.get("input_schema", {})
    try:
        jsonschema.validate(WEATHER_INPUT, schema)
        value: Any = WEATHER_INPUT
    except jsonschema.ValidationError:
        value = sample_instance(schema)
    return {"type": "tool_use", "id": f"toolu_{tool['name']}", "name": tool["name"],
            "input": value}


def _after_tool_result(body: dict[str, Any]) -> bool:
    last = body["messages"][-1]["content"]
    return isinstance(last, list) and any(b.get("type") == "tool_result" for b in last)
