"""ConverseStream events -> Anthropic events (bedrock_stream.py), from golden transcripts."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest

from anyrouter_proxy.config.model import ProviderConfig
from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.anthropic_stream import AnthropicToOpenAIStream
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.bedrock import BedrockOpenAIRelay
from anyrouter_proxy.providers.bedrock_stream import ConverseToAnthropicStream
from anyrouter_proxy.routing import Route
from anyrouter_proxy.sse import SSEEvent
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


# --- the OpenAI relay's short path for text: the same chunks as the two translators -------

ODD_EVENTS = [
    {"event": "messageStart", "data": {"role": "assistant"}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0, "delta": {"text": "a"}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0, "delta": {"text": "a2"}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0, "delta": {"text": ""}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0,
                                            "delta": {"text": "b", "extra": 1}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 1,
                                            "delta": {"reasoningContent": {"text": "t"}}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 1, "delta": {"text": "d"}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 2, "delta": {"text": "é"}}},
    {"event": "contentBlockStop", "data": {"contentBlockIndex": 0}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0, "delta": {"text": "e"}}},
    {"event": "messageStop", "data": {"stopReason": "end_turn"}},
    {"event": "metadata", "data": {"usage": {"inputTokens": 3, "outputTokens": 4}}},
    {"event": "contentBlockDelta", "data": {"contentBlockIndex": 2, "delta": {"text": "f"}}},
]


def relay(response_tool: str | None = None) -> BedrockOpenAIRelay:
    provider = ProviderConfig("aws", "bedrock", region="us-east-1")
    return BedrockOpenAIRelay(CallContext(
        "gen-1", "pub/model", 7, provider, Route("aws", "m", 0), True, True,
        response_tool=response_tool))


def chained(events: list[dict[str, Any]], response_tool: str | None
            ) -> tuple[list[dict[str, Any]], AnthropicToOpenAIStream, ConverseToAnthropicStream]:
    """What the relay gives, by the two translators alone (no short path)."""
    converse = ConverseToAnthropicStream(model="pub/model", message_id="msg_1")
    openai = AnthropicToOpenAIStream(gen_id="gen-1", model="pub/model", created=7,
                                     include_usage=True, response_tool=response_tool)
    chunks = [chunk for e in events for name, data in converse.feed(e["event"], e["data"])
              for chunk in openai.feed(name, data)]
    return chunks, openai, converse


@pytest.mark.parametrize("events", [golden("stream_text.json"), golden("stream_tool_use.json"),
                                    golden("stream_reasoning.json"), ODD_EVENTS],
                         ids=["text", "tool_use", "reasoning", "odd"])
@pytest.mark.parametrize("response_tool", [None, "get_weather"])
def test_the_relay_gives_what_the_two_translators_give(events: list[dict[str, Any]],
                                                       response_tool: str | None) -> None:
    under_test = relay(response_tool)
    got = [chunk for e in events
           for chunk in under_test.chunks(SSEEvent(json.dumps(e["data"]), e["event"]))]
    want, openai, converse = chained(events, response_tool)
    assert got == want
    assert under_test.output_tokens == converse.output_tokens > 0
    assert under_test.usage == converse.usage
    assert under_test.finish_reason == (openai.finish_reason or converse.finish_reason)
    if converse.done:  # the relay's usage chunk also carries the cost
        tail = under_test.finish_chunks()
        for chunk in tail:
            if chunk.get("usage"):
                assert chunk["usage"].pop("cost") == 0.0  # the context prices nothing
        assert tail == openai.finish()


@pytest.mark.parametrize("events", [golden("stream_text.json"), golden("stream_tool_use.json"),
                                    golden("stream_reasoning.json"), ODD_EVENTS],
                         ids=["text", "tool_use", "reasoning", "odd"])
@pytest.mark.parametrize("response_tool", [None, "get_weather"])
def test_the_relays_bytes_and_texts_are_the_two_translators(
        events: list[dict[str, Any]], response_tool: str | None,
        request: pytest.FixtureRequest) -> None:
    """`feed` (a text encoded straight from it) and `text` then `chunks` (the Responses
    bridge's way) give what the two translators give."""
    kind = request.node.callspec.id.split("-")[-1]
    want, _, converse = chained(events, response_tool)
    by_feed = relay(response_tool)
    sent = [part for e in events
            for part in by_feed.feed(SSEEvent(json.dumps(e["data"]), e["event"]))]
    assert sent == [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in want]
    by_text = relay(response_tool)
    got: list[dict[str, Any]] = []
    texts = 0
    for e in events:
        event = SSEEvent(json.dumps(e["data"]), e["event"])
        text = by_text.text(event)
        if text is None:
            got.extend(by_text.chunks(event))
        else:
            texts += 1
            got.append({"id": "gen-1", "object": "chat.completion.chunk", "created": 7,
                        "model": "pub/model", "choices": [{
                            "index": 0, "delta": {"content": text}, "logprobs": None,
                            "finish_reason": None}], "usage": None})
    assert got == want
    for under_test in (by_feed, by_text):
        assert under_test.output_tokens == converse.output_tokens
        assert under_test.usage == converse.usage
    # the short path is taken (not with a structured answer's fold)
    assert texts == (0 if response_tool else {"text": 2, "odd": 1}.get(kind, texts))


def compact(data: dict[str, Any]) -> str:
    """A payload as Bedrock writes it (compact JSON)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def text_delta(text: str, index: int = 0, padding: str | None = "abc") -> str:
    data: dict[str, Any] = {"contentBlockIndex": index, "delta": {"text": text}}
    if padding is not None:
        data["p"] = padding
    return compact(data)


ODD_PAYLOADS: list[str | tuple[str, str]] = [
    text_delta(""), text_delta("caf\u00e9"), text_delta('say "hi"'), text_delta("a\\b"),
    text_delta("x", padding=None), text_delta("x", padding=""), text_delta("x", padding='"'),
    text_delta("x", padding="\u00e9"), text_delta("x", index=1), text_delta("x", index=12),
    text_delta("x", index=2), text_delta("x")[:-1], text_delta("x", padding=None)[:-1],
    text_delta("x").replace('"p":"abc"}', '"p":"}'), text_delta("x").replace("abc", "a\u0001"),
    text_delta("x")[:-1] + ',"q":1}', text_delta("x") + " ",
    compact({"p": "abc", "contentBlockIndex": 0, "delta": {"text": "x"}}),
    compact({"contentBlockIndex": 0, "delta": {"text": "x", "more": 1}, "p": "abc"}),
    compact({"contentBlockIndex": 0, "delta": {"reasoningContent": {"text": "x"}}}),
    text_delta("x").replace('"contentBlockIndex":0', '"contentBlockIndex":0.0'),
    text_delta("x").replace('"contentBlockIndex":0', '"contentBlockIndex":-0'),
    text_delta("x").replace('"text"', '"tExt"'),
    ("contentBlockStop", text_delta("x")), ("messageStart", text_delta("x")),
]


@pytest.mark.parametrize("odd", range(len(ODD_PAYLOADS)))
def test_payloads_as_bedrock_writes_them(odd: int) -> None:
    """Payloads as Bedrock writes them, odd ones among them, against the two translators."""
    reasoning = [e for e in golden("stream_reasoning.json") if e["event"] == "contentBlockDelta"]
    events = [
        (e["event"], compact(e["data"])) for e in golden("stream_text.json")[:2]
    ] + [("contentBlockDelta", text_delta(" a")), odd_event(ODD_PAYLOADS[odd]),
         ("contentBlockDelta", compact({**reasoning[0]["data"], "contentBlockIndex": 1})),
         ("contentBlockDelta", text_delta(" b", index=1)), ("contentBlockDelta", text_delta("c"))
         ] + [(e["event"], compact(e["data"])) for e in golden("stream_text.json")[4:]]
    as_dicts = [{"event": name, "data": json.loads(data)} for name, data in events
                if _is_json(data)]
    broken = len(as_dicts) != len(events)
    by_feed, by_text = relay(), relay()
    sent: list[bytes] = []
    got: list[dict[str, Any]] = []
    failures = []
    for under_test, out in ((by_feed, sent), (by_text, got)):
        try:
            for name, data in events:
                event = SSEEvent(data, name)
                if under_test is by_feed:
                    out.extend(by_feed.feed(event))
                elif (text := by_text.text(event)) is None:
                    out.extend(by_text.chunks(event))
                else:
                    out.append(text_chunk(text))
        except UpstreamError as exc:
            failures.append(exc.code)
    if broken or failures:  # the upstream's fault (not JSON, a wrong index), told alike
        assert failures == ["upstream_invalid_response"] * 2
        return
    want, _, converse = chained(as_dicts, None)
    assert sent == [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in want]
    assert got == want
    assert by_feed.output_tokens == by_text.output_tokens == converse.output_tokens


def odd_event(odd: str | tuple[str, str]) -> tuple[str, str]:
    return odd if isinstance(odd, tuple) else ("contentBlockDelta", odd)


def text_chunk(text: str) -> dict[str, Any]:
    """The chunk `text` stands for (the relay's context asks for usage)."""
    return {"id": "gen-1", "object": "chat.completion.chunk", "created": 7,
            "model": "pub/model", "choices": [{"index": 0, "delta": {"content": text},
                                               "logprobs": None, "finish_reason": None}],
            "usage": None}


def _is_json(data: str) -> bool:
    try:
        json.loads(data)
    except ValueError:
        return False
    return True
