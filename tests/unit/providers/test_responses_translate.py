"""The Responses API translation, as pure functions: the request as items and as a chat
request, a chat answer as output items, and what a native upstream is sent."""

from __future__ import annotations

from typing import Any

import pytest

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.providers.responses import _in_responses_terms
from anyrouter_proxy.providers.responses_input import check_request, input_items, native_input
from anyrouter_proxy.providers.responses_output import (
    THINKING_PREFIX,
    chat_output,
    client_items,
    parse_usage,
    responses_usage,
    thinking_block,
)
from anyrouter_proxy.providers.responses_to_chat import responses_to_chat_request
from anyrouter_proxy.types import Usage


def chat(body: dict[str, Any], signed: bool = False) -> dict[str, Any]:
    return responses_to_chat_request(body, input_items(body["input"]), signed_thinking=signed)


def test_a_string_input_is_one_user_message_with_an_id() -> None:
    [item] = input_items("hello")
    assert item["type"] == "message" and item["role"] == "user"
    assert item["content"] == [{"type": "input_text", "text": "hello"}]
    assert item["id"].startswith("msg_")


def test_items_are_normalised_without_touching_the_clients_body() -> None:
    given = [{"role": "assistant", "content": "earlier"}, {"type": "function_call_output",
                                                           "call_id": "c1", "output": "ok"}]
    items = input_items(given)
    assert items[0]["content"] == [{"type": "output_text", "text": "earlier"}]
    assert items[0]["type"] == "message" and items[1]["id"].startswith("fco_")
    assert given[0] == {"role": "assistant", "content": "earlier"}  # unchanged


def test_native_input_keeps_only_ids_and_reasoning_the_upstream_reads() -> None:
    items = [
        {"id": "msg_1", "type": "message", "role": "user", "content": []},
        {"id": "rs_ours", "type": "reasoning", "summary": [],
         "encrypted_content": THINKING_PREFIX + "sig"},
        {"id": "rs_bare", "type": "reasoning", "summary": []},
        {"id": "rs_theirs", "type": "reasoning", "summary": [], "encrypted_content": "gAAA"},
        {"id": "msg_2", "type": "message", "role": "assistant", "content": []},
        {"id": "fco_1", "type": "function_call_output", "call_id": "c", "output": "x"},
    ]
    sent = native_input(items)
    assert [i.get("id") for i in sent] == [None, "rs_theirs", "msg_2", None]


@pytest.mark.parametrize(("body", "param"), [
    ({"input": []}, "input"), ({}, "input"), ({"input": 1}, "input"),
    ({"input": "x", "previous_response_id": ""}, "previous_response_id"),
    ({"input": "x", "store": 1}, "store"), ({"input": "x", "tools": {}}, "tools"),
    ({"input": "x", "background": True}, "background"),
    ({"input": "x", "conversation": {"id": "c"}}, "conversation"),
])
def test_bad_requests_name_their_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        check_request(body)
    assert refused.value.param == param


