"""Hypothesis fuzz of the OpenAI <-> Anthropic translation (pure functions).

Every position of a request, a response or a stream event gets either a plausible value
or an arbitrary JSON value (what `orjson.loads` can produce: dicts, lists, strings, 64-bit
ints, finite floats, booleans, null). Whatever comes in, the translators raise nothing but
the documented `ProxyError`s: `InvalidRequest` (400) for a client's request, `UpstreamError`
(502) for an upstream's answer or stream; and what they produce is JSON the gateway can
serialise. Bounded: a few hundred examples per function, no deadline.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from anyrouter_proxy.config.model import ProviderConfig, Route
from anyrouter_proxy.errors import InvalidRequest, ProxyError, UpstreamError
from anyrouter_proxy.providers.anthropic import AnthropicRelay, AnthropicToOpenAIRelay
from anyrouter_proxy.providers.anthropic_client import (
    anthropic_to_openai_request,
    openai_to_anthropic_response,
)
from anyrouter_proxy.providers.anthropic_stream import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
)
from anyrouter_proxy.providers.anthropic_translate import (
    anthropic_to_openai_response,
    openai_to_anthropic_request,
)
from anyrouter_proxy.providers.base import CallContext
from anyrouter_proxy.providers.openai import OpenAIStreamRelay, OpenAIToAnthropicRelay
from anyrouter_proxy.sse import SSEEvent

FUZZ = settings(max_examples=300, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- arbitrary JSON ----------------------------------------------------------------------------

# Numbers stay within what JSON producers interoperably emit (|x| <= 2**53, floats to 1e15):
# absurd magnitudes have their own regression tests below, so this fuzz stays deterministic.
scalars = (st.none() | st.booleans() | st.integers(min_value=-2**53, max_value=2**53)
           | st.floats(min_value=-1e15, max_value=1e15) | st.text(max_size=12))
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                  max_size=4),
    max_leaves=12)


def either(plausible: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A plausible value most of the time, anything JSON some of the time."""
    return st.one_of(plausible, plausible, json_values)


