"""Requests, responses and usage between OpenAI Chat Completions and Anthropic Messages."""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import Any

import anthropic.types
import openai.types.chat
import pytest

from anyrouter_proxy.errors import InvalidRequest, UpstreamError
from anyrouter_proxy.providers.anthropic_client import (
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from anyrouter_proxy.providers.anthropic_translate import (
    EFFORT_BUDGETS,
    anthropic_to_openai_response,
    anthropic_usage,
    openai_to_anthropic_request,
    openai_usage,
)
from anyrouter_proxy.types import Usage

DATA = Path(__file__).parents[2] / "data" / "anthropic"
USER = {"role": "user", "content": "Hi"}
WEATHER_TOOL: dict[str, Any] = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather",
    "parameters": {"type": "object", "properties": {"location": {"type": "string"}},
                   "required": ["location"]}}}
SIGNATURE = "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"


def load(name: str) -> Any:
    return json.loads((DATA / name).read_text())


def to_anthropic(body: dict[str, Any], default_max_tokens: int = 4096) -> dict[str, Any]:
    return openai_to_anthropic_request(body, upstream_model="claude-sonnet-4-20250514",
                                       default_max_tokens=default_max_tokens)


def to_openai(body: dict[str, Any]) -> dict[str, Any]:
    return anthropic_to_openai_request(body, upstream_model="gpt-4o")


def chat(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "anthropic/claude-sonnet-4", "messages": list(messages), **params}


def msgs(*messages: dict[str, Any], **params: Any) -> dict[str, Any]:
    return {"model": "openai/gpt-4o", "max_tokens": 256, "messages": list(messages), **params}


def completion(message: dict[str, Any], finish: str = "stop", **extra: Any) -> dict[str, Any]:
    return {"id": "chatcmpl-123", "object": "chat.completion", "created": 1, "model": "gpt-4o",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}], **extra}


def message(*content: dict[str, Any], stop: str | None = "end_turn") -> dict[str, Any]:
    return {"id": "msg_01", "type": "message", "role": "assistant", "model": "claude",
            "content": list(content), "stop_reason": stop, "stop_sequence": None,
            "usage": {"input_tokens": 10, "output_tokens": 5}}


def from_anthropic(resp: dict[str, Any]) -> dict[str, Any]:
    return anthropic_to_openai_response(resp, gen_id="gen-abc", model="anthropic/claude",
                                        created=1700000000)


# --- OpenAI request -> Anthropic request: messages -------------------------------------------

