"""The /messages -> chat stream relay's short path (the usual content_block_delta, written
as Anthropic writes it, encoded straight from its text; `text` for the Responses bridge)
against its general path: the same bytes, the same books, the same failures."""

from __future__ import annotations

import json
from itertools import count
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.providers import responses_stream
from anyrouter_proxy.providers.anthropic import AnthropicToOpenAIRelay
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.responses import ChatBridgeRelay
from anyrouter_proxy.sse import SSEDecoder, SSEEvent
from tests.unit.providers.relay_run import relay_run

DATA = Path(__file__).parents[2] / "data" / "anthropic"


def context(include_usage: bool, response_tool: str | None = None) -> CallContext:
    return CallContext("gen-1", "claude", 7, ProviderConfig("a", "anthropic"),
                       Route("a", "claude-sonnet-4", 0), True, include_usage,
                       request={"model": "claude", "input": "hi", "stream": True},
                       response_tool=response_tool)


def transcript(name: str, compact: bool) -> list[tuple[str | None, str]]:
    """A golden transcript's events; `compact` as the API writes them (no spaces)."""
    events = SSEDecoder().feed((DATA / name).read_bytes())
    return [(e.event, json.dumps(json.loads(e.data), separators=(",", ":"),
                                 ensure_ascii=False) if compact else e.data) for e in events]


def delta(text: str, index: int = 0) -> tuple[str, str]:
    return "content_block_delta", json.dumps(
        {"type": "content_block_delta", "index": index,
         "delta": {"type": "text_delta", "text": text}}, separators=(",", ":"))


def run(events: list[tuple[str | None, str]], include_usage: bool, *, short: bool,
        bridge: bool, response_tool: str | None,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    numbers = count()
    monkeypatch.setattr(responses_stream, "new_item_id", lambda p: f"{p}{next(numbers)}")
    ctx = context(include_usage, response_tool)
    with monkeypatch.context() as patch:
        if not short:
            patch.setattr(AnthropicToOpenAIRelay, "text", lambda self, event: None)
        chat = AnthropicToOpenAIRelay(ctx)
        relay: Any = ChatBridgeRelay(chat, ctx) if bridge else chat
        return relay_run(relay, [SSEEvent(data, name) for name, data in events])


def assert_same(events: list[tuple[str | None, str]], include_usage: bool,
                monkeypatch: pytest.MonkeyPatch, response_tool: str | None = None) -> None:
    for bridge in (False, True):
        runs = [run(events, include_usage, short=short, bridge=bridge,
                    response_tool=response_tool, monkeypatch=monkeypatch)
                for short in (True, False)]
        assert runs[0] == runs[1]


@pytest.mark.parametrize("response_tool", [None, "get_weather"])
@pytest.mark.parametrize("compact", [True, False])
@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", ["stream_text.txt", "stream_tool_use.txt",
                                  "stream_thinking_tool_use.txt", "stream_parallel_tools.txt",
                                  "stream_error.txt"])
def test_golden_transcripts(name: str, include_usage: bool, compact: bool,
                            response_tool: str | None,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same(transcript(name, compact), include_usage, monkeypatch, response_tool)


def test_text_deltas_take_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    events = transcript("stream_text.txt", compact=True)
    relay = AnthropicToOpenAIRelay(context(True))
    taken = [relay.text(SSEEvent(data, name)) for name, data in events[:3]]
    assert taken == [None, None, None]  # message_start, content_block_start, ping
    for name, data in events[:3]:
        relay.chunks(SSEEvent(data, name))
    assert relay.text(SSEEvent(*reversed(delta("Hello")))) == "Hello"
    assert relay.feed(SSEEvent(*reversed(delta(" you")))) == [
        b'data: {"id":"gen-1","object":"chat.completion.chunk","created":7,"model":"claude",'
        b'"choices":[{"index":0,"delta":{"content":" you"},"logprobs":null,'
        b'"finish_reason":null}],"usage":null}\n\n']


ODD = [
    delta(""), delta("caf\u00e9"), delta('say "hi"'), delta("a\\b"), delta("x", index=1),
    delta("x", index=2), ("ping", delta("x")[1]), (None, delta("x")[1]),
    ("message_delta", delta("x")[1]),
    ("content_block_delta", delta("x")[1].replace("text_delta", "thinking_delta")),
    ("content_block_delta", delta("x")[1][:-1] + ',"extra":1}'),
    ("content_block_delta", delta("x")[1] + " "), ("content_block_delta", delta("xy")[1][:-1]),
    ("content_block_stop", '{"type":"content_block_stop","index":0}'),
    ("message_stop", '{"type":"message_stop"}'),
    ("error", '{"type":"error","error":{"type":"overloaded_error","message":"busy"}}'),
]


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("odd", range(len(ODD)))
def test_odd_events_between_usual_ones(odd: int, include_usage: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events = transcript("stream_text.txt", compact=True)
    assert_same([*events[:4], delta("a"), ODD[odd], delta("b"), *events[4:]],
                include_usage, monkeypatch)


def test_before_the_stream_begins(monkeypatch: pytest.MonkeyPatch) -> None:
    events = transcript("stream_text.txt", compact=True)
    assert_same([delta("early"), *events[:2], delta("a"), *events[2:]], True, monkeypatch)


texts = st.text(max_size=5) | st.sampled_from(["", "x", "a b", '"', "\\"])


@settings(max_examples=200, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(pieces=st.lists(st.tuples(texts, st.integers(0, 2), st.booleans()), max_size=8),
       include_usage=st.booleans())
def test_any_text_deltas(pieces: list[tuple[str, int, bool]], include_usage: bool,
                         monkeypatch: pytest.MonkeyPatch) -> None:
    events = transcript("stream_thinking_tool_use.txt", compact=True)
    middle = [delta(text, index) if dense else
              ("content_block_delta", json.dumps(json.loads(delta(text, index)[1])))
              for text, index, dense in pieces]
    assert_same([*events[:3], *middle, *events[3:]], include_usage, monkeypatch)


@pytest.mark.parametrize("include_usage", [True, False])
def test_text_deltas_on_a_thinking_block(include_usage: bool,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    events = transcript("stream_thinking_tool_use.txt", compact=True)  # block 0: thinking
    assert_same([*events[:3], delta("x"), delta("y"), *events[3:]], include_usage, monkeypatch)
