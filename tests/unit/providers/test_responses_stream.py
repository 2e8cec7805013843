"""ChatToResponses: chat chunks in, Responses events out, each stream checked by the
official openai SDK's own stream accumulator (what `responses.stream()` runs)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from openai import omit
from openai._models import construct_type
from openai.lib.streaming.responses._responses import ResponseStreamState
from openai.types.responses import ParsedResponse, ResponseStreamEvent

from anyrouter_proxy.providers.responses_output import THINKING_PREFIX, response_shell
from anyrouter_proxy.providers.responses_stream import ChatToResponses, Event
from anyrouter_proxy.sse import SSEEvent, encode_event

USAGE = {"input_tokens": 5, "input_tokens_details": {"cached_tokens": 0,
                                                      "cache_write_tokens": 0},
         "output_tokens": 9, "output_tokens_details": {"reasoning_tokens": 0},
         "total_tokens": 14}


def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
    return {"id": "gen-x", "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def run(chunks: list[dict[str, Any]], *, encrypted: bool = False, fail: bool = False
        ) -> tuple[list[Event], ChatToResponses]:
    machine = ChatToResponses(response_shell({"model": "m"}, gen_id="gen-x", model="m",
                                             created_at=1), encrypted=encrypted)
    events = [event for c in chunks for event in machine.feed(c)]
    if fail:
        events += machine.failed({"message": "boom", "type": "upstream_error",
                                  "code": "upstream_error", "param": None}, None)
    else:
        events += machine.finish(USAGE)
    return events, machine


def accumulate(events: list[Event]) -> ParsedResponse[object] | None:
    """The SDK's accumulator over the events; the final response, if it completed."""
    state: ResponseStreamState[object] = ResponseStreamState(input_tools=omit,
                                                             text_format=omit)
    final = None
    for kind, data in events:
        assert data["type"] == kind
        for event in state.handle_event(construct_type(type_=ResponseStreamEvent,
                                                       value=data)):
            if event.type in ("response.completed", "response.incomplete"):
                final = event.response
    return final  # type: ignore[return-value]


def test_text_stream() -> None:
    events, machine = run([chunk({"role": "assistant", "content": ""}),
                           chunk({"content": "Hel"}), chunk({"content": "lo"}),
                           chunk({}, "stop")])
    kinds = [kind for kind, _ in events]
    assert kinds == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", "response.output_text.delta",
                     "response.output_text.delta", "response.output_text.done",
                     "response.content_part.done", "response.output_item.done",
                     "response.completed"]
    assert [data["sequence_number"] for _, data in events] == list(range(len(events)))
    final = accumulate(events)
    assert final is not None and final.output_text == "Hello" and final.status == "completed"
    assert machine.output_items[0]["content"][0]["text"] == "Hello"


def test_reasoning_then_interleaved_tool_calls() -> None:
    events, machine = run([
        chunk({"reasoning_content": "Think"}), chunk({"reasoning_content": "ing"}),
        chunk({"thinking_blocks": [{"type": "thinking", "thinking": "Thinking",
                                    "signature": "SIG"}]}),
        chunk({"content": "Calling."}),
        chunk({"tool_calls": [{"index": 0, "id": "c0", "type": "function",
                               "function": {"name": "a", "arguments": '{"x"'}}]}),
        chunk({"tool_calls": [{"index": 1, "id": "c1", "type": "function",
                               "function": {"name": "b", "arguments": "{}"}}]}),
        chunk({"tool_calls": [{"index": 0, "function": {"arguments": ": 1}"}}]}),
        chunk({}, "tool_calls")])
    final = accumulate(events)
    assert final is not None
    assert [item.type for item in final.output] == ["reasoning", "message", "function_call",
                                                    "function_call"]
    calls = [item for item in final.output if item.type == "function_call"]
    assert [(c.call_id, c.name, c.arguments) for c in calls] == [("c0", "a", '{"x": 1}'),
                                                                 ("c1", "b", "{}")]
    reasoning = final.output[0]
    assert reasoning.summary[0].text == "Thinking"  # type: ignore[union-attr]
    assert reasoning.encrypted_content is None  # type: ignore[union-attr]
    assert machine.output_items[0]["encrypted_content"] == THINKING_PREFIX + "SIG"
    kinds = [kind for kind, _ in events]
    assert kinds.count("response.reasoning_summary_text.delta") == 2
    assert kinds.count("response.function_call_arguments.done") == 2


def test_a_length_stop_is_incomplete_and_a_refusal_is_its_own_part() -> None:
    events, _ = run([chunk({"content": "Partial"}), chunk({"refusal": "No"}),
                     chunk({}, "length")])
    final = accumulate(events)
    assert final is not None and final.status == "incomplete"
    assert final.incomplete_details is not None
    assert final.incomplete_details.reason == "max_output_tokens"
    message = final.output[0]
    assert [part.type for part in message.content] == ["output_text", "refusal"]  # type: ignore[union-attr]


def test_a_failure_ends_with_response_failed_and_the_output_so_far() -> None:
    events, _ = run([chunk({"content": "Half"})], fail=True)
    kind, data = events[-1]
    assert kind == "response.failed" and data["sequence_number"] == len(events) - 1
    response = data["response"]
    assert response["status"] == "failed" and response["error"]["code"] == "upstream_error"
    assert response["output"][0]["content"][0]["text"] == "Half"
    assert response["output"][0]["status"] == "incomplete"
    assert accumulate(events) is None  # the SDK saw no completion