def test_system_and_developer_messages_become_top_level_system_in_order() -> None:
    out = to_anthropic(chat({"role": "system", "content": "Be brief."}, USER,
                            {"role": "developer", "content": "Answer in French."}))
    assert out["system"] == [{"type": "text", "text": "Be brief."},
                             {"type": "text", "text": "Answer in French."}]
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_system_content_parts_keep_cache_control() -> None:
    system = {"role": "system", "content": [
        {"type": "text", "text": "Long manual", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Short tail"}]}
    out = to_anthropic(chat(system, USER))
    assert out["system"] == [
        {"type": "text", "text": "Long manual", "cache_control": {"type": "ephemeral"}},
        {"type": "text", "text": "Short tail"}]


def test_no_system_key_without_system_messages() -> None:
    assert "system" not in to_anthropic(chat(USER))


def test_message_level_cache_control_goes_on_the_last_block() -> None:
    user = {"role": "user", "content": "Big document", "cache_control": {"type": "ephemeral"}}
    out = to_anthropic(chat(user))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Big document", "cache_control": {"type": "ephemeral"}}]


def test_multi_turn_keeps_roles_and_order() -> None:
    out = to_anthropic(chat(USER, {"role": "assistant", "content": "Hello!"},
                            {"role": "user", "content": "How are you?"}))
    assert out["messages"] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": [{"type": "text", "text": "Hello!"}]},
        {"role": "user", "content": "How are you?"}]


def test_model_is_the_upstream_model() -> None:
    assert to_anthropic(chat(USER))["model"] == "claude-sonnet-4-20250514"


def test_user_text_parts_keep_cache_control() -> None:
    part = {"type": "text", "text": "Doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    out = to_anthropic(chat({"role": "user", "content": [part]}))
    assert out["messages"][0]["content"] == [
        {"type": "text", "text": "Doc", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]


def test_data_url_image_becomes_base64_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo=",
                                               "detail": "high"}}
    out = to_anthropic(chat({"role": "user", "content": [part]}))
    assert out["messages"][0]["content"] == [{"type": "image", "source": {
        "type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}]


def test_https_image_becomes_url_source() -> None:
    part = {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}}
    out = to_anthropic(chat({"role": "user", "content": [part]}))
    assert out["messages"][0]["content"] == [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/cat.jpg"}}]


def test_data_url_that_is_not_base64_is_refused() -> None:
    part = {"type": "image_url", "image_url": {"url": "data:image/svg+xml,<svg/>"}}
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat({"role": "user", "content": [part]}))
    assert err.value.param == "messages[0].content[0].image_url"


def test_image_url_with_other_scheme_is_refused() -> None:
    part = {"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat({"role": "user", "content": [part]}))
    assert err.value.param == "messages[0].content[0].image_url"


def test_pdf_file_part_becomes_document_block() -> None:
    part = {"type": "file", "file": {"filename": "report.pdf",
                                     "file_data": "data:application/pdf;base64,JVBERi0xLjQ="}}
    out = to_anthropic(chat({"role": "user", "content": [part]}))
    assert out["messages"][0]["content"] == [{
        "type": "document", "title": "report.pdf",
        "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQ="}}]


def test_empty_assistant_message_is_dropped() -> None:
    out = to_anthropic(chat(USER, {"role": "assistant", "content": ""},
                            {"role": "user", "content": "Again"}))
    assert [m["role"] for m in out["messages"]] == ["user", "user"]


def test_only_system_messages_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat({"role": "system", "content": "Be brief."}))
    assert err.value.param == "messages"


# --- tools and tool turns ---------------------------------------------------------------------

def test_tools_become_input_schema_tools() -> None:
    out = to_anthropic(chat(USER, tools=[WEATHER_TOOL]))
    assert out["tools"] == [{"name": "get_weather", "description": "Current weather",
                             "input_schema": WEATHER_TOOL["function"]["parameters"]}]


def test_tool_without_parameters_gets_an_empty_object_schema() -> None:
    tool = {"type": "function", "function": {"name": "now", "strict": True}}
    out = to_anthropic(chat(USER, tools=[tool]))
    assert out["tools"] == [{"name": "now",
                             "input_schema": {"type": "object", "properties": {}}}]


def test_tool_cache_control_is_kept() -> None:
    tool = {**WEATHER_TOOL, "cache_control": {"type": "ephemeral"}}
    out = to_anthropic(chat(USER, tools=[tool]))
    assert out["tools"][0]["cache_control"] == {"type": "ephemeral"}


@pytest.mark.parametrize(("choice", "expected"), [
    ("auto", {"type": "auto"}),
    ("none", {"type": "none"}),
    ("required", {"type": "any"}),
    ({"type": "function", "function": {"name": "get_weather"}},
     {"type": "tool", "name": "get_weather"}),
])
def test_tool_choice_maps(choice: Any, expected: dict[str, Any]) -> None:
    out = to_anthropic(chat(USER, tools=[WEATHER_TOOL], tool_choice=choice))
    assert out["tool_choice"] == expected


def test_no_tool_choice_by_default() -> None:
    assert "tool_choice" not in to_anthropic(chat(USER, tools=[WEATHER_TOOL]))


def test_parallel_tool_calls_false_disables_parallel_tool_use() -> None:
    out = to_anthropic(chat(USER, tools=[WEATHER_TOOL], parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "auto", "disable_parallel_tool_use": True}


def test_parallel_tool_calls_false_keeps_the_chosen_tool_choice() -> None:
    out = to_anthropic(chat(USER, tools=[WEATHER_TOOL], tool_choice="required",
                            parallel_tool_calls=False))
    assert out["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


def test_required_tool_choice_without_tools_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat(USER, tool_choice="required"))
    assert err.value.param == "tool_choice"


def test_auto_tool_choice_without_tools_is_dropped() -> None:
    assert "tool_choice" not in to_anthropic(chat(USER, tool_choice="auto"))


def test_assistant_tool_calls_become_tool_use_blocks() -> None:
    assistant = {"role": "assistant", "content": "Checking.", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"] == [
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "call_1", "name": "get_weather",
         "input": {"location": "Paris"}}]


def test_empty_tool_arguments_become_an_empty_input() -> None:
    assistant = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "now", "arguments": ""}}]}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"][0]["input"] == {}


@pytest.mark.parametrize("arguments", ["{\"location\": ", "[1, 2]"])
def test_tool_arguments_that_are_not_a_json_object_are_refused(arguments: str) -> None:
    assistant = {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function",
         "function": {"name": "get_weather", "arguments": arguments}}]}
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat(USER, assistant))
    assert err.value.param == "messages[1].tool_calls[0].function.arguments"


def test_consecutive_tool_messages_merge_into_one_user_message() -> None:
    assistant = {"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "a", "arguments": "{}"}},
        {"id": "call_2", "type": "function", "function": {"name": "b", "arguments": "{}"}}]}
    out = to_anthropic(chat(USER, assistant,
                            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                            {"role": "tool", "tool_call_id": "call_2", "content": "12:00"}))
    assert out["messages"][2] == {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "call_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "call_2", "content": "12:00"}]}
    assert len(out["messages"]) == 3


def test_tool_messages_separated_by_a_turn_are_not_merged() -> None:
    tool = {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}
    out = to_anthropic(chat(USER, tool, {"role": "assistant", "content": "ok"}, tool))
    assert [m["role"] for m in out["messages"]] == ["user", "user", "assistant", "user"]


def test_tool_message_with_parts_becomes_tool_result_blocks() -> None:
    tool = {"role": "tool", "tool_call_id": "call_1",
            "content": [{"type": "text", "text": "sunny"}]}
    out = to_anthropic(chat(USER, tool))
    assert out["messages"][1]["content"][0]["content"] == [{"type": "text", "text": "sunny"}]


# --- parameters -------------------------------------------------------------------------------

def test_stop_string_becomes_a_stop_sequence_list() -> None:
    assert to_anthropic(chat(USER, stop="END"))["stop_sequences"] == ["END"]


def test_stop_list_is_kept() -> None:
    assert to_anthropic(chat(USER, stop=["a", "b"]))["stop_sequences"] == ["a", "b"]


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    out = to_anthropic(chat(USER, max_tokens=100, max_completion_tokens=200))
    assert out["max_tokens"] == 200


def test_max_tokens_is_used() -> None:
    assert to_anthropic(chat(USER, max_tokens=100))["max_tokens"] == 100


def test_default_max_tokens_when_none_given() -> None:
    assert to_anthropic(chat(USER), default_max_tokens=777)["max_tokens"] == 777


def test_sampling_parameters_are_copied() -> None:
    out = to_anthropic(chat(USER, temperature=0.3, top_p=0.9, top_k=40))
    assert (out["temperature"], out["top_p"], out["top_k"]) == (0.3, 0.9, 40)


def test_temperature_above_one_is_clamped() -> None:
    assert to_anthropic(chat(USER, temperature=1.7))["temperature"] == 1.0


def test_stream_is_copied() -> None:
    assert to_anthropic(chat(USER, stream=True))["stream"] is True


def test_user_becomes_metadata_user_id() -> None:
    assert to_anthropic(chat(USER, user="u-42"))["metadata"] == {"user_id": "u-42"}


def test_safety_identifier_is_the_user_id_fallback() -> None:
    out = to_anthropic(chat(USER, safety_identifier="hash-9"))
    assert out["metadata"] == {"user_id": "hash-9"}


@pytest.mark.parametrize("param", [
    {"presence_penalty": 0.5}, {"frequency_penalty": 0.5}, {"seed": 7},
    {"logit_bias": {"50256": -100}}, {"response_format": {"type": "text"}}, {"n": 1},
    {"logprobs": False}, {"service_tier": "auto"}, {"store": True},
    {"metadata": {"k": "v"}}, {"stream_options": {"include_usage": True}},
    {"prompt_cache_key": "x"}, {"verbosity": "low"}, {"some_unknown_field": 1},
])
def test_parameters_without_counterpart_are_dropped(param: dict[str, Any]) -> None:
    out = to_anthropic(chat(USER, **param))
    assert set(out) == {"model", "messages", "max_tokens"}


@pytest.mark.parametrize(("param", "name"), [
    ({"n": 2}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 3}, "top_logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"function_call": "auto"}, "function_call"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, "audio"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "allowed_tools"}}, "tool_choice.type"),
])
def test_parameters_that_would_change_the_meaning_are_refused(
    param: dict[str, Any], name: str,
) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat(USER, **param))
    assert (err.value.code, err.value.param) == ("unsupported_parameter", name)


