"""OpenAI `response_format` on an Anthropic Messages upstream: what it adds to the request
(pure, no I/O). The answer side, folding the response tool back into `content`, is in
`structured_answer.py`.

| response_format | structured_output: tool (default) | structured_output: native |
|---|---|---|
| text, absent | nothing | nothing |
| json_schema {name, schema, strict: true} | the response tool (input_schema) | output_config |
| json_schema, strict false or absent | the response tool (input_schema) | the same |
| json_schema without schema | the response tool, an open object schema | the same |
| json_object | the response tool `json_response`, an open object schema | the same |

output_config is {format: {type: json_schema, schema}}; Anthropic takes only closed
schemas there (additionalProperties false), as a strict schema is, so a loose one goes to
the tool on native routes too. The response tool is an ordinary Anthropic tool whose input
is the answer: the answer's `content` is that input as a JSON string, with finish_reason
"stop" and no tool_calls. Its name is json_schema.name
(characters other than letters, digits, _ and - made _, at most 64), given a suffix when
one of the client's tools has that name. Native output sends the schema as it is
(Anthropic rejects what it does not support with a 400, passed on); on the tool `strict`
is not sent (Anthropic's strict tools exist only on the models that have native output).

How the response tool is called, by the client's tool_choice:

| client tool_choice | Anthropic tool_choice | tools |
|---|---|---|
| auto or absent, no tools | {type: tool, name}, no parallel use | the response tool |
| auto or absent, tools | {type: any}: a client's tool or the response tool | theirs + it |
| none | {type: tool, name}, no parallel use | theirs (history) + it |
| required, {function} | the client's: the answer is a tool call | theirs |
| auto, absent or none, thinking on | {type: auto}, a system instruction | theirs + it |

Anthropic refuses a forced tool choice while thinking, hence the instruction to answer
with the tool; the text a model may write before calling it is then dropped from the
answer (kept when it never calls it). disable_parallel_tool_use stays as the client set it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from anyrouter_proxy.providers.shapes import (
    bad_type,
    need_dict,
    need_str,
    opt_str,
    unsupported,
)

DEFAULT_STRUCTURED_MODE = "tool"
JSON_OBJECT_TOOL = "json_response"
MAX_TOOL_NAME = 64
OPEN_OBJECT: dict[str, Any] = {"type": "object", "additionalProperties": True}
TOOL_DESCRIPTION = ("Give your final answer by calling this tool: its input is the answer. "
                    "Call it once, when you are ready to answer.")
_NOT_NAME_CHARS = re.compile(r"[^a-zA-Z0-9_-]")
_FORCING_CHOICES = ("any", "tool")  # Anthropic tool_choice types that demand a tool call


@dataclass(frozen=True, slots=True)
class StructuredOutput:
    """What a response_format adds to an Anthropic request."""

    # Top-level fields to set (they replace the request's: tools, tool_choice, system,
    # output_config); empty when the format asks for nothing.
    fields: dict[str, Any] = field(default_factory=dict)
    # The tool whose input is the answer's content (None: the answer is read as usual).
    response_tool: str | None = None


NOTHING = StructuredOutput()


def anthropic_structured_output(response_format: Any, request: Mapping[str, Any], *,
                                mode: str = DEFAULT_STRUCTURED_MODE) -> StructuredOutput:
    """The fields `response_format` (an OpenAI chat body's) adds to `request`, the Anthropic
    request built from the rest of the body (its tools, tool_choice, thinking and system
    are read). Raises InvalidRequest (400, param response_format...) for a bad format."""
    if response_format is None:
        return NOTHING
    fmt = need_dict(response_format, "response_format")
    kind = need_str(fmt.get("type"), "response_format.type")
    if kind == "text":
        return NOTHING
    if kind == "json_object":
        return _with_tool(request, JSON_OBJECT_TOOL, TOOL_DESCRIPTION, OPEN_OBJECT)
    if kind != "json_schema":
        raise bad_type("response_format.type", "'text', 'json_object' or 'json_schema'")
    p = "response_format.json_schema"
    spec = need_dict(fmt.get("json_schema"), p)
    name = need_str(spec.get("name"), f"{p}.name")
    description = opt_str(spec.get("description"), f"{p}.description")
    schema = None if spec.get("schema") is None else need_dict(spec["schema"], f"{p}.schema")
    if schema is not None and mode == "native" and spec.get("strict") is True:
        return StructuredOutput({"output_config": {
            **_output_config(request), "format": {"type": "json_schema", "schema": schema}}})
    full = f"{description}\n\n{TOOL_DESCRIPTION}" if description else TOOL_DESCRIPTION
    return _with_tool(request, name, full,
                      OPEN_OBJECT if schema is None else _object_schema(schema, f"{p}.schema"))


def _output_config(request: Mapping[str, Any]) -> dict[str, Any]:
    config = request.get("output_config")
    return dict(config) if isinstance(config, dict) else {}


def _object_schema(schema: dict[str, Any], param: str) -> dict[str, Any]:
    """A tool's input is an object: a schema without `type` gets type object."""
    kind = schema.get("type", "object")
    if kind != "object":
        raise unsupported(f"{param}.type", "a JSON object schema (type: object) is needed on "
                          "this route, or set structured_output: native")
    return schema if "type" in schema else {"type": "object", **schema}


def _tool_name(wanted: str, taken: set[str]) -> str:
    base = _NOT_NAME_CHARS.sub("_", wanted)[:MAX_TOOL_NAME] or JSON_OBJECT_TOOL
    name, n = base, 1
    while name in taken:
        n += 1
        suffix = f"_{n}"
        name = base[:MAX_TOOL_NAME - len(suffix)] + suffix
    return name


def _with_tool(request: Mapping[str, Any], wanted: str, description: str,
               schema: dict[str, Any]) -> StructuredOutput:
    tools = list(request.get("tools") or [])
    choice = request.get("tool_choice")
    choice = choice if isinstance(choice, dict) else {"type": "auto"}
    if choice.get("type") in _FORCING_CHOICES:
        return NOTHING  # the client asked for a tool call: that is the answer
    name = _tool_name(wanted, {str(t.get("name")) for t in tools if isinstance(t, dict)})
    tool = {"name": name, "description": description, "input_schema": schema}
    fields: dict[str, Any] = {"tools": [*tools, tool]}
    if request.get("thinking") is not None:
        fields["tool_choice"] = {**choice, "type": "auto"}
        fields["system"] = [*_system_blocks(request.get("system")), {"type": "text", "text": (
            f"Give your final answer by calling the `{name}` tool, whose input is the "
            "answer; do not write the answer as text.")}]
    elif tools and choice.get("type") == "auto":
        fields["tool_choice"] = {**choice, "type": "any"}
    else:  # exactly one call of the response tool
        fields["tool_choice"] = {"type": "tool", "name": name, "disable_parallel_tool_use": True}
    return StructuredOutput(fields, name)


def _system_blocks(system: Any) -> list[Any]:
    if isinstance(system, str):
        return [{"type": "text", "text": system}] if system else []
    return list(system) if isinstance(system, list) else []
