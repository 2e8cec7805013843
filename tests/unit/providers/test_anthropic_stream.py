"""Stream translators, fed real-shaped SSE transcripts from tests/data/anthropic/."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import openai.types.chat
import pytest
from anthropic.lib.streaming._messages import accumulate_event
from anthropic.types import Message
from openai.lib.streaming.chat import ChatCompletionStreamState

from anyrouter_proxy.errors import UpstreamError
from anyrouter_proxy.providers.anthropic_stream import (
    AnthropicToOpenAIStream,
    OpenAIToAnthropicStream,
)
from anyrouter_proxy.providers.anthropic_translate import openai_to_anthropic_request
from anyrouter_proxy.types import Usage

DATA = Path(__file__).parents[2] / "data" / "anthropic"
Event = tuple[str, dict[str, Any]]


def anthropic_events(name: str) -> list[Event]:
    """An Anthropic SSE transcript as (event, data) pairs."""
    events = []
    for frame in (DATA / name).read_text().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in frame.strip().splitlines())
        if lines:
            events.append((lines["event"], json.loads(lines["data"])))
    return events


def openai_chunks(name: str) -> list[dict[str, Any]]:
    """An OpenAI SSE transcript as chunk dicts, up to `data: [DONE]`."""
    chunks = []
    for line in (DATA / name).read_text().splitlines():
        if line.startswith("data: ") and line != "data: [DONE]":
            chunks.append(json.loads(line[len("data: "):]))
    return chunks


def new_a2o(include_usage: bool = False) -> AnthropicToOpenAIStream:
    return AnthropicToOpenAIStream(gen_id="gen-xyz", model="anthropic/claude-sonnet-4",
                                   created=1700000000, include_usage=include_usage)


def run_a2o(name: str, include_usage: bool = False) -> tuple[AnthropicToOpenAIStream,
                                                              list[dict[str, Any]]]:
    stream = new_a2o(include_usage)
    chunks = [c for event, data in anthropic_events(name) for c in stream.feed(event, data)]
    return stream, chunks + stream.finish()


def deltas(chunks: list[dict[str, Any]], key: str) -> list[Any]:
    return [c["choices"][0]["delta"][key] for c in chunks
            if c["choices"] and key in c["choices"][0]["delta"]]


def tool_deltas(chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [call for calls in deltas(chunks, "tool_calls") for call in calls]


def run_o2a(chunks: list[dict[str, Any]]) -> tuple[OpenAIToAnthropicStream, list[Event]]:
    stream = OpenAIToAnthropicStream(model="openai/gpt-4o", message_id="msg_gen-xyz")
    events = [e for chunk in chunks for e in stream.feed(chunk)]
    return stream, events + stream.finish()


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o", "choices": [{"index": 0, "delta": delta,
                                            "finish_reason": finish}]}


def names(events: list[Event]) -> list[str]:
    return [name for name, _ in events]


# --- AnthropicToOpenAIStream --------------------------------------------------------------------

def test_first_chunk_carries_the_assistant_role() -> None:
    _, chunks = run_a2o("stream_text.txt")
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}


def test_text_deltas_become_content_deltas() -> None:
    _, chunks = run_a2o("stream_text.txt")
    assert deltas(chunks, "content") == ["", "Hello", "!"]


def test_every_chunk_carries_the_gateway_id_model_and_created() -> None:
    _, chunks = run_a2o("stream_text.txt")
    assert {(c["id"], c["object"], c["model"], c["created"]) for c in chunks} == {
        ("gen-xyz", "chat.completion.chunk", "anthropic/claude-sonnet-4", 1700000000)}


def test_message_delta_gives_the_final_finish_reason() -> None:
    stream, chunks = run_a2o("stream_text.txt")
    assert chunks[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "stop"}
    assert stream.finish_reason == "stop"
    assert [c["choices"][0]["finish_reason"] for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_ping_produces_no_chunk() -> None:
    stream = new_a2o()
    stream.feed("message_start", anthropic_events("stream_text.txt")[0][1])
    assert stream.feed("ping", {"type": "ping"}) == []


def test_upstream_id_comes_from_message_start() -> None:
    stream, _ = run_a2o("stream_text.txt")
    assert stream.upstream_id == "msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY"


def test_tool_use_start_becomes_a_tool_call_header() -> None:
    _, chunks = run_a2o("stream_tool_use.txt")
    assert tool_deltas(chunks)[0] == {"index": 0, "id": "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
                                      "type": "function",
                                      "function": {"name": "get_weather", "arguments": ""}}


def test_input_json_fragments_split_mid_token_are_forwarded_unchanged() -> None:
    _, chunks = run_a2o("stream_tool_use.txt")
    fragments = [call["function"]["arguments"] for call in tool_deltas(chunks)[1:]]
    assert fragments == ["{\"location\":", " \"San", " Francisc", "o,", " CA\"", ", ",
                         "\"unit\": \"fah", "renheit\"}"]
    assert json.loads("".join(fragments)) == {"location": "San Francisco, CA",
                                              "unit": "fahrenheit"}


def test_tool_index_counts_tool_blocks_only() -> None:
    _, chunks = run_a2o("stream_tool_use.txt")  # text is block 0, the tool block 1
    assert {call["index"] for call in tool_deltas(chunks)} == {0}


def test_tool_use_stream_finishes_with_tool_calls() -> None:
    stream, _ = run_a2o("stream_tool_use.txt")
    assert stream.finish_reason == "tool_calls"


def test_parallel_tool_calls_get_their_own_indexes() -> None:
    _, chunks = run_a2o("stream_parallel_tools.txt")
    arguments: dict[int, str] = {}
    for call in tool_deltas(chunks):
        arguments[call["index"]] = arguments.get(call["index"], "") + \
            call["function"]["arguments"]
    assert {i: json.loads(a) for i, a in arguments.items()} == {
        0: {"location": "Paris"}, 1: {"timezone": "Europe/Paris"}}
    assert [c["id"] for c in tool_deltas(chunks) if "id" in c] == [
        "toolu_01A09q90qw90lq917835lq9", "toolu_01B7hcv3kfk2lslo03kd9"]


def test_openai_sdk_accumulates_the_parallel_tool_calls() -> None:
    _, chunks = run_a2o("stream_parallel_tools.txt", include_usage=True)
    state: ChatCompletionStreamState[Any] = ChatCompletionStreamState()
    for c in chunks:
        state.handle_chunk(openai.types.chat.ChatCompletionChunk.model_validate(c))
    final = state.get_final_completion()
    calls = final.choices[0].message.tool_calls or []
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        ("get_weather", "{\"location\": \"Paris\"}"),
        ("get_time", "{\"timezone\": \"Europe/Paris\"}")]
    assert final.usage is not None and final.usage.completion_tokens == 104


def test_thinking_deltas_become_reasoning_content() -> None:
    _, chunks = run_a2o("stream_thinking_tool_use.txt")
    assert deltas(chunks, "reasoning_content") == ["The user wants the weather in Paris. ",
                                                   "I should call get_weather."]


def test_a_finished_thinking_block_is_sent_whole_with_its_signature() -> None:
    _, chunks = run_a2o("stream_thinking_tool_use.txt")
    assert deltas(chunks, "thinking_blocks") == [[{
        "type": "thinking",
        "thinking": "The user wants the weather in Paris. I should call get_weather.",
        "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"}]]


def test_thinking_block_is_sent_before_the_following_tool_call() -> None:
    _, chunks = run_a2o("stream_thinking_tool_use.txt")
    kinds = [next(iter(c["choices"][0]["delta"]), None) for c in chunks if c["choices"]]
    assert kinds.index("thinking_blocks") < kinds.index("tool_calls")


def test_redacted_thinking_is_sent_as_a_thinking_block() -> None:
    stream = new_a2o()
    stream.feed("message_start", anthropic_events("stream_text.txt")[0][1])
    out = stream.feed("content_block_start", {
        "type": "content_block_start", "index": 0,
        "content_block": {"type": "redacted_thinking", "data": "EmwKAhgB"}})
    assert out[0]["choices"][0]["delta"] == {
        "thinking_blocks": [{"type": "redacted_thinking", "data": "EmwKAhgB"}]}


def test_usage_adds_input_cache_and_output_tokens() -> None:
    stream, _ = run_a2o("stream_thinking_tool_use.txt")
    assert stream.usage == Usage(prompt_tokens=412 + 1800, completion_tokens=146,
                                 cached_tokens=1800)


def test_usage_is_kept_up_to_date_before_the_end() -> None:
    stream = new_a2o()
    events = anthropic_events("stream_text.txt")
    stream.feed(*events[0])
    assert stream.usage.prompt_tokens == 25 and stream.usage.completion_tokens == 1


def test_usage_chunk_is_sent_when_asked_for() -> None:
    _, chunks = run_a2o("stream_tool_use.txt", include_usage=True)
    assert chunks[-1] == {
        "id": "gen-xyz", "object": "chat.completion.chunk", "created": 1700000000,
        "model": "anthropic/claude-sonnet-4", "choices": [],
        "usage": {"prompt_tokens": 472, "completion_tokens": 89, "total_tokens": 561,
                  "prompt_tokens_details": {"cached_tokens": 0},
                  "completion_tokens_details": {"reasoning_tokens": 0}}}


def test_chunks_carry_null_usage_when_usage_is_asked_for() -> None:
    _, chunks = run_a2o("stream_text.txt", include_usage=True)
    assert all(c["usage"] is None for c in chunks[:-1])


def test_no_usage_chunk_unless_asked_for() -> None:
    _, chunks = run_a2o("stream_text.txt", include_usage=False)
    assert all("usage" not in c and c["choices"] for c in chunks)


def test_error_event_raises_upstream_error_with_its_message() -> None:
    stream = new_a2o()
    events = anthropic_events("stream_error.txt")
    for event, data in events[:-1]:
        stream.feed(event, data)
    with pytest.raises(UpstreamError) as err:
        stream.feed(*events[-1])
    assert err.value.message == "Overloaded"
    assert err.value.metadata == {"provider_error_type": "overloaded_error"}


def test_stream_ending_before_message_stop_is_an_error() -> None:
    stream = new_a2o()
    for event, data in anthropic_events("stream_text.txt")[:-1]:
        stream.feed(event, data)
    with pytest.raises(UpstreamError):
        stream.finish()


def test_message_stop_without_stop_reason_still_finishes_the_choice() -> None:
    stream = new_a2o()
    events = [e for e in anthropic_events("stream_text.txt") if e[0] != "message_delta"]
    for event, data in events:
        stream.feed(event, data)
    assert stream.finish()[0]["choices"][0]["finish_reason"] == "stop"


def test_unknown_events_are_ignored() -> None:
    stream = new_a2o()
    stream.feed(*anthropic_events("stream_text.txt")[0])
    assert stream.feed("future_event", {"type": "future_event", "x": 1}) == []


@pytest.mark.parametrize(("event", "data"), [
    ("content_block_start", {"type": "content_block_start", "content_block": {"type": "text"}}),
    ("content_block_start", {"type": "content_block_start", "index": 0,
                             "content_block": {"type": "tool_use", "id": 1, "name": "f"}}),
    ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": "x"}),
    ("message_start", {"type": "message_start", "message": None}),
    ("message_start", "not an object"),
])
def test_malformed_events_are_upstream_errors(event: str, data: Any) -> None:
    stream = new_a2o()
    if event != "message_start":
        stream.feed(*anthropic_events("stream_text.txt")[0])
    with pytest.raises(UpstreamError) as err:
        stream.feed(event, data)
    assert err.value.code == "upstream_invalid_response"


def test_thinking_survives_a_streamed_tool_use_turn() -> None:
    _, chunks = run_a2o("stream_thinking_tool_use.txt")
    blocks = [b for bs in deltas(chunks, "thinking_blocks") for b in bs]
    call = tool_deltas(chunks)[0]
    assistant = {"role": "assistant", "content": None, "thinking_blocks": blocks,
                 "reasoning_content": "".join(deltas(chunks, "reasoning_content")),
                 "tool_calls": [{"id": call["id"], "type": "function", "function": {
                     "name": call["function"]["name"],
                     "arguments": "".join(c["function"]["arguments"]
                                          for c in tool_deltas(chunks))}}]}
    body = {"model": "m", "reasoning_effort": "low", "messages": [
        {"role": "user", "content": "Weather in Paris?"}, assistant,
        {"role": "tool", "tool_call_id": call["id"], "content": "18C"}]}
    out = openai_to_anthropic_request(body, upstream_model="claude", default_max_tokens=1024)
    assert out["messages"][1]["content"] == [
        {"type": "thinking",
         "thinking": "The user wants the weather in Paris. I should call get_weather.",
         "signature": "EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds"},
        {"type": "tool_use", "id": "toolu_01NRLabsLyVHZPKxbKvkfSMn", "name": "get_weather",
         "input": {"location": "Paris, FR"}}]


# --- OpenAIToAnthropicStream --------------------------------------------------------------------

def test_text_stream_event_sequence() -> None:
    _, events = run_o2a([chunk({"role": "assistant", "content": ""}), chunk({"content": "Hi"}),
                         chunk({"content": " there"}), chunk({}, "stop")])
    assert names(events) == ["message_start", "content_block_start", "content_block_delta",
                             "content_block_delta", "content_block_stop", "message_delta",
                             "message_stop"]


def test_message_start_names_the_message_and_model() -> None:
    _, events = run_o2a([chunk({"content": "Hi"}, "stop")])
    assert events[0] == ("message_start", {"type": "message_start", "message": {
        "id": "msg_gen-xyz", "type": "message", "role": "assistant", "model": "openai/gpt-4o",
        "content": [], "stop_reason": None, "stop_sequence": None,
        "usage": {"input_tokens": 0, "output_tokens": 0, "cache_read_input_tokens": 0,
                  "cache_creation_input_tokens": 0}}})


def test_an_empty_role_chunk_opens_no_block() -> None:
    stream = OpenAIToAnthropicStream(model="m", message_id="msg_1")
    assert names(stream.feed(chunk({"role": "assistant", "content": ""}))) == ["message_start"]


def test_content_becomes_text_deltas_in_block_zero() -> None:
    _, events = run_o2a([chunk({"content": "Hi"}, "stop")])
    assert events[1:3] == [
        ("content_block_start", {"type": "content_block_start", "index": 0,
                                 "content_block": {"type": "text", "text": ""}}),
        ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                 "delta": {"type": "text_delta", "text": "Hi"}})]


def test_reasoning_then_content_become_a_thinking_block_then_a_text_block() -> None:
    _, events = run_o2a(openai_chunks("openai_stream_reasoning_text.txt"))
    starts = [(d["index"], d["content_block"]["type"]) for n, d in events
              if n == "content_block_start"]
    assert starts == [(0, "thinking"), (1, "text")]
    thinking = [d["delta"]["thinking"] for n, d in events
                if n == "content_block_delta" and d["index"] == 0]
    assert thinking == ["9.11 vs 9.8: ", "compare tenths, 8 > 1."]


def test_blocks_are_closed_in_order() -> None:
    _, events = run_o2a(openai_chunks("openai_stream_reasoning_text.txt"))
    assert [d["index"] for n, d in events if n == "content_block_stop"] == [0, 1]


def test_signature_in_thinking_blocks_becomes_a_signature_delta() -> None:
    _, events = run_o2a([
        chunk({"reasoning_content": "hmm"}),
        chunk({"thinking_blocks": [{"type": "thinking", "thinking": "", "signature": "sig=="}]}),
        chunk({"content": "ok"}, "stop")])
    assert ("content_block_delta", {"type": "content_block_delta", "index": 0,
                                    "delta": {"type": "signature_delta",
                                              "signature": "sig=="}}) in events


def test_parallel_tool_calls_become_tool_use_blocks() -> None:
    _, events = run_o2a(openai_chunks("openai_stream_parallel_tools.txt"))
    starts = [d for n, d in events if n == "content_block_start"]
    assert starts == [
        {"type": "content_block_start", "index": 0, "content_block": {
            "type": "tool_use", "id": "call_DdmO9pD3xa9XTPNJ32zg2hcA", "name": "get_weather",
            "input": {}}},
        {"type": "content_block_start", "index": 1, "content_block": {
            "type": "tool_use", "id": "call_ABCDmO9pD3xa9XTPNJ32zg2h", "name": "get_time",
            "input": {}}}]


def test_tool_arguments_become_input_json_deltas() -> None:
    _, events = run_o2a(openai_chunks("openai_stream_parallel_tools.txt"))
    partial = [(d["index"], d["delta"]["partial_json"]) for n, d in events
               if n == "content_block_delta"]
    assert partial == [(0, "{\"lo"), (0, "cation\": \"Paris\"}"),
                       (1, "{\"timezone\": \"Europe/Paris\"}")]


def test_finish_sends_stop_reason_and_usage() -> None:
    stream, events = run_o2a(openai_chunks("openai_stream_parallel_tools.txt"))
    assert events[-2] == ("message_delta", {
        "type": "message_delta", "delta": {"stop_reason": "tool_use", "stop_sequence": None},
        "usage": {"input_tokens": 54, "output_tokens": 38, "cache_read_input_tokens": 128,
                  "cache_creation_input_tokens": 0}})
    assert events[-1] == ("message_stop", {"type": "message_stop"})
    assert stream.usage == Usage(prompt_tokens=182, completion_tokens=38, cached_tokens=128)


def test_usage_on_the_finishing_chunk_is_captured() -> None:
    stream, _ = run_o2a(openai_chunks("openai_stream_reasoning_text.txt"))
    assert stream.usage == Usage(prompt_tokens=18, completion_tokens=95, reasoning_tokens=80)


@pytest.mark.parametrize(("finish", "stop"), [("stop", "end_turn"), ("length", "max_tokens"),
                                              ("content_filter", "refusal")])
def test_finish_reason_maps_to_stop_reason(finish: str, stop: str) -> None:
    stream, events = run_o2a([chunk({"content": "x"}, finish)])
    assert events[-2][1]["delta"]["stop_reason"] == stop
    assert stream.finish_reason == finish


def test_anthropic_sdk_accumulates_the_translated_stream() -> None:
    _, events = run_o2a(openai_chunks("openai_stream_parallel_tools.txt"))
    snapshot = None
    json_bufs: dict[int, bytes] = {}
    for _, data in events:
        snapshot = accumulate_event(event=data, current_snapshot=snapshot,  # type: ignore[arg-type]
                                    json_bufs=json_bufs)
    final = Message.model_validate(snapshot.model_dump())  # type: ignore[union-attr]
    assert [(b.type, getattr(b, "input", None)) for b in final.content] == [
        ("tool_use", {"location": "Paris"}), ("tool_use", {"timezone": "Europe/Paris"})]
    assert final.stop_reason == "tool_use"


def test_missing_tool_call_id_gets_a_generated_one() -> None:
    _, events = run_o2a([chunk({"tool_calls": [
        {"index": 0, "function": {"name": "f", "arguments": "{}"}}]}, "tool_calls")])
    assert events[1][1]["content_block"]["id"].startswith("toolu_")


def test_interleaved_tool_fragments_go_to_their_own_block() -> None:
    _, events = run_o2a([
        chunk({"tool_calls": [{"index": 0, "id": "a", "function": {"name": "f",
                                                                    "arguments": "{\"x\""}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "b", "function": {"name": "g",
                                                                    "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}, "tool_calls")])
    partial = [(d["index"], d["delta"]["partial_json"]) for n, d in events
               if n == "content_block_delta"]
    assert partial == [(0, "{\"x\""), (1, "{}"), (0, ": 1}")]


def test_stream_without_finish_reason_is_an_error() -> None:
    stream = OpenAIToAnthropicStream(model="m", message_id="msg_1")
    stream.feed(chunk({"content": "partial"}))
    with pytest.raises(UpstreamError):
        stream.finish()


def test_error_chunk_raises_upstream_error_with_its_message() -> None:
    stream = OpenAIToAnthropicStream(model="m", message_id="msg_1")
    with pytest.raises(UpstreamError) as err:
        stream.feed({"error": {"message": "Internal server error", "type": "server_error"}})
    assert err.value.message == "Internal server error"


@pytest.mark.parametrize("bad", [
    "data", {"choices": "x"}, {"choices": [{"index": 0, "delta": "x"}]},
    {"choices": [{"index": 0, "delta": {"tool_calls": [{"index": "0"}]}}]},
    {"choices": [], "usage": [1]},
])
def test_malformed_chunks_are_upstream_errors(bad: Any) -> None:
    stream = OpenAIToAnthropicStream(model="m", message_id="msg_1")
    with pytest.raises(UpstreamError) as err:
        stream.feed(bad)
    assert err.value.code == "upstream_invalid_response"


# -- usage sources and output estimates (what a stream cut short is charged) -------------------

def test_message_start_usage_is_partial_until_message_delta() -> None:
    stream = new_a2o()
    events = anthropic_events("stream_text.txt")
    stream.feed(*events[0])
    assert stream.usage is not None and stream.usage.source == "partial"
    for event in events[1:]:
        stream.feed(*event)
    assert stream.usage.source == "provider"


def test_anthropic_deltas_are_estimated_as_they_pass() -> None:
    stream = new_a2o()
    events = anthropic_events("stream_text.txt")
    text = "".join(d["delta"]["text"] for e, d in events if e == "content_block_delta")
    for event in events:
        stream.feed(*event)
    assert stream.output_tokens >= -(-len(text) // 3) > 0


def test_no_usage_until_the_upstream_sends_one() -> None:
    chunks = [c for c in openai_chunks("openai_stream_parallel_tools.txt") if not c.get("usage")]
    stream = OpenAIToAnthropicStream(model="openai/gpt-4o", message_id="msg_gen-xyz")
    for chunk in chunks:
        stream.feed(chunk)
    assert stream.usage is None
    assert stream.output_tokens >= 3  # one tool-argument event at least one token each


def test_a_running_usage_count_is_partial_until_the_stream_ends() -> None:
    stream = OpenAIToAnthropicStream(model="openai/gpt-4o", message_id="msg_gen-xyz")
    stream.feed({"choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None}],
                 "usage": {"prompt_tokens": 9, "completion_tokens": 1}})
    assert stream.usage is not None and stream.usage.source == "partial"
    stream.ended()
    assert stream.usage.source == "provider"