@pytest.mark.parametrize(("part", "name"), [
    ({"type": "input_audio", "input_audio": {"data": "AAA=", "format": "wav"}},
     "messages[0].content[0].type"),
    ({"type": "file", "file": {"file_id": "file-abc"}}, "messages[0].content[0].file.file_id"),
])
def test_content_parts_without_counterpart_are_refused(part: dict[str, Any], name: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat({"role": "user", "content": [part]}))
    assert (err.value.code, err.value.param) == ("unsupported_parameter", name)


# --- reasoning --------------------------------------------------------------------------------

@pytest.mark.parametrize(("effort", "budget"), [("low", 2048), ("medium", 8192),
                                                ("high", 16384)])
def test_reasoning_effort_sets_a_thinking_budget(effort: str, budget: int) -> None:
    out = to_anthropic(chat(USER, reasoning_effort=effort), default_max_tokens=4096)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": budget}
    assert out["max_tokens"] == budget + 4096


def test_effort_budgets_are_documented_numbers() -> None:
    assert EFFORT_BUDGETS == {"minimal": 1024, "low": 2048, "medium": 8192, "high": 16384,
                              "xhigh": 32768, "max": 32768}


def test_explicit_max_tokens_shrinks_the_budget_below_it() -> None:
    out = to_anthropic(chat(USER, reasoning_effort="high", max_completion_tokens=5000))
    assert out["thinking"]["budget_tokens"] == 4999
    assert out["max_tokens"] == 5000


def test_explicit_max_tokens_too_small_for_thinking_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat(USER, reasoning_effort="low", max_tokens=1000))
    assert err.value.param == "max_tokens"


def test_reasoning_effort_none_means_no_thinking() -> None:
    assert "thinking" not in to_anthropic(chat(USER, reasoning_effort="none"))


def test_unknown_reasoning_effort_is_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(chat(USER, reasoning_effort="extreme"))
    assert err.value.param == "reasoning_effort"


def test_sampling_parameters_are_dropped_while_thinking() -> None:
    out = to_anthropic(chat(USER, reasoning_effort="low", temperature=0.2, top_p=0.5, top_k=5))
    assert not {"temperature", "top_p", "top_k"} & set(out)


def test_anthropic_thinking_field_passes_through() -> None:
    out = to_anthropic(chat(USER, thinking={"type": "enabled", "budget_tokens": 3000}),
                       default_max_tokens=1000)
    assert out["thinking"] == {"type": "enabled", "budget_tokens": 3000}
    assert out["max_tokens"] == 4000


def test_signed_thinking_blocks_come_first_in_the_assistant_message() -> None:
    assistant = {
        "role": "assistant", "content": "Let me check.",
        "reasoning_content": "Need the weather.",
        "thinking_blocks": [{"type": "thinking", "thinking": "Need the weather.",
                             "signature": SIGNATURE}],
        "tool_calls": [{"id": "toolu_1", "type": "function",
                        "function": {"name": "get_weather", "arguments": "{}"}}]}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"] == [
        {"type": "thinking", "thinking": "Need the weather.", "signature": SIGNATURE},
        {"type": "text", "text": "Let me check."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}]


def test_redacted_thinking_blocks_are_kept() -> None:
    assistant = {"role": "assistant", "content": "ok",
                 "thinking_blocks": [{"type": "redacted_thinking", "data": "EmwKAhgB"}]}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"][0] == {"type": "redacted_thinking", "data": "EmwKAhgB"}


def test_reasoning_content_without_signed_blocks_is_dropped() -> None:
    assistant = {"role": "assistant", "content": "ok", "reasoning_content": "hmm"}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"] == [{"type": "text", "text": "ok"}]


