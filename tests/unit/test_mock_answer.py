"""What the demo provider decides to answer, from the request alone."""

from __future__ import annotations

import json
from typing import Any

import pytest

from anyrouter_proxy.providers.mock_answer import compose_answer

TOOL = {"type": "function", "function": {
    "name": "lookup", "parameters": {"type": "object", "properties": {"q": {"type": "string"}},
                                     "required": ["q"]}}}
ASK = {"role": "user", "content": [{"type": "text", "text": "find"}, {"type": "text",
                                                                       "text": "cats"}]}


def call(call_id: str, name: str) -> dict[str, Any]:
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": "{}"}}


def test_plain_text_echoes_the_last_user_message() -> None:
    answer = compose_answer({"messages": [{"role": "user", "content": "one"},
                                          {"role": "assistant", "content": "x"}, ASK]})
    assert answer.tool_call is None and answer.content is not None
    assert answer.content.endswith("You said: find cats")


def test_tools_offered_give_a_call_with_schema_valid_arguments() -> None:
    answer = compose_answer({"messages": [ASK], "tools": [TOOL]})
    assert answer.content is None and answer.tool_call is not None
    assert answer.tool_call.name == "lookup"
    assert json.loads(answer.tool_call.arguments) == {"q": "demo"}


def test_parallel_tool_results_are_reported_in_order() -> None:
    messages = [ASK, {"role": "assistant", "content": None,
                      "tool_calls": [call("a", "lookup"), call("b", "weather")]},
                {"role": "tool", "tool_call_id": "a", "content": "three cats"},
                {"role": "tool", "tool_call_id": "b", "content": [{"type": "text",
                                                                   "text": "rain"}]}]
    answer = compose_answer({"messages": messages, "tools": [TOOL]})
    assert answer.tool_call is None
    assert answer.content == ("The demo provider called a tool: lookup returned three cats; "
                              "weather returned rain")


def test_structured_output_after_the_tool_result() -> None:
    schema = {"type": "object", "properties": {"count": {"type": "integer", "minimum": 1}},
              "required": ["count"]}
    messages = [ASK, {"role": "assistant", "tool_calls": [call("a", "lookup")]},
                {"role": "tool", "tool_call_id": "a", "content": "3"}]
    answer = compose_answer({"messages": messages, "tools": [TOOL], "response_format": {
        "type": "json_schema", "json_schema": {"name": "n", "schema": schema}}})
    assert answer.json and answer.content == '{"count":1}'


@pytest.mark.parametrize("tools", [None, [], "lookup", [1, {"type": "function"}],
                                   [{"type": "web_search"}], [{"function": {"name": 3}}]])
def test_no_usable_function_tool_means_text(tools: Any) -> None:
    answer = compose_answer({"messages": [ASK], "tools": tools})
    assert answer.tool_call is None and answer.content


@pytest.mark.parametrize("history", [
    [ASK, {"role": "assistant", "tool_calls": 7}, {"role": "tool", "content": None}],
    [ASK, {"role": "assistant", "tool_calls": [{"function": "x"}]}, {"role": "tool"}],
    "not a list", [None, 3, ASK],
])
def test_malformed_history_never_raises(history: Any) -> None:
    assert compose_answer({"messages": history, "tools": [TOOL]}) is not None