def obj(required: dict[str, st.SearchStrategy[Any]] | None = None,
        **optional: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries({k: either(v) for k, v in (required or {}).items()},
                                 optional={k: either(v) for k, v in optional.items()})


def one_of_words(*words: str) -> st.SearchStrategy[str]:
    return st.sampled_from(words) | st.text(max_size=8)


short_text = st.text(max_size=16)
small_int = st.integers(min_value=-5, max_value=40000)
number = st.floats(min_value=-3, max_value=3, allow_nan=False) | st.integers(-3, 3)
arguments = st.sampled_from(['{"city": "Paris"}', "", "{}", "[1]", "nul", '{"a": ', "  "]) \
    | st.text(max_size=12)
urls = st.sampled_from(["https://x.test/cat.png", "http://x.test/a", "data:image/png;base64,AAA",
                        "data:image/png,AAA", "data:;base64,", "ftp://x", "data:a;b;base64,QQ=="])
cache = st.just({"type": "ephemeral"})

# -- OpenAI chat request -------------------------------------------------------------------------

openai_part = obj(
    {"type": one_of_words("text", "image_url", "file", "input_audio", "refusal")},
    text=short_text, refusal=short_text, cache_control=cache,
    image_url=obj(url=urls, detail=st.just("low")) | urls,
    file=obj(file_data=urls, filename=short_text, file_id=short_text),
    input_audio=obj(data=short_text))
openai_tool_call = obj(
    id=short_text, type=one_of_words("function", "custom"),
    function=obj(name=short_text, arguments=arguments))
thinking_block = obj({"type": one_of_words("thinking", "redacted_thinking")},
                     thinking=short_text, signature=short_text, data=short_text)
openai_message = obj(
    {"role": one_of_words("system", "developer", "user", "assistant", "tool")},
    content=short_text | st.none() | st.lists(openai_part, max_size=3),
    tool_calls=st.lists(openai_tool_call, max_size=2), tool_call_id=short_text,
    thinking_blocks=st.lists(thinking_block, max_size=2), cache_control=cache,
    name=short_text, reasoning_content=short_text)
openai_tool = obj(
    type=one_of_words("function", "web_search"), cache_control=cache,
    function=obj(name=short_text, description=short_text,
                 parameters=st.just({"type": "object", "properties": {}}), strict=st.booleans()))
openai_request = obj(
    {"model": short_text, "messages": st.lists(openai_message, min_size=0, max_size=4)},
    stream=st.booleans(), stream_options=obj(include_usage=st.booleans()),
    max_tokens=small_int, max_completion_tokens=small_int, temperature=number, top_p=number,
    top_k=small_int, n=st.integers(0, 3), stop=short_text | st.lists(short_text, max_size=2),
    tools=st.lists(openai_tool, max_size=2),
    tool_choice=one_of_words("auto", "none", "required")
    | obj(type=one_of_words("function", "allowed_tools"), function=obj(name=short_text)),
    parallel_tool_calls=st.booleans(),
    reasoning_effort=one_of_words("none", "minimal", "low", "medium", "high", "xhigh"),
    thinking=obj(type=one_of_words("enabled", "disabled"), budget_tokens=small_int),
    response_format=obj(type=one_of_words("text", "json_object")),
    logprobs=st.booleans(), top_logprobs=small_int, user=short_text,
    safety_identifier=short_text, modalities=st.lists(one_of_words("text", "audio")),
    audio=json_values, functions=json_values, function_call=json_values,
    web_search_options=json_values, provider=obj(order=st.lists(short_text)),
    models=st.lists(short_text, max_size=2), presence_penalty=number, seed=small_int)

# -- Anthropic Messages request ------------------------------------------------------------------

source = obj({"type": one_of_words("base64", "url", "text", "file")},
             media_type=st.just("image/png"), data=short_text, url=urls)
anthropic_block = obj(
    {"type": one_of_words("text", "image", "document", "tool_use", "tool_result", "thinking",
                          "redacted_thinking", "server_tool_use", "search_result")},
    text=short_text, source=source, title=short_text, id=short_text, name=short_text,
    input=json_values, tool_use_id=short_text, is_error=st.booleans(),
    content=short_text | st.lists(obj({"type": one_of_words("text", "image")}, text=short_text,
                                      source=source), max_size=2),
    thinking=short_text, signature=short_text, data=short_text, cache_control=cache)
anthropic_message = obj({"role": one_of_words("user", "assistant", "system")},
                        content=short_text | st.lists(anthropic_block, max_size=3))
anthropic_request = obj(
    {"model": short_text, "max_tokens": small_int,
     "messages": st.lists(anthropic_message, max_size=4)},
    system=short_text | st.lists(obj({"type": one_of_words("text", "image")}, text=short_text,
                                     cache_control=cache), max_size=2),
    tools=st.lists(obj(type=one_of_words("custom", "web_search_20250305"), name=short_text,
                       description=short_text,
                       input_schema=st.just({"type": "object"})), max_size=2),
    tool_choice=obj({"type": one_of_words("auto", "any", "tool", "none")}, name=short_text,
                    disable_parallel_tool_use=st.booleans()),
    thinking=obj({"type": one_of_words("enabled", "disabled", "adaptive")},
                 budget_tokens=small_int),
    stop_sequences=st.lists(short_text, max_size=2), temperature=number, top_p=number,
    top_k=small_int, metadata=obj(user_id=short_text), stream=st.booleans(),
    mcp_servers=json_values, container=json_values, service_tier=json_values)

# -- upstream answers ----------------------------------------------------------------------------

anthropic_usage = obj(input_tokens=small_int, output_tokens=small_int,
                      cache_read_input_tokens=small_int, cache_creation_input_tokens=small_int,
                      output_tokens_details=obj(thinking_tokens=small_int))
anthropic_response = obj(
    {"content": st.lists(anthropic_block, max_size=3)},
    id=short_text, type=st.just("message"), role=st.just("assistant"),
    stop_reason=one_of_words("end_turn", "max_tokens", "tool_use", "refusal", "pause_turn"),
    usage=anthropic_usage)
openai_usage = obj(prompt_tokens=small_int, completion_tokens=small_int,
                   prompt_tokens_details=obj(cached_tokens=small_int),
                   completion_tokens_details=obj(reasoning_tokens=small_int))
openai_response_message = obj(
    role=st.just("assistant"), content=short_text | st.none() | st.lists(openai_part, max_size=2),
    refusal=short_text | st.none(), tool_calls=st.lists(openai_tool_call, max_size=2),
    thinking_blocks=st.lists(thinking_block, max_size=2), reasoning_content=short_text,
    reasoning=short_text)
openai_response = obj(
    {"choices": st.lists(obj(index=st.integers(0, 2), message=openai_response_message,
                             finish_reason=one_of_words("stop", "length", "tool_calls",
                                                        "content_filter")), max_size=2)},
    id=short_text, usage=openai_usage)

# -- stream events -------------------------------------------------------------------------------

anthropic_event_names = one_of_words(
    "message_start", "content_block_start", "content_block_delta", "content_block_stop",
    "message_delta", "message_stop", "ping", "error")
anthropic_delta = obj(
    {"type": one_of_words("text_delta", "thinking_delta", "signature_delta", "input_json_delta",
                          "citations_delta")},
    text=short_text, thinking=short_text, signature=short_text, partial_json=arguments,
    stop_reason=one_of_words("end_turn", "max_tokens", "tool_use"), stop_sequence=short_text)
anthropic_event_data = obj(
    {"type": anthropic_event_names},
    index=st.integers(0, 3), message=obj(id=short_text, usage=anthropic_usage),
    content_block=obj({"type": one_of_words("text", "thinking", "tool_use", "redacted_thinking",
                                            "server_tool_use")},
                      text=short_text, thinking=short_text, id=short_text, name=short_text,
                      data=short_text, input=st.just({})),
    delta=anthropic_delta, usage=anthropic_usage,
    error=obj(type=st.just("overloaded_error"), message=short_text))
anthropic_events = st.lists(st.tuples(anthropic_event_names, either(anthropic_event_data)),
                            max_size=8)
openai_chunk_delta = obj(
    role=st.just("assistant"), content=short_text | st.none(), reasoning_content=short_text,
    reasoning=short_text, thinking_blocks=st.lists(thinking_block, max_size=2),
    tool_calls=st.lists(obj(index=st.integers(-1, 3), id=short_text,
                            type=st.just("function"),
                            function=obj(name=short_text, arguments=arguments)), max_size=2))
openai_chunk = obj(
    id=short_text, object=st.just("chat.completion.chunk"),
    choices=st.lists(obj(index=st.integers(0, 2), delta=openai_chunk_delta,
                         finish_reason=one_of_words("stop", "length", "tool_calls") | st.none()),
                     max_size=2),
    usage=openai_usage | st.none(), error=obj(message=short_text, type=short_text))
openai_chunks = st.lists(either(openai_chunk), max_size=8)


# -- the properties ------------------------------------------------------------------------------

def expect_only(kind: type[ProxyError], status: int, call: Callable[[], Any]) -> Any:
    """`call()` either returns JSON-serialisable output or raises `kind` with `status`."""
    try:
        out = call()
    except ProxyError as exc:
        assert isinstance(exc, kind), f"{type(exc).__name__}: {exc}"
        assert exc.status == status
        assert isinstance(exc.message, str) and exc.message
        orjson.dumps(exc.envelope())  # it renders
        return None
    orjson.dumps(out)  # what the gateway sends on must serialise
    return out


@FUZZ
@given(body=openai_request, default_max_tokens=st.sampled_from([1, 4096]))
def test_openai_to_anthropic_request_raises_only_invalid_request(
        body: dict[str, Any], default_max_tokens: int) -> None:
    out = expect_only(InvalidRequest, 400, lambda: openai_to_anthropic_request(
        body, upstream_model="claude-x", default_max_tokens=default_max_tokens))
    if out is not None:
        assert out["model"] == "claude-x"
        assert isinstance(out["max_tokens"], int) and out["max_tokens"] >= 1
        assert out["messages"] and all(m["role"] in ("user", "assistant")
                                       for m in out["messages"])


@FUZZ
@given(body=json_values)
def test_openai_to_anthropic_request_on_any_json(body: Any) -> None:
    expect_only(InvalidRequest, 400, lambda: openai_to_anthropic_request(
        body, upstream_model="claude-x", default_max_tokens=4096))


@FUZZ
@given(body=anthropic_request)
def test_anthropic_to_openai_request_raises_only_invalid_request(body: dict[str, Any]) -> None:
    out = expect_only(InvalidRequest, 400, lambda: anthropic_to_openai_request(
        body, upstream_model="gpt-x"))
    if out is not None:
        assert out["model"] == "gpt-x"
        assert all(m["role"] in ("system", "user", "assistant", "tool") for m in out["messages"])


@FUZZ
@given(body=json_values)
def test_anthropic_to_openai_request_on_any_json(body: Any) -> None:
    expect_only(InvalidRequest, 400, lambda: anthropic_to_openai_request(
        body, upstream_model="gpt-x"))


@FUZZ
@given(resp=either(anthropic_response))
def test_anthropic_to_openai_response_raises_only_upstream_error(resp: Any) -> None:
    out = expect_only(UpstreamError, 502, lambda: anthropic_to_openai_response(
        resp, gen_id="gen-1", model="anthropic/x", created=1))
    if out is not None:
        assert out["id"] == "gen-1" and out["model"] == "anthropic/x"
        assert out["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls",
                                                      "content_filter")


@FUZZ
@given(resp=either(openai_response))
def test_openai_to_anthropic_response_raises_only_upstream_error(resp: Any) -> None:
    out = expect_only(UpstreamError, 502, lambda: openai_to_anthropic_response(
        resp, model="openai/x"))
    if out is not None:
        assert out["type"] == "message" and out["model"] == "openai/x"
        assert all(isinstance(b, dict) and "type" in b for b in out["content"])


@FUZZ
@given(events=anthropic_events, include_usage=st.booleans())
def test_anthropic_to_openai_stream_raises_only_upstream_error(
        events: list[tuple[str, Any]], include_usage: bool) -> None:
    stream = AnthropicToOpenAIStream(gen_id="gen-1", model="anthropic/x", created=1,
                                     include_usage=include_usage)
    for name, data in events:
        if expect_only(UpstreamError, 502, lambda n=name, d=data: stream.feed(n, d)) is None:
            return
    expect_only(UpstreamError, 502, stream.finish)


@FUZZ
@given(chunks=openai_chunks)
def test_openai_to_anthropic_stream_raises_only_upstream_error(chunks: list[Any]) -> None:
    stream = OpenAIToAnthropicStream(model="openai/x", message_id="msg_1")
    for chunk in chunks:
        if expect_only(UpstreamError, 502, lambda c=chunk: stream.feed(c)) is None:
            return
    expect_only(UpstreamError, 502, stream.finish)


# -- known hostile values (regressions found by reading and fuzzing) -----------------------------

DEEP_ARGUMENTS = "[" * 100_000  # a JSON *string* in the body: orjson parses it fine


def assistant_with_arguments(arguments: str) -> dict[str, Any]:
    return {"model": "m", "messages": [
        {"role": "user", "content": "hi"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "f", "arguments": arguments}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "ok"}]}