class BytesOnlyRelay:
    """A chat relay of another kind: `feed`/`finish` bytes only (no dict chunks)."""

    usage = None
    finish_reason = "stop"
    upstream_id = None
    output_tokens = 3

    def feed(self, event: SSEEvent) -> list[bytes]:
        return [encode_event(event.data)]

    def finish(self) -> list[bytes]:
        return [b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}'
                b"\n\ndata: [DONE]\n\n"]


def test_the_bridge_reads_a_relay_that_only_writes_bytes() -> None:
    from anyrouter_proxy.config.model import ProviderConfig, Route
    from anyrouter_proxy.providers.base import CallContext
    from anyrouter_proxy.providers.responses import ChatBridgeRelay

    ctx = CallContext("gen-x", "m", 1, ProviderConfig("p", "other"), Route("p", "u", 0),
                      True, False, request={"model": "m", "input": "hi"})
    relay = ChatBridgeRelay(BytesOnlyRelay(), ctx)  # type: ignore[arg-type]
    out = b"".join(relay.feed(SSEEvent(json.dumps(chunk({"content": "Hi"})))))
    out += b"".join(relay.finish())
    events = [(kind, json.loads(data)) for kind, data in
              (block.split("\ndata: ") for block in
               out.decode().removeprefix("event: ").strip().split("\n\nevent: "))]
    final = accumulate(events)
    assert final is not None and final.output_text == "Hi"
    assert relay.output_items[0]["type"] == "message"


def bridge_output(events: list[str], short: bool, monkeypatch: Any) -> tuple[bytes, tuple]:
    """A chat stream from an OpenAI upstream relayed as Responses events, with the usual
    chunk's short path (`short`) or without; item ids numbered, not random."""
    from itertools import count

    from anyrouter_proxy.config.model import ProviderConfig, Route
    from anyrouter_proxy.providers import responses_stream
    from anyrouter_proxy.providers.base import CallContext
    from anyrouter_proxy.providers.openai import OpenAIStreamRelay
    from anyrouter_proxy.providers.responses import ChatBridgeRelay

    numbers = count()
    monkeypatch.setattr(responses_stream, "new_item_id", lambda p: f"{p}{next(numbers)}")
    ctx = CallContext("gen-x", "m", 1, ProviderConfig("p", "openai"), Route("p", "u", 0),
                      True, True, request={"model": "m", "input": "hi", "stream": True})
    relay = ChatBridgeRelay(OpenAIStreamRelay(ctx), ctx)
    if not short:
        relay._text = None
    out = b"".join(part for data in events for part in relay.feed(SSEEvent(data)))
    out += b"".join(relay.finish())
    return out, (relay.output_tokens, relay.finish_reason, relay.upstream_id,
                 relay.output_items)


def openai_chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> str:
    return json.dumps({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1,
                       "model": "u", "choices": [{"index": 0, "delta": delta,
                                                  "logprobs": None, "finish_reason": finish}],
                       "usage": None, **extra}, separators=(",", ":"), ensure_ascii=False)


BRIDGED_STREAMS = {
    "text": [openai_chunk({"role": "assistant", "content": ""}),
             *(openai_chunk({"content": t}) for t in ("Hi", " there", "", " caf\u00e9", "!"))],
    "refusal between texts": [
        openai_chunk({"content": "a"}), openai_chunk({"content": "b"}),
        openai_chunk({"refusal": "no"}), openai_chunk({"content": "c"}),
        openai_chunk({"content": "d"}), openai_chunk({"content": "e\\n"}),
        openai_chunk({"content": "f"})],
    "reasoning, text, a call, text": [
        openai_chunk({"reasoning_content": "hmm"}), openai_chunk({"content": "x"}),
        openai_chunk({"content": "y"}),
        openai_chunk({"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                      "function": {"name": "f", "arguments": "{}"}}]}),
        openai_chunk({"content": "z"}), openai_chunk({"content": "w"})],
}


@pytest.mark.parametrize("name", sorted(BRIDGED_STREAMS))
def test_the_bridge_short_path_writes_what_the_general_one_does(name: str,
                                                                monkeypatch: Any) -> None:
    events = [*BRIDGED_STREAMS[name], openai_chunk({}, "stop"),
              openai_chunk({}, None) .replace('"choices":[{"index":0,"delta":{},"logprobs":'
                                              'null,"finish_reason":null}],"usage":null',
                                              '"choices":[],"usage":{"prompt_tokens":3,'
                                              '"completion_tokens":4,"total_tokens":7}'),
              "[DONE]"]
    short, general = (bridge_output(events, s, monkeypatch) for s in (True, False))
    assert short == general
    final = accumulate([(kind, json.loads(data)) for kind, data in (
        block.split("\ndata: ") for block in
        short[0].decode().removeprefix("event: ").strip().split("\n\nevent: "))])
    assert final is not None and final.status == "completed"


def test_the_bridge_takes_the_short_path(monkeypatch: Any) -> None:
    from anyrouter_proxy.providers.responses_stream import ChatToResponses

    fed: list[Any] = []
    original = ChatToResponses.feed
    monkeypatch.setattr(ChatToResponses, "feed",
                        lambda self, chunk: fed.append(chunk) or original(self, chunk))
    bridge_output([*BRIDGED_STREAMS["text"], "[DONE]"], True, monkeypatch)
    # role, the first text (the chat relay learns the usual chunk from it): not " there",
    # "", " caf\u00e9" (not plain: no short path) nor "!"
    assert [c["choices"][0]["delta"] for c in fed] == [
        {"role": "assistant", "content": ""}, {"content": "Hi"}, {"content": ""},
        {"content": " caf\u00e9"}]