def test_unsigned_thinking_blocks_are_dropped() -> None:
    assistant = {"role": "assistant", "content": "ok",
                 "thinking_blocks": [{"type": "thinking", "thinking": "hmm", "signature": None}]}
    out = to_anthropic(chat(USER, assistant))
    assert out["messages"][1]["content"] == [{"type": "text", "text": "ok"}]


# --- bad shapes -------------------------------------------------------------------------------

@pytest.mark.parametrize(("body", "param"), [
    ({"messages": "hi"}, "messages"),
    ({}, "messages"),
    (chat("hi"), "messages[0]"),  # type: ignore[arg-type]
    (chat({"content": "hi"}), "messages[0].role"),
    (chat({"role": "function", "content": "x"}), "messages[0].role"),
    (chat({"role": "user", "content": 5}), "messages[0].content"),
    (chat({"role": "user", "content": [{"type": "video"}]}), "messages[0].content[0].type"),
    (chat({"role": "user", "content": [{"type": "text", "text": 1}]}),
     "messages[0].content[0].text"),
    (chat({"role": "user", "content": [7]}), "messages[0].content[0]"),
    (chat({"role": "user", "content": "x", "cache_control": "yes"}), "messages[0].cache_control"),
    (chat({"role": "system", "content": [{"type": "image_url", "image_url": {"url": "x"}}]},
          USER), "messages[0].content[0].type"),
    (chat(USER, {"role": "assistant", "tool_calls": {"id": "x"}}), "messages[1].tool_calls"),
    (chat(USER, {"role": "assistant", "tool_calls": [{"id": "x", "type": "function"}]}),
     "messages[1].tool_calls[0].function"),
    (chat(USER, {"role": "assistant", "thinking_blocks": "sig"}),
     "messages[1].thinking_blocks"),
    (chat(USER, {"role": "tool", "content": "x"}), "messages[1].tool_call_id"),
    (chat(USER, {"role": "tool", "tool_call_id": "c", "content": None}), "messages[1].content"),
    (chat(USER, tools={"name": "x"}), "tools"),
    (chat(USER, tools=[{"type": "function"}]), "tools[0].function"),
    (chat(USER, tools=[{"type": "function", "function": {"name": 3}}]), "tools[0].function.name"),
    (chat(USER, tools=[WEATHER_TOOL], tool_choice="any"), "tool_choice"),
    (chat(USER, tools=[WEATHER_TOOL], tool_choice=3), "tool_choice"),
    (chat(USER, stop=5), "stop"),
    (chat(USER, stop=["a", 1]), "stop[1]"),
    (chat(USER, temperature="hot"), "temperature"),
    (chat(USER, max_tokens="10"), "max_tokens"),
    (chat(USER, max_tokens=0), "max_tokens"),
    (chat(USER, max_completion_tokens=1.5), "max_completion_tokens"),
    (chat(USER, top_k=True), "top_k"),
    (chat(USER, n="2"), "n"),
    (chat(USER, user=42), "user"),
    (chat(USER, stream="yes"), "stream"),
    (chat(USER, parallel_tool_calls="no", tools=[WEATHER_TOOL]), "parallel_tool_calls"),
    (chat(USER, reasoning_effort=3), "reasoning_effort"),
    (chat(USER, response_format="json"), "response_format"),
])
def test_bad_types_are_invalid_requests_naming_the_field(
    body: dict[str, Any], param: str,
) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_anthropic(body)
    assert err.value.param == param


def test_a_body_that_is_not_an_object_is_an_invalid_request() -> None:
    with pytest.raises(InvalidRequest):
        to_anthropic([USER])  # type: ignore[arg-type]


def test_the_input_body_is_not_modified() -> None:
    body = chat({"role": "system", "content": "s"}, USER, tools=[WEATHER_TOOL],
                reasoning_effort="low", temperature=0.5)
    before = copy.deepcopy(body)
    to_anthropic(body)
    assert body == before


# --- Anthropic response -> OpenAI response ----------------------------------------------------

def test_text_response_becomes_a_chat_completion() -> None:
    out = from_anthropic(message({"type": "text", "text": "Hello"},
                                 {"type": "text", "text": " world"}))
    assert out["id"] == "gen-abc"
    assert (out["object"], out["model"], out["created"]) == (
        "chat.completion", "anthropic/claude", 1700000000)
    assert out["choices"][0]["message"]["content"] == "Hello world"
    assert out["choices"][0]["finish_reason"] == "stop"


def test_tool_use_becomes_tool_calls_with_json_arguments() -> None:
    out = from_anthropic(load("message_thinking_tool_use.json"))
    call = out["choices"][0]["message"]["tool_calls"][0]
    assert call["id"] == "toolu_01A09q90qw90lq917835lq9"
    assert call["type"] == "function"
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA",
                                                         "unit": "celsius"}
    assert out["choices"][0]["finish_reason"] == "tool_calls"


def test_tool_use_only_response_has_null_content() -> None:
    out = from_anthropic(message({"type": "tool_use", "id": "t", "name": "f", "input": {}},
                                 stop="tool_use"))
    assert out["choices"][0]["message"]["content"] is None


def test_thinking_becomes_reasoning_content_and_signed_thinking_blocks() -> None:
    resp = load("message_thinking_tool_use.json")
    out = from_anthropic(resp)
    msg = out["choices"][0]["message"]
    assert msg["reasoning_content"] == resp["content"][0]["thinking"]
    assert msg["thinking_blocks"] == [
        {"type": "thinking", "thinking": resp["content"][0]["thinking"],
         "signature": resp["content"][0]["signature"]},
        {"type": "redacted_thinking", "data": resp["content"][1]["data"]}]


