"""ConverseStream events -> Anthropic Messages events (a pure state machine).

Anthropic clients get these events as they are; OpenAI clients get them through
`AnthropicToOpenAIStream` (anthropic_stream.py), as every Anthropic-shaped stream is.

| Converse event | Anthropic events |
|---|---|
| messageStart | message_start (usage 0 until metadata: Converse reports it last) |
| contentBlockStart toolUse | content_block_start tool_use {id, name, input: {}} |
| contentBlockDelta text | content_block_start text (once) + text_delta |
| contentBlockDelta reasoningContent text | thinking block (once) + thinking_delta |
| contentBlockDelta reasoningContent signature | signature_delta |
| contentBlockDelta reasoningContent redactedContent | redacted_thinking block {data} |
| contentBlockDelta toolUse input | input_json_delta {partial_json} |
| contentBlockStop | content_block_stop (of a block that started) |
| messageStop {stopReason} | kept for message_delta |
| metadata {usage} | message_delta {stop_reason, usage} + message_stop |
| citation deltas, unknown events | nothing |

Converse sends no start for text and reasoning blocks: the first delta of a block opens
it. Block indexes are renumbered 0, 1, ... in the order blocks open (the Anthropic SDK
indexes its content list by them). The stream's normal end is the metadata event (it
carries the usage): a stream that stops before it was cut short. Exception events
(throttlingException, modelStreamErrorException, ...) are the caller's to raise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.output_estimate import text_tokens
from anyrouter_proxy.providers.anthropic_translate import FINISH_REASONS, anthropic_usage
from anyrouter_proxy.providers.bedrock_translate import converse_usage, stop_reason
from anyrouter_proxy.providers.shapes import (
    need_dict,
    need_int,
    need_str,
    upstream_invalid,
)
from anyrouter_proxy.types import PROVIDER, Usage

Event = tuple[str, dict[str, Any]]


def block_delta(index: int, delta: dict[str, Any]) -> Event:
    """The content_block_delta event of block `index` carrying `delta`."""
    return ("content_block_delta", {"type": "content_block_delta", "index": index,
                                    "delta": delta})


@dataclass(slots=True)
class _Block:
    index: int  # the Anthropic index
    kind: str  # text | thinking | redacted_thinking | tool_use


class ConverseToAnthropicStream:
    """Feed (Converse event type, payload dict); get (Anthropic event name, data) pairs."""

    def __init__(self, *, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self.usage: Usage | None = None  # the metadata event's: final
        self.output_tokens = 0  # estimated from the deltas, for a stream without usage
        self.finish_reason: str | None = None  # OpenAI's name for it (the usage row's)
        self._stop: str | None = None  # Anthropic's stop_reason
        self._usage_raw: dict[str, Any] | None = None
        self._started = False
        self._done = False
        self._blocks: dict[int, _Block] = {}  # by Converse index
        self._next = 0

    @property
    def done(self) -> bool:
        return self._done

    def feed(self, event: str, data: dict[str, Any]) -> list[Event]:
        if self._done:
            return []
        try:
            events = self._feed(event, need_dict(data, "event data"))
        except InvalidRequest as exc:
            raise upstream_invalid(exc) from exc
        if not self._started and events:
            self._started = True
            if events[0][0] != "message_start":
                events.insert(0, self._message_start())
        return events

    def text_block(self, data: dict[str, Any]) -> tuple[int, str] | None:
        """The usual contentBlockDelta, a piece of text on a text block already open: its
        Anthropic index and text (what `feed` would send as a text_delta), not booked yet
        (`book_text`). None for any other payload, which `feed` then takes."""
        delta = data.get("delta")
        if delta.__class__ is not dict or len(delta) != 1 or not self._started:
            return None
        text = delta.get("text")
        index = data.get("contentBlockIndex")
        block = self._blocks.get(index) if index.__class__ is int else None
        if text.__class__ is not str or block is None or block.kind != "text" or self._done:
            return None
        return block.index, text

    def book_text(self, tokens: int) -> None:
        """A text_block's text relayed: its tokens (text_tokens), as `feed` counts them."""
        self.output_tokens += tokens

    def _feed(self, event: str, data: dict[str, Any]) -> list[Event]:
        if event == "contentBlockDelta":  # the most frequent event, first
            return self._delta(data)
        if event == "messageStart":
            return [] if self._started else [self._message_start()]
        if event == "contentBlockStart":
            return self._tool_start(data)
        if event == "contentBlockStop":
            block = self._blocks.pop(need_int(data.get("contentBlockIndex"),
                                              "contentBlockIndex"), None)
            return [] if block is None else [("content_block_stop", {
                "type": "content_block_stop", "index": block.index})]
        if event == "messageStop":
            self._stop = stop_reason(data.get("stopReason"))
            self.finish_reason = FINISH_REASONS.get(self._stop, "stop")
            return self._end()
        if event == "metadata":
            self._usage_raw = converse_usage(data.get("usage"))
            self.usage = anthropic_usage(self._usage_raw)
            self.usage.source = PROVIDER
            return self._end()
        return []

    def _message_start(self) -> Event:
        self._started = True
        return ("message_start", {"type": "message_start", "message": {
            "id": self._message_id, "type": "message", "role": "assistant",
            "model": self._model, "content": [], "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": 0, "output_tokens": 0}}})

    def _open(self, converse_index: int, block: dict[str, Any], kind: str) -> Event:
        self._blocks[converse_index] = _Block(self._next, kind)
        self._next += 1
        return ("content_block_start", {"type": "content_block_start",
                                        "index": self._next - 1, "content_block": block})

    def _tool_start(self, data: dict[str, Any]) -> list[Event]:
        index = need_int(data.get("contentBlockIndex"), "contentBlockIndex")
        start = need_dict(data.get("start"), "start")
        if "toolUse" not in start or index in self._blocks:
            return []
        tool = need_dict(start["toolUse"], "start.toolUse")
        name = need_str(tool.get("name"), "start.toolUse.name")
        self.output_tokens += text_tokens(name)
        return [self._open(index, {"type": "tool_use", "id": need_str(
            tool.get("toolUseId"), "start.toolUse.toolUseId"), "name": name, "input": {}},
            "tool_use")]

    def _delta(self, data: dict[str, Any]) -> list[Event]:
        index = need_int(data.get("contentBlockIndex"), "contentBlockIndex")
        delta = need_dict(data.get("delta"), "delta")
        block = self._blocks.get(index)
        if "text" in delta:  # the most frequent delta: no list built but the answer
            text = need_str(delta["text"], "delta.text")
            if block is not None:
                return self._emit(block, "text", {"type": "text_delta", "text": text}, text)
            start = self._open(index, {"type": "text", "text": ""}, "text")
            return [start, *self._emit(self._blocks[index], "text",
                                       {"type": "text_delta", "text": text}, text)]
        if "toolUse" in delta:
            partial = need_str(need_dict(delta["toolUse"], "delta.toolUse").get("input"),
                               "delta.toolUse.input")
            if block is None or block.kind != "tool_use":
                return []
            return self._emit(block, "tool_use", {"type": "input_json_delta",
                                                  "partial_json": partial}, partial)
        if "reasoningContent" in delta:
            return self._reasoning(index, block, need_dict(delta["reasoningContent"],
                                                           "delta.reasoningContent"))
        return []

    def _reasoning(self, index: int, block: _Block | None,
                   delta: dict[str, Any]) -> list[Event]:
        if "redactedContent" in delta:
            data = need_str(delta["redactedContent"], "delta.reasoningContent.redactedContent")
            return [] if block is not None else [self._open(
                index, {"type": "redacted_thinking", "data": data}, "redacted_thinking")]
        events = [] if block is not None else [
            self._open(index, {"type": "thinking", "thinking": "", "signature": ""},
                       "thinking")]
        block = self._blocks[index]
        if "text" in delta:
            text = need_str(delta["text"], "delta.reasoningContent.text")
            return events + self._emit(block, "thinking", {"type": "thinking_delta",
                                                           "thinking": text}, text)
        if "signature" in delta:
            signature = need_str(delta["signature"], "delta.reasoningContent.signature")
            return events + self._emit(block, "thinking", {"type": "signature_delta",
                                                           "signature": signature}, "")
        return events

    def _emit(self, block: _Block, kind: str, delta: dict[str, Any], text: str) -> list[Event]:
        if block.kind != kind:
            return []
        self.output_tokens += text_tokens(text)
        return [block_delta(block.index, delta)]

    def _end(self) -> list[Event]:
        """message_delta and message_stop once both the stop reason and the usage came."""
        if self._stop is None or self._usage_raw is None:
            return []
        self._done = True
        events = [("content_block_stop", {"type": "content_block_stop", "index": block.index})
                  for block in self._blocks.values()]  # blocks Converse left open
        self._blocks.clear()
        delta = {"stop_reason": self._stop, "stop_sequence": None}
        return [*events,
                ("message_delta", {"type": "message_delta", "delta": delta,
                                   "usage": self._usage_raw}),
                ("message_stop", {"type": "message_stop"})]

