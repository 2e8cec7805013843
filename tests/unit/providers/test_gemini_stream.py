"""GeminiToOpenAIStream against the golden SSE transcripts in tests/data/gemini/."""

from __future__ import annotations

import json
from typing import Any

import pytest

from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.gemini_response import PromptBlocked
from anyrouter_proxy.providers.gemini_stream import GeminiToOpenAIStream
from anyrouter_proxy.sse import SSEDecoder
from anyrouter_proxy.types import PARTIAL, PROVIDER, Usage
from tests.fake_gemini import golden, sse_events


def stream(include_usage: bool = True) -> GeminiToOpenAIStream:
    return GeminiToOpenAIStream(gen_id="gen-1", model="google/flash", created=7,
                                include_usage=include_usage, provider="gemini")


def events(name: str) -> list[dict[str, Any]]:
    """The transcript through the proxy's own SSE decoder (CRLF, split reads)."""
    decoder = SSEDecoder()
    raw = b"".join(sse_events(name))
    parsed = [e for i in range(0, len(raw), 7) for e in decoder.feed(raw[i:i + 7])]
    return [json.loads(e.data) for e in parsed]


def deltas(chunks: list[dict[str, Any]]) -> list[tuple[dict[str, Any], str | None]]:
    return [(c["choices"][0]["delta"], c["choices"][0]["finish_reason"])
            for c in chunks if c["choices"]]


def test_the_golden_text_stream() -> None:
    translator = stream()
    transcript = events("stream_text.sse")
    first = translator.feed(transcript[0])
    assert deltas(first) == [({"role": "assistant", "content": "",
                               "reasoning_content": "**Planning**\nA short, friendly answer."},
                              None)]
    assert first[0]["id"] == "gen-1" and first[0]["usage"] is None
    assert translator.usage is not None and translator.usage.source == PARTIAL
    assert translator.usage.prompt_tokens == 120
    rest = translator.feed(transcript[1]) + translator.feed(transcript[2])
    assert deltas(rest) == [({"content": "Hello from "}, None),
                            ({"content": "the fake Gemini!"}, None), ({}, "stop")]
    assert translator.usage == Usage(prompt_tokens=120, completion_tokens=55, cached_tokens=64,
                                     reasoning_tokens=48, source=PROVIDER)
    assert translator.finish_reason == "stop"
    assert translator.upstream_id == "qFPnaMj0Jp2t7M8PgZSl-AQ"
    assert translator.output_tokens > 0
    [usage_chunk] = translator.finish()
    assert usage_chunk["choices"] == []
    assert usage_chunk["usage"]["completion_tokens_details"] == {"reasoning_tokens": 48}


def test_no_usage_chunk_unless_asked() -> None:
    translator = stream(include_usage=False)
    chunks = [c for e in events("stream_text.sse") for c in translator.feed(e)]
    assert all("usage" not in c for c in chunks)
    assert translator.finish() == []
    assert translator.usage is not None and translator.usage.source == PROVIDER


def test_the_golden_parallel_calls_stream() -> None:
    translator = stream()
    chunks = [c for e in events("stream_parallel_calls.sse") for c in translator.feed(e)]
    calls = [call for delta, _ in deltas(chunks) for call in delta.get("tool_calls", [])]
    assert [(c["index"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in calls] == [(0, "get_weather", {"city": "Paris"}),
                                (1, "get_weather", {"city": "Tokyo"})]
    assert calls[0]["extra_content"]["google"]["thought_signature"].startswith("CiQB")
    assert deltas(chunks)[-1] == ({}, "tool_calls")
    assert translator.finish_reason == "tool_calls"


def test_candidates_are_followed_apart() -> None:
    translator = stream(include_usage=False)
    piece = [{"content": {"role": "model", "parts": [{"text": "a"}]}, "index": 0},
             {"content": {"role": "model", "parts": [{"text": "b"}]}, "index": 1}]
    translator.feed({"candidates": piece})
    done = [{**piece[1], "finishReason": "MAX_TOKENS"}]
    translator.feed({"candidates": done})
    assert not translator.complete  # candidate 0 runs on
    with pytest.raises(UpstreamError):
        translator.finish()
    last = translator.feed({"candidates": [{**piece[0], "finishReason": "STOP"}],
                            "usageMetadata": {"promptTokenCount": 5}})
    assert [(c["choices"][0]["index"], c["choices"][0]["finish_reason"]) for c in last] == [
        (0, None), (0, "stop")]
    assert translator.complete and translator.finish_reason == "stop"
    assert translator.usage is not None and translator.usage.source == PROVIDER


def test_a_stream_cut_short_keeps_partial_usage_and_refuses_to_finish() -> None:
    translator = stream()
    for event in events("stream_text.sse")[:2]:
        translator.feed(event)
    assert translator.usage is not None and translator.usage.source == PARTIAL
    assert translator.finish_reason is None
    with pytest.raises(UpstreamError, match="finishReason"):
        translator.finish()


def test_a_blocked_prompt_raises_prompt_blocked() -> None:
    with pytest.raises(PromptBlocked):
        stream().feed(golden("blocked_prompt.json"))


@pytest.mark.parametrize("content", [
    {"parts": [{"functionCall": "x"}]}, {"parts": [5]}, {"parts": "text"}, ["parts"],
    {"parts": [{"text": "a"}, 5]}])
def test_an_event_of_the_wrong_shape_is_the_upstreams_fault(content: Any) -> None:
    with pytest.raises(UpstreamError) as caught:
        stream().feed({"candidates": [{"content": content}]})
    assert caught.value.code == "upstream_invalid_response"


def test_usage_is_read_from_the_last_event_that_had_it() -> None:
    translator = stream()
    translator.feed({"candidates": [{"content": {"parts": [{"text": "a"}]}}],
                     "usageMetadata": {"promptTokenCount": 3, "candidatesTokenCount": 1}})
    assert translator.usage == Usage(prompt_tokens=3, completion_tokens=1, source=PARTIAL)
    translator.feed({"candidates": [{"content": {"parts": [{"text": "b"}]},
                                     "finishReason": "STOP"}]})  # no usage: the last stands
    assert translator.usage == Usage(prompt_tokens=3, completion_tokens=1, source=PARTIAL)
    translator.feed({"candidates": [], "usageMetadata": {"promptTokenCount": 3,
                                                         "candidatesTokenCount": 2}})
    assert translator.usage == Usage(prompt_tokens=3, completion_tokens=2, source=PROVIDER)
