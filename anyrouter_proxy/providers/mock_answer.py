"""What the demo provider (`kind: mock`) answers to a chat request, decided from the
request alone, so the same request always gets the same answer:

- `tools` offered (and `tool_choice` not "none") and the last message not a tool result:
  one call of the first tool (or the one `tool_choice` names), its arguments the smallest
  object its `parameters` schema accepts;
- otherwise text: an echo of the last user message, or, after tool results, what the
  tools returned;
- `response_format` json_object: that text as `{"message": ...}`; json_schema: the
  smallest instance of the schema (schema_instance.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from .schema_instance import minimal_instance

ECHO = "Hello from the AnyRouter demo provider. You said: "
ECHO_CHARS = 200


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text, as OpenAI sends it


@dataclass(frozen=True, slots=True)
class MockAnswer:
    content: str | None
    tool_call: ToolCall | None = None
    json: bool = False  # content is a JSON document (streamed in slices, not words)


def compose_answer(request: Mapping[str, Any]) -> MockAnswer:
    messages = request.get("messages")
    messages = [m for m in messages if isinstance(m, dict)] if isinstance(messages, list) else []
    after_tools = bool(messages) and messages[-1].get("role") == "tool"
    tool = None if after_tools else _chosen_tool(request)
    if tool is not None:
        return MockAnswer(None, _call(tool, messages))
    text = _tool_results(messages) if after_tools else ECHO + last_user_text(request)[:ECHO_CHARS]
    return _formatted(text, request.get("response_format"))


def last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return text_of(message.get("content"))
    return text_of(body.get("prompt", ""))


def text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(text_of(part.get("text", "") if isinstance(part, dict) else part)
                        for part in value)
    return ""


def _chosen_tool(request: Mapping[str, Any]) -> dict[str, Any] | None:
    tools = request.get("tools")
    functions: list[dict[str, Any]] = [
        t["function"] for t in tools if isinstance(t, dict)
        and t.get("type", "function") == "function" and isinstance(t.get("function"), dict)
        and isinstance(t["function"].get("name"), str)] if isinstance(tools, list) else []
    choice = request.get("tool_choice")
    if not functions or choice == "none":
        return None
    if isinstance(choice, dict) and isinstance(choice.get("function"), dict):
        named = choice["function"].get("name")
        return next((f for f in functions if f["name"] == named), functions[0])
    return functions[0]


def _call(function: dict[str, Any], messages: list[dict[str, Any]]) -> ToolCall:
    arguments = minimal_instance(function.get("parameters", {"type": "object"}))
    if not isinstance(arguments, dict):
        arguments = {}
    seed = orjson.dumps([function["name"], len(messages), last_user_text({"messages": messages})])
    call_id = "call_" + hashlib.sha256(seed).hexdigest()[:24]
    return ToolCall(call_id, function["name"], orjson.dumps(arguments).decode())


def _tool_results(messages: list[dict[str, Any]]) -> str:
    """`name returned content` for each tool result at the end of the conversation."""
    names = {call.get("id"): call["function"].get("name", "tool")
             for message in messages if message.get("role") == "assistant"
             for call in _list(message.get("tool_calls"))
             if isinstance(call, dict) and isinstance(call.get("function"), dict)}
    results = []
    for message in reversed(messages):
        if message.get("role") != "tool":
            break
        name = names.get(message.get("tool_call_id"), "tool")
        results.append(f"{name} returned {text_of(message.get('content'))[:ECHO_CHARS]}")
    return "The demo provider called a tool: " + "; ".join(reversed(results))


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _formatted(text: str, response_format: Any) -> MockAnswer:
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_object":
        return MockAnswer(orjson.dumps({"message": text}).decode(), json=True)
    if kind == "json_schema":
        spec = response_format.get("json_schema")
        schema = spec.get("schema", {}) if isinstance(spec, dict) else {}
        return MockAnswer(orjson.dumps(minimal_instance(schema)).decode(), json=True)
    return MockAnswer(text)