def test_response_without_thinking_has_no_reasoning_fields() -> None:
    msg = from_anthropic(message({"type": "text", "text": "x"}))["choices"][0]["message"]
    assert "reasoning_content" not in msg and "thinking_blocks" not in msg


@pytest.mark.parametrize(("stop", "finish"), [
    ("end_turn", "stop"), ("stop_sequence", "stop"), ("max_tokens", "length"),
    ("tool_use", "tool_calls"), ("refusal", "content_filter"), ("pause_turn", "stop"),
    ("model_context_window_exceeded", "length"),
])
def test_stop_reason_maps_to_finish_reason(stop: str, finish: str) -> None:
    out = from_anthropic(message({"type": "text", "text": "x"}, stop=stop))
    assert out["choices"][0]["finish_reason"] == finish


def test_response_usage_counts_cache_in_prompt_tokens() -> None:
    out = from_anthropic(load("message_thinking_tool_use.json"))
    assert out["usage"] == {
        "prompt_tokens": 2095 + 1800 + 100, "completion_tokens": 503,
        "total_tokens": 2095 + 1800 + 100 + 503,
        "prompt_tokens_details": {"cached_tokens": 1800, "cache_write_tokens": 100},
        "completion_tokens_details": {"reasoning_tokens": 0}}


def test_server_tool_blocks_are_dropped_from_the_response() -> None:
    out = from_anthropic(message(
        {"type": "server_tool_use", "id": "srvtoolu_1", "name": "web_search",
         "input": {"query": "x"}},
        {"type": "text", "text": "Found it."}))
    msg = out["choices"][0]["message"]
    assert msg["content"] == "Found it." and "tool_calls" not in msg


def test_response_validates_as_an_openai_chat_completion() -> None:
    out = from_anthropic(load("message_thinking_tool_use.json"))
    parsed = openai.types.chat.ChatCompletion.model_validate(out)
    assert parsed.choices[0].message.tool_calls is not None
    assert parsed.usage is not None and parsed.usage.prompt_tokens == 3995


@pytest.mark.parametrize("resp", [
    "not json", {"content": "text"}, {"content": [{"type": "text", "text": 5}]},
    {"content": [{"type": "tool_use", "id": "t", "name": "f", "input": [1]}]},
])
def test_malformed_anthropic_response_is_an_upstream_error(resp: Any) -> None:
    with pytest.raises(UpstreamError) as err:
        from_anthropic(resp)
    assert err.value.code == "upstream_invalid_response"


# --- usage ------------------------------------------------------------------------------------

def test_anthropic_usage_adds_cache_reads_and_writes_to_prompt_tokens() -> None:
    usage = anthropic_usage({"input_tokens": 10, "cache_read_input_tokens": 100,
                             "cache_creation_input_tokens": 20, "output_tokens": 7})
    assert usage == Usage(prompt_tokens=130, completion_tokens=7, cached_tokens=100,
                          cache_write_tokens=20)


def test_anthropic_usage_reads_thinking_tokens() -> None:
    usage = anthropic_usage({"input_tokens": 1, "output_tokens": 50,
                             "output_tokens_details": {"thinking_tokens": 30}})
    assert usage.reasoning_tokens == 30


def test_anthropic_usage_ignores_null_and_bad_values() -> None:
    usage = anthropic_usage({"input_tokens": 5, "cache_read_input_tokens": None,
                             "output_tokens": "7"})
    assert usage == Usage(prompt_tokens=5)


def test_openai_usage_reads_details() -> None:
    usage = openai_usage(load("chat_completion_tool_calls.json")["usage"])
    assert usage == Usage(prompt_tokens=182, completion_tokens=38, cached_tokens=128)


def test_openai_usage_reads_reasoning_tokens() -> None:
    usage = openai_usage({"prompt_tokens": 3, "completion_tokens": 90,
                          "completion_tokens_details": {"reasoning_tokens": 64}})
    assert usage.reasoning_tokens == 64


def test_openai_usage_of_none_is_zero() -> None:
    assert openai_usage(None) == Usage()


def test_openai_usage_tolerates_bad_details() -> None:
    usage = openai_usage({"prompt_tokens": 3, "prompt_tokens_details": None,
                          "completion_tokens": True})
    assert usage == Usage(prompt_tokens=3)


# --- Anthropic request -> OpenAI request ------------------------------------------------------

def test_system_string_becomes_the_first_message() -> None:
    out = to_openai(msgs(USER, system="Be brief."))
    assert out["messages"] == [{"role": "system", "content": "Be brief."},
                               {"role": "user", "content": "Hi"}]


def test_system_blocks_are_joined() -> None:
    out = to_openai(msgs(USER, system=[{"type": "text", "text": "A"},
                                       {"type": "text", "text": "B",
                                        "cache_control": {"type": "ephemeral"}}]))
    assert out["messages"][0] == {"role": "system", "content": "A\nB"}


def test_basic_anthropic_request_fields() -> None:
    out = to_openai(msgs(USER, temperature=0.5, top_p=0.9, top_k=10,
                         stop_sequences=["END"], metadata={"user_id": "u-1"}))
    assert out == {"model": "gpt-4o", "messages": [{"role": "user", "content": "Hi"}],
                   "max_tokens": 256, "temperature": 0.5, "top_p": 0.9, "stop": ["END"],
                   "user": "u-1"}


def test_single_text_block_becomes_a_string() -> None:
    out = to_openai(msgs({"role": "user", "content": [{"type": "text", "text": "Hi"}]}))
    assert out["messages"] == [{"role": "user", "content": "Hi"}]


