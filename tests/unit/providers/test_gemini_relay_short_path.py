"""The Gemini stream relay's short path (the usual event, one more piece of text, encoded
straight from its text; `text` for the Responses bridge) against its general path: the
same bytes to the client, the same books, the same failures, whatever comes."""

from __future__ import annotations

import json
from itertools import count
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.providers import gemini_response, responses_stream
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.gemini_relay import GeminiToOpenAIRelay
from anyrouter_proxy.providers.responses import ChatBridgeRelay
from anyrouter_proxy.sse import SSEEvent
from tests.fake_gemini import sse_events
from tests.unit.providers.relay_run import relay_run


def context(include_usage: bool) -> CallContext:
    return CallContext("gen-1", "google/flash", 7, ProviderConfig("g", "gemini"),
                       Route("g", "gemini-2.5-flash", 0), True, include_usage,
                       request={"model": "google/flash", "input": "hi", "stream": True})


def golden(name: str) -> list[str]:
    return [event.decode()[6:-4] for event in sse_events(name)]


def piece(text: Any, **candidate: Any) -> dict[str, Any]:
    return {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"},
                            "index": 0, **candidate}],
            "usageMetadata": {"promptTokenCount": 5, "candidatesTokenCount": 2},
            "modelVersion": "gemini-2.5-flash", "responseId": "resp-1"}


def run(events: list[str], include_usage: bool, *, short: bool, bridge: bool,
        monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    numbers = count()
    monkeypatch.setattr(responses_stream, "new_item_id", lambda p: f"{p}{next(numbers)}")
    monkeypatch.setattr(gemini_response, "new_call_id", lambda: f"call_{next(numbers)}")
    ctx = context(include_usage)
    chat = GeminiToOpenAIRelay(ctx)
    if not short:
        chat._stream.text = lambda data: None  # type: ignore[method-assign]
    relay: Any = ChatBridgeRelay(chat, ctx) if bridge else chat
    return relay_run(relay, [SSEEvent(data) for data in events])


def assert_same(events: list[str], include_usage: bool,
                monkeypatch: pytest.MonkeyPatch) -> None:
    for bridge in (False, True):
        short = run(events, include_usage, short=True, bridge=bridge, monkeypatch=monkeypatch)
        general = run(events, include_usage, short=False, bridge=bridge,
                      monkeypatch=monkeypatch)
        assert short == general


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("name", ["stream_text.sse", "stream_parallel_calls.sse"])
def test_golden_transcripts(name: str, include_usage: bool,
                            monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same(golden(name), include_usage, monkeypatch)


def test_text_events_take_the_short_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from anyrouter_proxy.providers import gemini_relay

    general: list[Any] = []
    original = gemini_relay._feed
    monkeypatch.setattr(gemini_relay, "_feed",
                        lambda stream, data, ctx: general.append(data) or original(
                            stream, data, ctx))
    events = [piece("Hi"), piece(" there"), piece(" caf\u00e9 \"x\""),
              piece("!", finishReason="STOP")]
    out = run([json.dumps(e) for e in events], True, short=True, bridge=False,
              monkeypatch=monkeypatch)
    assert general == [events[0], events[3]]  # the first (it opens the candidate), the last
    assert out["sent"][1] == (b'data: {"id":"gen-1","object":"chat.completion.chunk",'
                              b'"created":7,"model":"google/flash","choices":[{"index":0,'
                              b'"delta":{"content":" there"},"logprobs":null,'
                              b'"finish_reason":null}],"usage":null}\n\n')


ODD = [
    piece("x", finishReason="STOP"), piece("x", finishReason=""), piece("x", finishReason=5),
    piece("x", index=1), piece("x", index=True), piece("x", index=None), piece("x", index="0"),
    piece(""), piece(5), piece(None), piece("x", safetyRatings=[]),
    {**piece("x"), "promptFeedback": {"blockReason": "SAFETY"}},
    {**piece("x"), "promptFeedback": {}}, {**piece("x"), "usageMetadata": 5},
    {**piece("x"), "usageMetadata": None}, {**piece("x"), "responseId": 5},
    {**piece("x"), "error": {"message": "boom"}},
    {"candidates": [{"content": {"parts": [{"text": "a"}, {"text": "b"}]}}]},
    {"candidates": [{"content": {"parts": [{"text": "a", "thought": True}]}}]},
    {"candidates": [{"content": {"parts": [{"functionCall": {"name": "f", "args": {}}}]}}]},
    {"candidates": [{"content": {"parts": []}}]}, {"candidates": [{"content": "x"}]},
    {"candidates": [{"content": {"parts": "x"}}]}, {"candidates": [5]}, {"candidates": []},
    {"candidates": [piece("a")["candidates"][0], piece("b", index=1)["candidates"][0]]},
    {"usageMetadata": {"promptTokenCount": 9}}, [1, 2],
]
# After a first event that opened two candidates.
ODD_OF_TWO = [piece("x", index=1), piece("x", index=True), piece("x", index=1.0),
              piece("x", index=0.0), piece("x", index=False),
              piece("x", index=1, finishReason="STOP")]


@pytest.mark.parametrize("odd", range(len(ODD_OF_TWO)))
def test_odd_events_of_two_candidates(odd: int, monkeypatch: pytest.MonkeyPatch) -> None:
    both = {"candidates": [piece("a")["candidates"][0], piece("b", index=1)["candidates"][0]]}
    events = [both, piece("c"), ODD_OF_TWO[odd], piece("d", index=1), piece("e"),
              {"candidates": [piece("f", index=1, finishReason="STOP")["candidates"][0],
                              piece("g", finishReason="STOP")["candidates"][0]]}]
    assert_same([json.dumps(e) for e in events], True, monkeypatch)


@pytest.mark.parametrize("include_usage", [True, False])
@pytest.mark.parametrize("odd", range(len(ODD)))
def test_odd_events_between_usual_ones(odd: int, include_usage: bool,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    events = [piece("first"), piece("second"), ODD[odd], piece("third"),
              piece("last", finishReason="STOP"), piece("after")]
    assert_same([json.dumps(e) for e in events], include_usage, monkeypatch)


scalars = st.none() | st.booleans() | st.integers(-3, 3) | st.text(max_size=4)
parts = st.lists(st.fixed_dictionaries({}, optional={
    "text": st.text(max_size=4) | scalars, "thought": st.booleans() | scalars}), max_size=2)
candidates = st.fixed_dictionaries({}, optional={
    "content": st.fixed_dictionaries({}, optional={"parts": parts | scalars,
                                                   "role": st.just("model")}) | scalars,
    "index": st.integers(0, 1) | scalars,
    "finishReason": st.sampled_from(["STOP", "MAX_TOKENS", ""]) | scalars,
})
events = st.fixed_dictionaries({}, optional={
    "candidates": st.lists(candidates, max_size=2) | scalars,
    "usageMetadata": st.fixed_dictionaries({}, optional={
        "promptTokenCount": st.integers(0, 9), "candidatesTokenCount": st.integers(0, 9)})
    | scalars,
    "responseId": st.text(max_size=3) | scalars,
})


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(stream=st.lists(events | st.sampled_from([piece("a"), piece("b"), piece("c")]),
                       max_size=8),
       include_usage=st.booleans())
def test_any_events(stream: list[dict[str, Any]], include_usage: bool,
                    monkeypatch: pytest.MonkeyPatch) -> None:
    assert_same([json.dumps(e) for e in stream], include_usage, monkeypatch)
