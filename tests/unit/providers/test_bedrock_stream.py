"""ConverseStream events -> Anthropic events (bedrock_stream.py), from golden transcripts."""

from __future__ import annotations

from typing import Any

import pytest

from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.bedrock_stream import ConverseToAnthropicStream
from tests.fake_bedrock import golden


def run(events: list[dict[str, Any]]) -> tuple[ConverseToAnthropicStream, list[Any]]:
    stream = ConverseToAnthropicStream(model="pub/model", message_id="msg_1")
    out = [pair for e in events for pair in stream.feed(e["event"], e["data"])]
    return stream, out


def test_tool_use_stream() -> None:
    stream, out = run(golden("stream_tool_use.json"))
    assert [name for name, _ in out] == [
        "message_start", "content_block_start", "content_block_delta", "content_block_stop",
        "content_block_start", "content_block_delta", "content_block_delta",
        "content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    assert out[0][1]["message"]["model"] == "pub/model"
    assert out[4][1] == {"type": "content_block_start", "index": 1, "content_block": {
        "type": "tool_use", "id": "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q", "name": "get_weather",
        "input": {}}}
    assert "".join(d["delta"]["partial_json"] for n, d in out[5:8]) == '{"city": "Paris"}'
    assert out[9][1]["delta"]["stop_reason"] == "tool_use"
    assert out[9][1]["usage"]["input_tokens"] == 40
    assert stream.done and stream.finish_reason == "tool_calls"
    assert stream.usage is not None and stream.usage.completion_tokens == 18


def test_reasoning_then_text() -> None:
    stream, out = run(golden("stream_reasoning.json"))
    starts = [d["content_block"] for n, d in out if n == "content_block_start"]
    assert starts == [{"type": "thinking", "thinking": "", "signature": ""},
                      {"type": "text", "text": ""}]
    deltas = [d["delta"] for n, d in out if n == "content_block_delta"]
    assert deltas[2] == {"type": "signature_delta", "signature": "EqoBCkgIARABGAIiQL2s"}
    assert stream.output_tokens >= 3


def test_indexes_are_renumbered_in_opening_order() -> None:
    _, out = run([{"event": "messageStart", "data": {"role": "assistant"}},
                  {"event": "contentBlockStop", "data": {"contentBlockIndex": 0}},
                  {"event": "contentBlockDelta", "data": {"contentBlockIndex": 1,
                                                          "delta": {"text": "x"}}}])
    assert [(n, d.get("index")) for n, d in out] == [
        ("message_start", None), ("content_block_start", 0), ("content_block_delta", 0)]


def test_usage_and_stop_in_either_order_end_the_message_once() -> None:
    events = golden("stream_text.json")
    stream, out = run([*events[:-2], events[-1], events[-2]])
    assert [n for n, _ in out][-2:] == ["message_delta", "message_stop"]
    assert stream.done
    assert stream.feed("contentBlockDelta", {"contentBlockIndex": 0,
                                             "delta": {"text": "late"}}) == []


def test_without_metadata_the_stream_is_not_done() -> None:
    stream, out = run(golden("stream_text.json")[:-1])
    assert not stream.done and stream.usage is None
    assert stream.output_tokens == 7  # "Hello" + " from" + " Bedrock!" at 3 chars a token
    assert "message_stop" not in [n for n, _ in out]


def test_an_event_of_the_wrong_shape_is_the_upstreams_fault() -> None:
    stream = ConverseToAnthropicStream(model="m", message_id="msg_1")
    with pytest.raises(UpstreamError):
        stream.feed("contentBlockDelta", {"contentBlockIndex": "zero", "delta": {}})