def test_base64_image_becomes_a_data_url_part() -> None:
    out = to_openai(msgs({"role": "user", "content": [
        {"type": "image", "source": {"type": "base64", "media_type": "image/jpeg",
                                     "data": "/9j/4AAQ"}},
        {"type": "text", "text": "What is this?"}]}))
    assert out["messages"][0]["content"] == [
        {"type": "image_url", "image_url": {"url": "data:image/jpeg;base64,/9j/4AAQ"}},
        {"type": "text", "text": "What is this?"}]


def test_url_image_becomes_an_image_url_part() -> None:
    out = to_openai(msgs({"role": "user", "content": [
        {"type": "image", "source": {"type": "url", "url": "https://example.com/a.png"}},
        {"type": "text", "text": "?"}]}))
    assert out["messages"][0]["content"][0] == {
        "type": "image_url", "image_url": {"url": "https://example.com/a.png"}}


def test_pdf_document_becomes_a_file_part() -> None:
    out = to_openai(msgs({"role": "user", "content": [
        {"type": "document", "title": "r.pdf",
         "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0="}},
        {"type": "text", "text": "Summarize"}]}))
    assert out["messages"][0]["content"][0] == {
        "type": "file", "file": {"filename": "r.pdf",
                                 "file_data": "data:application/pdf;base64,JVBERi0="}}


def test_assistant_tool_use_becomes_tool_calls_and_thinking_is_dropped() -> None:
    out = to_openai(msgs(USER, {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "hmm", "signature": SIGNATURE},
        {"type": "text", "text": "Checking."},
        {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
         "input": {"location": "Paris"}}]}))
    assistant = out["messages"][1]
    assert assistant["content"] == "Checking."
    assert assistant["tool_calls"] == [{"id": "toolu_1", "type": "function", "function": {
        "name": "get_weather", "arguments": "{\"location\": \"Paris\"}"}}]
    assert "reasoning_content" not in assistant


def test_tool_results_become_tool_messages_before_the_user_text() -> None:
    out = to_openai(msgs(USER, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"},
        {"type": "tool_result", "tool_use_id": "toolu_2",
         "content": [{"type": "text", "text": "12"}, {"type": "text", "text": "00"}],
         "is_error": True},
        {"type": "text", "text": "Thanks"}]}))
    assert out["messages"][1:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "toolu_2", "content": "12\n00"},
        {"role": "user", "content": "Thanks"}]


def test_images_in_tool_results_move_to_a_user_message() -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png",
                                         "data": "iVBOR"}}
    out = to_openai(msgs(USER, {"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": "toolu_1",
         "content": [{"type": "text", "text": "screenshot"}, image]}]}))
    assert out["messages"][1:] == [
        {"role": "tool", "tool_call_id": "toolu_1", "content": "screenshot"},
        {"role": "user", "content": [{"type": "image_url",
                                      "image_url": {"url": "data:image/png;base64,iVBOR"}}]}]


def test_tools_become_function_tools() -> None:
    out = to_openai(msgs(USER, tools=[{"name": "get_weather", "description": "Weather",
                                       "input_schema": {"type": "object"},
                                       "cache_control": {"type": "ephemeral"}}]))
    assert out["tools"] == [{"type": "function", "function": {
        "name": "get_weather", "description": "Weather", "parameters": {"type": "object"}}}]


def test_server_tools_are_refused() -> None:
    with pytest.raises(InvalidRequest) as err:
        to_openai(msgs(USER, tools=[{"type": "web_search_20250305", "name": "web_search"}]))
    assert (err.value.code, err.value.param) == ("unsupported_parameter", "tools[0].type")


@pytest.mark.parametrize(("choice", "expected"), [
    ({"type": "auto"}, {"tool_choice": "auto"}),
    ({"type": "any"}, {"tool_choice": "required"}),
    ({"type": "none"}, {"tool_choice": "none"}),
    ({"type": "tool", "name": "get_weather"},
     {"tool_choice": {"type": "function", "function": {"name": "get_weather"}}}),
    ({"type": "auto", "disable_parallel_tool_use": True},
     {"tool_choice": "auto", "parallel_tool_calls": False}),
])
def test_anthropic_tool_choice_maps(choice: dict[str, Any], expected: dict[str, Any]) -> None:
    tool = {"name": "get_weather", "input_schema": {"type": "object"}}
    out = to_openai(msgs(USER, tools=[tool], tool_choice=choice))
    assert out["tool_choice"] == expected["tool_choice"]
    assert out.get("parallel_tool_calls") == expected.get("parallel_tool_calls")


@pytest.mark.parametrize(("budget", "effort"), [
    (1024, "low"), (4095, "low"), (4096, "medium"), (16383, "medium"), (16384, "high"),
    (32000, "high")])
def test_thinking_budget_becomes_reasoning_effort(budget: int, effort: str) -> None:
    out = to_openai(msgs(USER, max_tokens=40000,
                         thinking={"type": "enabled", "budget_tokens": budget}))
    assert out["reasoning_effort"] == effort
    assert out["max_completion_tokens"] == 40000 and "max_tokens" not in out


@pytest.mark.parametrize("effort", ["low", "medium", "high"])
def test_effort_round_trips_through_the_budget(effort: str) -> None:
    anthropic_body = to_anthropic(chat(USER, reasoning_effort=effort))
    assert to_openai(anthropic_body)["reasoning_effort"] == effort


def test_adaptive_thinking_sets_no_effort() -> None:
    out = to_openai(msgs(USER, thinking={"type": "adaptive"}))
    assert "reasoning_effort" not in out and out["max_tokens"] == 256