def test_deeply_nested_tool_arguments_in_a_request_are_a_400() -> None:
    with pytest.raises(InvalidRequest) as caught:
        openai_to_anthropic_request(assistant_with_arguments(DEEP_ARGUMENTS),
                                    upstream_model="claude-x", default_max_tokens=4096)
    assert caught.value.param == "messages[1].tool_calls[0].function.arguments"


def test_deeply_nested_tool_arguments_in_a_response_are_a_502() -> None:
    resp = {"id": "x", "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
        "role": "assistant", "content": None, "tool_calls": [
            {"id": "c", "type": "function",
             "function": {"name": "f", "arguments": DEEP_ARGUMENTS}}]}}]}
    with pytest.raises(UpstreamError):
        openai_to_anthropic_response(resp, model="openai/x")


@pytest.mark.parametrize("arguments", ['{"a": 1e999}', '{"a": NaN}', '{"a": Infinity}'])
def test_non_finite_tool_arguments_still_serialise(arguments: str) -> None:
    """json.loads accepts NaN/Infinity/1e999; what goes upstream must still be valid JSON
    (orjson writes such floats as null) or the request must be refused with a 400."""
    try:
        out = openai_to_anthropic_request(assistant_with_arguments(arguments),
                                          upstream_model="claude-x", default_max_tokens=4096)
    except InvalidRequest:
        return
    json.loads(orjson.dumps(out))


