"""Anthropic Messages <-> Bedrock Converse, built inline (bedrock_translate.py)."""

from __future__ import annotations

from typing import Any

import pytest

from anyrouter_proxy.errors import InvalidRequest, UpstreamError
from anyrouter_proxy.output_cap import OutputCap, cap_converse_body, cap_upstream_body
from anyrouter_proxy.providers.bedrock_translate import (
    anthropic_to_converse,
    converse_to_anthropic,
)

CLAUDE = "anthropic.claude-3-5-sonnet-20240620-v1:0"
LLAMA = "meta.llama3-1-70b-instruct-v1:0"


def convert(model: str = CLAUDE, max_output: int | None = None, **body: Any) -> dict[str, Any]:
    body.setdefault("max_tokens", 100)
    body.setdefault("messages", [{"role": "user", "content": "Hi"}])
    return anthropic_to_converse(body, upstream_model=model, max_output=max_output)


def test_cache_control_becomes_cache_points() -> None:
    out = convert(
        system=[{"type": "text", "text": "rules", "cache_control": {"type": "ephemeral",
                                                                    "ttl": "1h"}}],
        tools=[{"name": "t", "input_schema": {"type": "object"},
                "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": [
            {"type": "text", "text": "long doc", "cache_control": {"type": "ephemeral"}},
            {"type": "text", "text": "question"}]}])
    assert out["system"] == [{"text": "rules"}, {"cachePoint": {"type": "default", "ttl": "1h"}}]
    assert out["toolConfig"]["tools"][1] == {"cachePoint": {"type": "default"}}
    assert out["messages"][0]["content"] == [
        {"text": "long doc"}, {"cachePoint": {"type": "default"}}, {"text": "question"}]


def test_documents_and_tool_result_errors() -> None:
    out = convert(messages=[
        {"role": "user", "content": [{"type": "document", "title": "Q3 report.pdf",
                                      "source": {"type": "base64", "media_type":
                                                 "application/pdf", "data": "JVBERi0x"}}]},
        {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "f",
                                           "input": {}}]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": "t1",
                                      "is_error": True, "content": [
                                          {"type": "text", "text": "boom"}]}]}],
        tools=[{"name": "f", "input_schema": {"type": "object"}}])
    assert out["messages"][0]["content"] == [{"document": {
        "format": "pdf", "name": "Q3 report-pdf", "source": {"bytes": "JVBERi0x"}}}]
    assert out["messages"][2]["content"] == [{"toolResult": {
        "toolUseId": "t1", "content": [{"text": "boom"}], "status": "error"}}]


@pytest.mark.parametrize(("history", "expected"), [
    (False, None),
    (True, {"tools": [{"toolSpec": {"name": "f", "inputSchema": {"json": {"type": "object"}}}}]}),
])
def test_tool_choice_none(history: bool, expected: Any) -> None:
    messages: list[dict[str, Any]] = [{"role": "user", "content": "Hi"}]
    if history:
        messages += [{"role": "assistant", "content": [{"type": "tool_use", "id": "t1",
                                                        "name": "f", "input": {}}]},
                     {"role": "user", "content": [{"type": "tool_result",
                                                   "tool_use_id": "t1", "content": "ok"}]}]
    out = convert(messages=messages, tool_choice={"type": "none"},
                  tools=[{"name": "f", "input_schema": {"type": "object"}}])
    assert out.get("toolConfig") == expected


def test_claude_fields_only_for_claude() -> None:
    body = {"thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 40,
            "max_tokens": 2000}
    assert convert(**body)["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_k": 40}
    assert "additionalModelRequestFields" not in convert(LLAMA, **body)
    profile = "arn:aws:bedrock:eu-west-1:1:inference-profile/eu.anthropic.claude-3-haiku"
    assert "additionalModelRequestFields" in convert(profile, **body)


def test_reserved_cap_lowers_max_tokens_and_the_budget() -> None:
    out = convert(max_output=1500, max_tokens=4000,
                  thinking={"type": "enabled", "budget_tokens": 3000})
    assert out["inferenceConfig"]["maxTokens"] == 1500
    assert out["additionalModelRequestFields"]["thinking"]["budget_tokens"] == 1499


def test_the_final_guard_caps_a_converse_body() -> None:
    body: dict[str, Any] = {"messages": []}
    cap_upstream_body("/model/x%3A0/converse-stream", body, OutputCap(300))
    assert body["inferenceConfig"] == {"maxTokens": 300}
    body["inferenceConfig"]["maxTokens"] = 10**6
    cap_converse_body(body, 300)
    assert body["inferenceConfig"]["maxTokens"] == 300


@pytest.mark.parametrize("block", [
    {"type": "image", "source": {"type": "url", "url": "https://x.example/a.png"}},
    {"type": "image", "source": {"type": "base64", "media_type": "image/tiff", "data": "AA"}},
    {"type": "document", "source": {"type": "file", "file_id": "file_1"}},
    {"type": "search_result", "source": "x", "title": "t", "content": []},
])
def test_what_converse_cannot_take_is_refused(block: dict[str, Any]) -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(messages=[{"role": "user", "content": [block]}])
    assert caught.value.code == "unsupported_parameter"
    assert caught.value.param is not None and caught.value.param.startswith("messages[0]")


def test_server_tools_are_refused() -> None:
    with pytest.raises(InvalidRequest) as caught:
        convert(tools=[{"type": "web_search_20250305", "name": "web_search"}])
    assert caught.value.param == "tools[0].type"


def test_answer_blocks_and_stop_reasons() -> None:
    message = converse_to_anthropic({
        "output": {"message": {"role": "assistant", "content": [
            {"reasoningContent": {"redactedContent": "ZW5jcnlwdGVk"}},
            {"text": "I can't help with that."},
            {"guardContent": {"text": {"text": "x"}}}]}},
        "stopReason": "guardrail_intervened",
        "usage": {"inputTokens": 3, "outputTokens": 4, "totalTokens": 7}}, model="m")
    assert message["content"] == [{"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"},
                                  {"type": "text", "text": "I can't help with that."}]
    assert message["stop_reason"] == "refusal"
    assert message["usage"] == {"input_tokens": 3, "output_tokens": 4,
                                "cache_read_input_tokens": 0,
                                "cache_creation_input_tokens": 0}


def test_an_answer_of_the_wrong_shape_is_the_upstreams_fault() -> None:
    with pytest.raises(UpstreamError) as caught:
        converse_to_anthropic({"output": {"message": {"content": "text"}}}, model="m")
    assert caught.value.code == "upstream_invalid_response"