def test_stream_asks_for_usage() -> None:
    out = to_openai(msgs(USER, stream=True))
    assert (out["stream"], out["stream_options"]) == (True, {"include_usage": True})


def test_missing_max_tokens_is_refused() -> None:
    body = msgs(USER)
    del body["max_tokens"]
    with pytest.raises(InvalidRequest) as err:
        to_openai(body)
    assert err.value.param == "max_tokens"


@pytest.mark.parametrize(("body", "param"), [
    (msgs(USER, max_tokens="256"), "max_tokens"),
    ({"max_tokens": 10, "messages": {"role": "user"}}, "messages"),
    ({"max_tokens": 10}, "messages"),
    (msgs({"role": "system", "content": "x"}), "messages[0].role"),
    (msgs({"role": "user", "content": 3}), "messages[0].content"),
    (msgs({"role": "user", "content": ["hi"]}), "messages[0].content[0]"),
    (msgs({"role": "user", "content": [{"type": "text", "text": None}]}),
     "messages[0].content[0].text"),
    (msgs({"role": "assistant", "content": [{"type": "tool_use", "id": "t", "name": "f",
                                             "input": [1]}]}), "messages[0].content[0].input"),
    (msgs({"role": "user", "content": [{"type": "tool_result", "content": "x"}]}),
     "messages[0].content[0].tool_use_id"),
    (msgs(USER, system=[{"type": "image"}]), "system[0].type"),
    (msgs(USER, system=5), "system"),
    (msgs(USER, tools=[{"name": "f"}]), "tools[0].input_schema"),
    (msgs(USER, tools=[{"name": "f", "input_schema": {}}], tool_choice={"type": "some"}),
     "tool_choice.type"),
    (msgs(USER, stop_sequences="END"), "stop_sequences"),
    (msgs(USER, temperature=[1]), "temperature"),
    (msgs(USER, metadata=["u"]), "metadata"),
    (msgs(USER, thinking={"type": "enabled", "budget_tokens": "big"}),
     "thinking.budget_tokens"),
    (msgs(USER, stream=1), "stream"),
])
def test_bad_anthropic_shapes_are_invalid_requests(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_openai(body)
    assert err.value.param == param


@pytest.mark.parametrize(("body", "param"), [
    (msgs(USER, mcp_servers=[{"type": "url", "url": "https://x", "name": "x"}]), "mcp_servers"),
    (msgs({"role": "user", "content": [
        {"type": "image", "source": {"type": "file", "file_id": "file_1"}}]}),
     "messages[0].content[0].source.type"),
    (msgs({"role": "user", "content": [{"type": "search_result", "source": "x"}]}),
     "messages[0].content[0].type"),
])
def test_anthropic_features_without_counterpart_are_refused(
    body: dict[str, Any], param: str,
) -> None:
    with pytest.raises(InvalidRequest) as err:
        to_openai(body)
    assert (err.value.code, err.value.param) == ("unsupported_parameter", param)


# --- OpenAI response -> Anthropic response ----------------------------------------------------

def test_text_completion_becomes_an_anthropic_message() -> None:
    resp = completion({"role": "assistant", "content": "Hello"},
                      usage={"prompt_tokens": 50, "completion_tokens": 5,
                             "prompt_tokens_details": {"cached_tokens": 20}})
    out = openai_to_anthropic_response(resp, model="openai/gpt-4o")
    assert out == {"id": "msg_chatcmpl-123", "type": "message", "role": "assistant",
                   "model": "openai/gpt-4o", "content": [{"type": "text", "text": "Hello"}],
                   "stop_reason": "end_turn", "stop_sequence": None,
                   "usage": {"input_tokens": 30, "output_tokens": 5,
                             "cache_read_input_tokens": 20, "cache_creation_input_tokens": 0}}


def test_tool_calls_become_tool_use_blocks_with_parsed_input() -> None:
    out = openai_to_anthropic_response(load("chat_completion_tool_calls.json"), model="m")
    assert out["content"] == [
        {"type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather",
         "input": {"location": "Paris"}},
        {"type": "tool_use", "id": "call_ABCDmO9pD3xa9XTPNJ32zg2h", "name": "get_time",
         "input": {"timezone": "Europe/Paris"}}]
    assert out["stop_reason"] == "tool_use"


def test_reasoning_content_becomes_a_leading_thinking_block() -> None:
    resp = completion({"role": "assistant", "content": "9.8", "reasoning_content": "compare"})
    out = openai_to_anthropic_response(resp, model="m")
    assert out["content"] == [{"type": "thinking", "thinking": "compare", "signature": ""},
                              {"type": "text", "text": "9.8"}]


def test_signed_thinking_blocks_are_preferred_over_reasoning_content() -> None:
    resp = completion({"role": "assistant", "content": "ok", "reasoning_content": "a",
                       "thinking_blocks": [{"type": "thinking", "thinking": "a",
                                            "signature": SIGNATURE}]})
    out = openai_to_anthropic_response(resp, model="m")
    assert out["content"][0] == {"type": "thinking", "thinking": "a", "signature": SIGNATURE}


@pytest.mark.parametrize(("finish", "stop"), [
    ("stop", "end_turn"), ("length", "max_tokens"), ("tool_calls", "tool_use"),
    ("function_call", "tool_use"), ("content_filter", "refusal"), (None, "end_turn")])
def test_finish_reason_maps_to_stop_reason(finish: str | None, stop: str) -> None:
    resp = completion({"role": "assistant", "content": "x"}, finish=finish)  # type: ignore[arg-type]
    assert openai_to_anthropic_response(resp, model="m")["stop_reason"] == stop


def test_refusal_becomes_text_with_refusal_stop_reason() -> None:
    resp = completion({"role": "assistant", "content": None, "refusal": "I can't help."})
    out = openai_to_anthropic_response(resp, model="m")
    assert out["content"] == [{"type": "text", "text": "I can't help."}]
    assert out["stop_reason"] == "refusal"


def test_openai_response_validates_as_an_anthropic_message() -> None:
    out = openai_to_anthropic_response(load("chat_completion_tool_calls.json"), model="m")
    parsed = anthropic.types.Message.model_validate(out)
    assert parsed.usage.cache_read_input_tokens == 128


@pytest.mark.parametrize("resp", [
    {"choices": []}, {"choices": "x"}, {"id": "c", "choices": [{"message": "hi"}]},
    completion({"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{bad"}}]}),
])
def test_malformed_openai_response_is_an_upstream_error(resp: Any) -> None:
    with pytest.raises(UpstreamError) as err:
        openai_to_anthropic_response(resp, model="m")
    assert err.value.code == "upstream_invalid_response"


