"""OpenAI chat <-> Gemini translation (gemini_request, gemini_generation, gemini_response)
against golden payloads in tests/data/gemini/."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from anyrouter_proxy.errors import InvalidRequest, UpstreamError
from anyrouter_proxy.providers.gemini_request import SKIP_SIGNATURE, openai_to_gemini_request
from anyrouter_proxy.providers.gemini_response import (
    PromptBlocked,
    finish_reason,
    gemini_to_openai_response,
    gemini_usage,
    prompt_block,
)
from anyrouter_proxy.types import Usage
from tests.fake_gemini import golden

USER = [{"role": "user", "content": "Hi"}]


def request(**body: Any) -> dict[str, Any]:
    return openai_to_gemini_request({"messages": USER, **body}, model="gemini-2.5-flash")


def test_the_golden_request() -> None:
    """System and developer text, images inline and by URL, audio, a PDF, parallel tool
    calls (one signed) and their results, a text user turn merged after them, a replayed
    unsigned call on Gemini 3, tools, tool_choice, a JSON schema, reasoning, sampling."""
    body = golden("openai_chat_request.json")
    before = copy.deepcopy(body)
    out = openai_to_gemini_request(body, model="gemini-3-pro-preview", max_output=16000)
    assert out == golden("gemini_request_expected.json")
    assert body == before  # the client's body is left as it was


def test_only_gemini_3_and_later_get_the_signature_placeholder() -> None:
    messages = [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}},
        {"id": "c2", "type": "function", "function": {"name": "f", "arguments": "{}"}}]},
                {"role": "tool", "tool_call_id": "c1", "content": "a"},
                {"role": "tool", "tool_call_id": "c2", "content": "b"}]
    for model, signed in (("gemini-2.5-pro", False), ("gemini-3-pro-preview", True),
                          ("gemini-3.1-flash", True), ("tunedModels/gemini-10-x", True)):
        parts = openai_to_gemini_request({"messages": messages}, model=model)["contents"][1][
            "parts"]
        assert ("thoughtSignature" in parts[0]) is signed, model
        assert parts[0].get("thoughtSignature", SKIP_SIGNATURE) == SKIP_SIGNATURE
        assert "thoughtSignature" not in parts[1]  # only a turn's first call carries one


@pytest.mark.parametrize(("body", "param"), [
    ({"logprobs": True}, "logprobs"),
    ({"top_logprobs": 2}, "top_logprobs"),
    ({"functions": [{"name": "f"}]}, "functions"),
    ({"modalities": ["text", "audio"]}, "modalities"),
    ({"web_search_options": {}}, "web_search_options"),
    ({"tools": [{"type": "custom", "custom": {"name": "x"}}]}, "tools[0].type"),
    ({"messages": [{"role": "user", "content": [{"type": "file", "file": {"file_id": "f1"}}]}]},
     "messages[0].content[0].file.file_id"),
])
def test_what_gemini_cannot_take_is_refused(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request(**body)
    assert (caught.value.code, caught.value.param) == ("unsupported_parameter", param)


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": [{"role": "system", "content": "only a system prompt"}]}, "messages"),
    ({"messages": [*USER, {"role": "tool", "tool_call_id": "nope", "content": "x"}]},
     "messages[1].tool_call_id"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "messages[0].role"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "ftp://x/y.png"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png,notbase64"}}]}]},
     "messages[0].content[0].image_url"),
    ({"messages": [*USER, {"role": "assistant", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "[1]"}}]}]},
     "messages[1].tool_calls[0].function.arguments"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"reasoning_effort": "extreme"}, "reasoning_effort"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"response_format": {"type": "xml"}}, "response_format.type"),
])
def test_bad_requests_name_the_field(body: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        request(**body)
    assert caught.value.param == param


@pytest.mark.parametrize(("body", "max_output", "config"), [
    ({}, None, None),
    ({}, 4096, {"maxOutputTokens": 4096}),
    ({"max_tokens": 100, "max_completion_tokens": 300}, 4096, {"maxOutputTokens": 300}),
    ({"max_tokens": 9000}, 4096, {"maxOutputTokens": 4096}),  # never above the reservation
    ({"reasoning_effort": "none"}, None, {"thinkingConfig": {"thinkingBudget": 0}}),
    ({"reasoning_effort": "high", "max_tokens": 1000}, None,
     {"maxOutputTokens": 1000,  # the budget shrinks below the cap (thinking counts in it)
      "thinkingConfig": {"thinkingBudget": 999, "includeThoughts": True}}),
    ({"reasoning": {"max_tokens": 3000, "exclude": True}}, None,
     {"thinkingConfig": {"thinkingBudget": 3000}}),
    ({"reasoning": {"effort": "low"}}, None,
     {"thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}}),
    ({"thinking": {"type": "enabled", "budget_tokens": 5000}}, None,
     {"thinkingConfig": {"thinkingBudget": 5000, "includeThoughts": True}}),
    ({"thinking": {"type": "disabled"}}, None, {"thinkingConfig": {"thinkingBudget": 0}}),
    ({"stop": ["a", "b"], "top_k": 40, "frequency_penalty": -0.5}, None,
     {"stopSequences": ["a", "b"], "topK": 40, "frequencyPenalty": -0.5}),
    ({"response_format": {"type": "text"}, "n": 1}, None, None),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None,
     {"responseMimeType": "application/json"}),
])
def test_generation_config(body: dict[str, Any], max_output: int | None,
                           config: dict[str, Any] | None) -> None:
    out = openai_to_gemini_request({"messages": USER, **body}, model="gemini-2.5-flash",
                                   max_output=max_output)
    assert out.get("generationConfig") == config


def test_dropped_fields_do_not_reach_gemini() -> None:
    out = request(user="u", metadata={"a": "b"}, store=True, service_tier="auto",
                  logit_bias={"1": 2}, parallel_tool_calls=False, prediction={},
                  stream_options={"include_usage": True}, tool_choice="auto")
    assert out == {"contents": [{"role": "user", "parts": [{"text": "Hi"}]}]}


# -- answers ---------------------------------------------------------------------------------

def answer(name: str | dict[str, Any]) -> dict[str, Any]:
    data = golden(name) if isinstance(name, str) else name
    return gemini_to_openai_response(data, gen_id="gen-1", model="google/flash", created=7)


def test_the_golden_text_answer() -> None:
    assert answer("generate_text.json") == {
        "id": "gen-1", "object": "chat.completion", "created": 7, "model": "google/flash",
        "choices": [{"index": 0, "logprobs": None, "finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hello from the fake Gemini!", "refusal": None,
            "reasoning_content": "**Thinking about the sea**\nThe user wants a short answer."}}],
        "usage": {"prompt_tokens": 120, "completion_tokens": 55, "total_tokens": 175,
                  "prompt_tokens_details": {"cached_tokens": 64},
                  "completion_tokens_details": {"reasoning_tokens": 48}}}


def test_the_golden_parallel_calls() -> None:
    choice = answer("generate_parallel_calls.json")["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] is None
    calls = message["tool_calls"]
    assert [c["function"] for c in calls] == [
        {"name": "get_weather", "arguments": '{"city":"Paris"}'},
        {"name": "get_weather", "arguments": '{"city":"Tokyo"}'}]
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert calls[0]["extra_content"]["google"]["thought_signature"].startswith("CiQB")
    assert "extra_content" not in calls[1]


def test_gemini_call_ids_are_kept() -> None:
    data = {"candidates": [{"content": {"role": "model", "parts": [
        {"functionCall": {"id": "fc-9", "name": "f", "args": {}}}]}, "finishReason": "STOP"}]}
    assert answer(data)["choices"][0]["message"]["tool_calls"][0]["id"] == "fc-9"


def test_several_candidates_are_several_choices() -> None:
    data = {"candidates": [
        {"content": {"role": "model", "parts": [{"text": "one"}]}, "finishReason": "STOP",
         "index": 0},
        {"content": {"role": "model", "parts": [{"text": "two"}]}, "finishReason": "MAX_TOKENS",
         "index": 1}]}
    choices = answer(data)["choices"]
    assert [(c["index"], c["message"]["content"], c["finish_reason"]) for c in choices] == [
        (0, "one", "stop"), (1, "two", "length")]


@pytest.mark.parametrize(("reason", "calls", "expected"), [
    ("STOP", False, "stop"), ("STOP", True, "tool_calls"), ("MAX_TOKENS", True, "length"),
    ("SAFETY", False, "content_filter"), ("RECITATION", False, "content_filter"),
    ("PROHIBITED_CONTENT", False, "content_filter"), ("SPII", False, "content_filter"),
    ("BLOCKLIST", False, "content_filter"), ("MALFORMED_FUNCTION_CALL", False, "stop"),
    ("OTHER", False, "stop"), (None, False, None), ("", False, None),
])
def test_finish_reasons(reason: str | None, calls: bool, expected: str | None) -> None:
    assert finish_reason(reason, calls) == expected


def test_usage_counts_thoughts_as_output_and_tool_prompts_as_input() -> None:
    assert gemini_usage({"promptTokenCount": 100, "toolUsePromptTokenCount": 30,
                         "candidatesTokenCount": 10, "thoughtsTokenCount": 25,
                         "cachedContentTokenCount": 40, "totalTokenCount": 165}) == Usage(
        prompt_tokens=130, completion_tokens=35, cached_tokens=40, reasoning_tokens=25)
    assert gemini_usage({"promptTokenCount": "9", "candidatesTokenCount": -3}) == Usage()
    assert gemini_usage(None) is None


def test_a_blocked_prompt() -> None:
    blocked = prompt_block(golden("blocked_prompt.json"), "gemini")
    assert isinstance(blocked, PromptBlocked)
    assert (blocked.status, blocked.code) == (400, "content_filter")
    assert blocked.message == "Provider gemini blocked the prompt (SAFETY)"
    assert prompt_block(golden("generate_text.json"), "gemini") is None


@pytest.mark.parametrize("data", [
    {"candidates": []}, {"candidates": "x"}, {"candidates": [{"content": {"parts": "x"}}]},
    {"candidates": [{"content": {"parts": [{"functionCall": {"args": {}}}]}}]}, [],
])
def test_an_answer_of_the_wrong_shape_is_the_upstreams_fault(data: Any) -> None:
    with pytest.raises(UpstreamError) as caught:
        answer(data)
    assert caught.value.code == "upstream_invalid_response"


def test_golden_files_are_google_shaped() -> None:
    """The goldens keep Google's own totals: prompt + candidates + thoughts."""
    for name in ("generate_text.json", "generate_parallel_calls.json"):
        meta = golden(name)["usageMetadata"]
        assert meta["totalTokenCount"] == meta["promptTokenCount"] + meta[
            "candidatesTokenCount"] + meta.get("thoughtsTokenCount", 0)