def test_a_conversation_becomes_chat_messages() -> None:
    body = {"model": "m", "instructions": "Be brief.", "max_output_tokens": 300,
            "temperature": 0.2, "parallel_tool_calls": False, "user": "u1",
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"},
                       "strict": True}],
            "tool_choice": {"type": "function", "name": "f"},
            "text": {"format": {"type": "json_schema", "name": "s", "schema": {},
                                "strict": True}},
            "input": [
                {"role": "user", "content": "Q1"},
                {"type": "reasoning", "id": "rs_1", "summary": []},
                {"type": "message", "role": "assistant", "content": [
                    {"type": "output_text", "text": "Let me check."}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": [
                    {"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}]},
                {"role": "developer", "content": [{"type": "input_text", "text": "Sys"}]}]}
    out = chat(body)
    assert out["messages"] == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Q1"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "a\nb"},
        {"role": "system", "content": "Sys"}]
    assert out["tools"] == [{"type": "function", "function": {
        "name": "f", "parameters": {"type": "object"}, "strict": True}}]
    assert out["tool_choice"] == {"type": "function", "function": {"name": "f"}}
    assert out["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "s", "schema": {}, "strict": True}}
    assert (out["max_tokens"], out["temperature"], out["parallel_tool_calls"],
            out["user"]) == (300, 0.2, False, "u1")


def test_reasoning_effort_caps_with_max_completion_tokens() -> None:
    out = chat({"input": "x", "reasoning": {"effort": "high", "summary": "auto"},
                "max_output_tokens": 9000})
    assert (out["reasoning_effort"], out["max_completion_tokens"]) == ("high", 9000)
    assert "max_tokens" not in out


def test_signed_thinking_goes_back_only_to_signed_routes() -> None:
    reasoning = {"type": "reasoning", "id": "rs_1", "encrypted_content": THINKING_PREFIX + "S",
                 "summary": [{"type": "summary_text", "text": "hmm"}]}
    body = {"input": [{"role": "user", "content": "q"}, reasoning,
                      {"type": "function_call", "call_id": "c", "name": "f",
                       "arguments": "{}"}]}
    assert chat(body, signed=True)["messages"][1]["thinking_blocks"] == [
        {"type": "thinking", "thinking": "hmm", "signature": "S"}]
    assert "thinking_blocks" not in chat(body, signed=False)["messages"][1]


@pytest.mark.parametrize(("extra", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
    ({"tool_choice": {"type": "file_search"}}, "tool_choice.type"),
    ({"prompt": {"id": "pmpt_1"}}, "prompt"),
    ({"input": [{"type": "web_search_call", "id": "ws_1"}]}, "input[0].type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "file_id": "f"}]}]},
     "input[0].content[0].file_id"),
    ({"input": [{"role": "user", "content": [{"type": "input_file",
                                              "file_url": "https://x/y.pdf"}]}]},
     "input[0].content[0].file_id"),
])
def test_what_only_openai_runs_is_refused_when_translated(extra: dict[str, Any],
                                                          param: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        chat({"input": "x", **extra})
    assert (refused.value.code, refused.value.param) == ("unsupported_parameter", param)


def test_chat_refusals_name_the_responses_field() -> None:
    named = _in_responses_terms(InvalidRequest("'response_format' is not supported",
                                               code="unsupported_parameter",
                                               param="response_format"))
    assert named.param == "text.format" and "'text.format'" in named.message
    assert _in_responses_terms(InvalidRequest("x", param="messages[3].content")).param == \
        "input"
    assert _in_responses_terms(InvalidRequest("x", param="tools[0].type")).param == \
        "tools[0].type"


def test_a_chat_message_becomes_output_items_in_order() -> None:
    items = chat_output({"role": "assistant", "content": "Answer", "refusal": "No.",
                         "thinking_blocks": [{"type": "thinking", "thinking": "t",
                                              "signature": "S"},
                                             {"type": "redacted_thinking", "data": "D"}],
                         "tool_calls": [{"id": "c1", "type": "function", "function": {
                             "name": "f", "arguments": '{"a": 1}'}}]}, incomplete=False)
    assert [i["type"] for i in items] == ["reasoning", "reasoning", "message", "function_call"]
    assert thinking_block(items[0]) == {"type": "thinking", "thinking": "t", "signature": "S"}
    assert thinking_block(items[1]) == {"type": "redacted_thinking", "data": "D"}
    assert items[2]["content"] == [
        {"type": "output_text", "annotations": [], "logprobs": [], "text": "Answer"},
        {"type": "refusal", "refusal": "No."}]
    assert (items[3]["call_id"], items[3]["arguments"], items[3]["status"]) == (
        "c1", '{"a": 1}', "completed")
    shown = client_items(items, encrypted=False)
    assert "encrypted_content" not in shown[0] and "encrypted_content" in items[0]


def test_usage_both_ways() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=7, cached_tokens=3, reasoning_tokens=2,
                  cache_write_tokens=1)
    shown = responses_usage(usage)
    assert shown["total_tokens"] == 17
    assert parse_usage(shown) == usage
    assert parse_usage(None) is None