def test_long_data_url_is_translated_in_linear_time() -> None:
    """The data: URL regex must not backtrack catastrophically on a hostile URL."""
    import time
    hostile = "data:" + "a;" * 200_000 + "x"
    started = time.perf_counter()
    with pytest.raises(InvalidRequest):
        openai_to_anthropic_request({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": hostile}}]}]},
            upstream_model="claude-x", default_max_tokens=4096)
    assert time.perf_counter() - started < 2.0


# -- the relays the gateway really calls (raw SSE data, then the stream classes) -----------------

def context(kind: str, include_usage: bool = False) -> CallContext:
    provider = ProviderConfig(id="p", kind=kind, base_url="http://127.0.0.1:9", api_key="k")
    return CallContext("gen-1", "public/model", 1, provider,
                       Route(provider="p", model="upstream", priority=0), True, include_usage)


def string_reasons(value: Any) -> Any:
    """Non-string finish/stop reasons are a known bug with regression tests of their own
    (below): here they become null so that the fuzz keeps looking for other failures."""
    if isinstance(value, dict):
        return {k: (v if isinstance(v, str) else None)
                if k in ("finish_reason", "stop_reason") else string_reasons(v)
                for k, v in value.items()}
    if isinstance(value, list):
        return [string_reasons(v) for v in value]
    return value


def wire(value: Any) -> str:
    return orjson.dumps(string_reasons(value)).decode()


sse_data = st.one_of(
    json_values.map(wire), anthropic_event_data.map(wire), openai_chunk.map(wire),
    st.sampled_from(["[DONE]", "", "{", "not json", "null"]), st.text(max_size=12))
sse_events = st.lists(st.builds(SSEEvent, sse_data, st.none() | anthropic_event_names),
                      max_size=8)
RELAYS: dict[str, Callable[[CallContext], Any]] = {
    "openai": OpenAIStreamRelay, "openai-to-anthropic": OpenAIToAnthropicRelay,
    "anthropic": AnthropicRelay, "anthropic-to-openai": AnthropicToOpenAIRelay}


@pytest.mark.parametrize("relay", sorted(RELAYS))
@FUZZ
@given(events=sse_events, include_usage=st.booleans())
def test_stream_relays_raise_only_upstream_error(relay: str, events: list[SSEEvent],
                                                 include_usage: bool) -> None:
    translator = RELAYS[relay](context("openai" if relay.startswith("openai") else "anthropic",
                                       include_usage))
    for event in events:
        try:
            out = translator.feed(event)
        except ProxyError as exc:
            assert isinstance(exc, UpstreamError) and exc.status == 502, repr(exc)
            return
        assert all(isinstance(b, bytes) for b in out)
    try:
        translator.finish()
    except ProxyError as exc:
        assert isinstance(exc, UpstreamError) and exc.status == 502, repr(exc)
    # What the relay remembers ends up in the usage row: it must be of the stored type.
    assert translator.finish_reason is None or isinstance(translator.finish_reason, str)
    assert translator.upstream_id is None or isinstance(translator.upstream_id, str)


def test_anthropic_relay_unhashable_stop_reason_is_an_upstream_error() -> None:
    relay = AnthropicRelay(context("anthropic"))
    event = SSEEvent('{"type": "message_delta", "delta": {"stop_reason": ["end_turn"]}}',
                     "message_delta")
    try:
        relay.feed(event)
    except UpstreamError:
        return
    assert relay.finish_reason is None or isinstance(relay.finish_reason, str)


@pytest.mark.parametrize("relay", ["anthropic", "openai"])
def test_relays_keep_only_string_finish_reasons(relay: str) -> None:
    if relay == "openai":
        translator: Any = OpenAIStreamRelay(context("openai"))
        translator.feed(SSEEvent('{"choices": [{"index": 0, "delta": {}, '
                                 '"finish_reason": {"why": "stop"}}]}'))
    else:
        translator = AnthropicRelay(context("anthropic"))
        translator.feed(SSEEvent('{"type": "message_delta", "delta": {"stop_reason": 5}}',
                                 "message_delta"))
    assert translator.finish_reason is None or isinstance(translator.finish_reason, str)


HUGE = 1e300  # a valid JSON number


def test_absurd_anthropic_usage_still_serialises() -> None:
    resp = {"id": "m", "type": "message", "content": [{"type": "text", "text": "x"}],
            "stop_reason": "end_turn", "usage": {"input_tokens": HUGE, "output_tokens": 1}}
    expect_only(UpstreamError, 502, lambda: anthropic_to_openai_response(
        resp, gen_id="gen-1", model="anthropic/x", created=1))


def test_absurd_openai_usage_still_serialises() -> None:
    resp = {"id": "c", "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": "x"}}],
            "usage": {"prompt_tokens": HUGE, "completion_tokens": 1}}
    expect_only(UpstreamError, 502, lambda: openai_to_anthropic_response(resp, model="x"))


def test_usage_at_the_64_bit_limit_still_serialises() -> None:
    top = 2**64 - 1
    resp = {"id": "m", "type": "message", "content": [], "stop_reason": "end_turn",
            "usage": {"input_tokens": top, "cache_read_input_tokens": top}}
    expect_only(UpstreamError, 502, lambda: anthropic_to_openai_response(
        resp, gen_id="gen-1", model="anthropic/x", created=1))