# --- thinking across a tool-use turn ----------------------------------------------------------

def test_thinking_survives_a_tool_use_turn() -> None:
    upstream = load("message_thinking_tool_use.json")
    answer = from_anthropic(upstream)["choices"][0]["message"]
    follow_up = chat({"role": "user", "content": "Weather in SF?"}, answer,
                     {"role": "tool", "tool_call_id": "toolu_01A09q90qw90lq917835lq9",
                      "content": "15 degrees"},
                     tools=[WEATHER_TOOL], reasoning_effort="low")
    out = to_anthropic(json.loads(json.dumps(follow_up)))
    assistant = out["messages"][1]["content"]
    assert assistant[:2] == upstream["content"][:2]  # thinking + redacted, signature intact
    assert assistant[2:] == upstream["content"][2:]  # then text and tool_use
    assert out["messages"][2]["content"][0]["tool_use_id"] == "toolu_01A09q90qw90lq917835lq9"


# --- junk anywhere is a ProxyError, never a crash ---------------------------------------------

JUNK: list[Any] = [None, 0, -1, 1.5, True, "", "x", [], {}, [1], {"a": 1}, "data:x"]


def _mutations(base: Any, seed: int, count: int) -> list[Any]:
    """`count` copies of `base`, each with one to three values replaced by junk."""
    def paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        items = value.items() if isinstance(value, dict) else \
            enumerate(value) if isinstance(value, list) else []
        return [prefix] + [p for k, v in items for p in paths(v, (*prefix, k))]

    rng = random.Random(seed)
    all_paths = paths(base)[1:]
    out = []
    for _ in range(count):
        value = copy.deepcopy(base)
        for path in rng.sample(all_paths, rng.randint(1, 3)):
            target = value
            try:
                for key in path[:-1]:
                    target = target[key]
                target[path[-1]] = copy.deepcopy(rng.choice(JUNK))
            except (KeyError, IndexError, TypeError):
                pass  # an earlier replacement removed this path
        out.append(value)
    return out


FULL_OPENAI_BODY = chat(
    {"role": "system", "content": [{"type": "text", "text": "s",
                                    "cache_control": {"type": "ephemeral"}}]},
    {"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA=="}}]},
    {"role": "assistant", "content": "c",
     "thinking_blocks": [{"type": "thinking", "thinking": "t", "signature": "s"}],
     "tool_calls": [{"id": "1", "type": "function",
                     "function": {"name": "get_weather", "arguments": "{\"a\": 1}"}}]},
    {"role": "tool", "tool_call_id": "1", "content": [{"type": "text", "text": "r"}]},
    tools=[WEATHER_TOOL], tool_choice={"type": "function", "function": {"name": "get_weather"}},
    parallel_tool_calls=False, stop=["x"], max_tokens=5000, reasoning_effort="high", user="u")
FULL_ANTHROPIC_BODY = msgs(
    {"role": "user", "content": [
        {"type": "text", "text": "hi"},
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "A"}}]},
    {"role": "assistant", "content": [
        {"type": "thinking", "thinking": "t", "signature": "s"},
        {"type": "tool_use", "id": "1", "name": "f", "input": {"a": 1}}]},
    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "1", "content": "r"}]},
    system=[{"type": "text", "text": "s"}], tools=[{"name": "f", "input_schema": {}}],
    tool_choice={"type": "tool", "name": "f", "disable_parallel_tool_use": True},
    thinking={"type": "enabled", "budget_tokens": 2000}, metadata={"user_id": "u"},
    stop_sequences=["x"], stream=True)


def _outcomes(translate: Any, bodies: list[Any]) -> tuple[int, int]:
    """(translated, refused) counts; any other exception fails the test."""
    refused = 0
    for body in bodies:
        try:
            translate(body)
        except InvalidRequest:
            refused += 1
    return len(bodies) - refused, refused


def test_junk_in_an_openai_body_is_only_ever_an_invalid_request() -> None:
    to_anthropic(copy.deepcopy(FULL_OPENAI_BODY))  # the unmutated body is valid
    translated, refused = _outcomes(to_anthropic, _mutations(FULL_OPENAI_BODY, 1, 500))
    assert translated > 0 and refused > 0


def test_junk_in_an_anthropic_body_is_only_ever_an_invalid_request() -> None:
    to_openai(copy.deepcopy(FULL_ANTHROPIC_BODY))
    translated, refused = _outcomes(to_openai, _mutations(FULL_ANTHROPIC_BODY, 2, 500))
    assert translated > 0 and refused > 0
