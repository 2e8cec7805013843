"""Chat Completions stream chunks -> a Responses API event stream (a pure state machine:
chunk dicts in, (event type, event dict) pairs out).

| chat chunk | Responses events |
|---|---|
| the first chunk | response.created, response.in_progress (status in_progress, output []) |
| delta.reasoning_content (or reasoning) | a reasoning item: output_item.added, |
|  | reasoning_summary_part.added, reasoning_summary_text.delta |
| delta.thinking_blocks (a signed Anthropic block) | its signature on the open reasoning |
|  | item, which closes |
| delta.content | a message item: output_item.added, content_part.added, output_text.delta |
| delta.refusal | a refusal part of the message item: content_part.added, refusal.delta |
| delta.tool_calls, a new index | a function_call item: output_item.added |
| tool_calls[].function.arguments | function_call_arguments.delta on that item |
| finish_reason | kept for the end |

An item closes (its .done events, then output_item.done with the whole item) when an item
of another kind opens; function calls close at the end, since chat may interleave their
arguments. `finish` closes what is open and sends response.completed, or
response.incomplete when the output was cut by max_output_tokens or a content filter, with
the whole response and its usage. `failed` sends response.failed with the output so far
and the error. Every event carries its `sequence_number`, from 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..ids import new_item_id
from .responses_output import (
    REDACTED_PREFIX,
    THINKING_PREFIX,
    client_items,
    finished,
    function_call_item,
    message_item,
    output_text,
    reasoning_item,
)

Event = tuple[str, dict[str, Any]]
TEXT_DELTA = "response.output_text.delta"


@dataclass(slots=True)
class _Message:
    id: str
    index: int
    parts: list[dict[str, Any]] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)  # of the open part
    kind: str = ""  # the open part: output_text | refusal | "" (none)
    delta_head: bytes = b""  # the open text part's output_text.delta, encoded up to the text


@dataclass(slots=True)
class _Reasoning:
    id: str
    index: int
    texts: list[str] = field(default_factory=list)
    encrypted: str | None = None


@dataclass(slots=True)
class _Call:
    id: str
    index: int
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


class ChatToResponses:
    """Feed chat.completion.chunk dicts; get Responses events."""

    def __init__(self, shell: dict[str, Any], *, encrypted: bool) -> None:
        self.response = shell  # in_progress until `finish`; the client's view
        self.finish_reason: str | None = None
        self._encrypted = encrypted
        self._seq = 0
        self._started = False
        self._items: list[dict[str, Any] | None] = []  # whole items by output index
        self._message: _Message | None = None
        self._reasoning: _Reasoning | None = None
        self._calls: dict[int, _Call] = {}  # by chat tool-call index

    @property
    def output_items(self) -> list[dict[str, Any]]:
        """The whole output items (encrypted_content included) once closed."""
        return [item for item in self._items if item is not None]

    # -- events ----------------------------------------------------------------------------

    def _event(self, kind: str, data: dict[str, Any]) -> Event:
        data["type"] = kind
        data["sequence_number"] = self._seq
        self._seq += 1
        return kind, data

    def start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        return [self._event("response.created", {"response": dict(self.response)}),
                self._event("response.in_progress", {"response": dict(self.response)})]

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        events = self.start() if not self._started else []
        choices = chunk.get("choices")
        if choices.__class__ is not list or not choices:
            return events
        choice = choices[0]
        if choice.__class__ is not dict:
            return events
        delta = choice.get("delta")
        if delta.__class__ is dict and delta:
            content = delta.get("content")
            if len(delta) == 1 and content.__class__ is str:  # the usual chunk, first
                if content:
                    events.extend(self._text(content, "output_text"))
            else:
                events.extend(self._delta(delta))
        finish = choice.get("finish_reason")
        if finish.__class__ is str and finish:
            self.finish_reason = finish
        return events

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events.extend(self._reason(reasoning))
        blocks = delta.get("thinking_blocks")
        if isinstance(blocks, list):
            for block in blocks:
                if isinstance(block, dict):
                    events.extend(self._signed(block))
        for name in ("content", "refusal"):
            text = delta.get(name)
            if isinstance(text, str) and text:
                events.extend(self._text(text, "output_text" if name == "content" else name))
        calls = delta.get("tool_calls")
        if isinstance(calls, list):
            for position, call in enumerate(calls):
                if isinstance(call, dict):
                    events.extend(self._call(call, position))
        return events

    def text_delta(self, text: str) -> bytes | None:
        """A delta of text (what a chat chunk `{"content": text}` gives) as its encoded
        event, when it goes on the open text part: the usual event of a stream, without
        the event dict. None otherwise: `feed` it as that chunk."""
        message = self._message
        if message is None or message.kind != "output_text" or not text:
            return None
        message.texts.append(text)
        head = message.delta_head
        if not head:
            head = message.delta_head = (
                b"event: " + TEXT_DELTA.encode() + b'\ndata: {"item_id":'
                + orjson.dumps(message.id) + b',"output_index":' + b"%d" % message.index
                + b',"content_index":' + b"%d" % len(message.parts) + b',"delta":')
        seq = self._seq
        self._seq = seq + 1
        # The keys in the order `_text` and `_event` give them.
        return (head + orjson.dumps(text) + b',"logprobs":[],"type":"' + TEXT_DELTA.encode()
                + b'","sequence_number":' + b"%d" % seq + b"}\n\n")

    # -- message items -----------------------------------------------------------------------

    def _text(self, text: str, kind: str) -> list[Event]:
        message = self._message
        events: list[Event] = []
        if message is None:
            events = self._close_reasoning()
            message = self._message = _Message(new_item_id("msg_"), self._open_index())
            events.append(self._event("response.output_item.added", {
                "output_index": message.index, "item": message_item(message.id, [],
                                                                    "in_progress")}))
        if message.kind != kind:
            events.extend(self._close_part(message))
            message.kind = kind
            part = output_text("") if kind == "output_text" else {"type": "refusal",
                                                                   "refusal": ""}
            events.append(self._event("response.content_part.added", {
                "item_id": message.id, "output_index": message.index,
                "content_index": len(message.parts), "part": part}))
        message.texts.append(text)
        if kind == "output_text":
            events.append(self._event(TEXT_DELTA, {
                "item_id": message.id, "output_index": message.index,
                "content_index": len(message.parts), "delta": text, "logprobs": []}))
        else:
            events.append(self._event("response.refusal.delta", {
                "item_id": message.id, "output_index": message.index,
                "content_index": len(message.parts), "delta": text}))
        return events

    def _close_part(self, message: _Message) -> list[Event]:
        if not message.kind:
            return []
        text = "".join(message.texts)
        where = {"item_id": message.id, "output_index": message.index,
                 "content_index": len(message.parts)}
        if message.kind == "output_text":
            part = output_text(text)
            done = self._event("response.output_text.done", {**where, "text": text,
                                                             "logprobs": []})
        else:
            part = {"type": "refusal", "refusal": text}
            done = self._event("response.refusal.done", {**where, "refusal": text})
        message.parts.append(part)
        message.kind, message.texts, message.delta_head = "", [], b""
        return [done, self._event("response.content_part.done", {**where, "part": part})]

    def _close_message(self, status: str = "completed") -> list[Event]:
        message = self._message
        if message is None:
            return []
        self._message = None
        events = self._close_part(message)
        item = message_item(message.id, message.parts, status)
        return events + self._done(message.index, item)

    # -- reasoning items -----------------------------------------------------------------

    def _open_reasoning(self) -> list[Event]:
        events = self._close_message()
        reasoning = self._reasoning = _Reasoning(new_item_id("rs_"), self._open_index())
        events.append(self._event("response.output_item.added", {
            "output_index": reasoning.index, "item": reasoning_item(reasoning.id, "")}))
        return events

    def _reason(self, text: str) -> list[Event]:
        events = self._open_reasoning() if self._reasoning is None else []
        reasoning = self._reasoning
        assert reasoning is not None
        if not reasoning.texts:
            events.append(self._event("response.reasoning_summary_part.added", {
                "item_id": reasoning.id, "output_index": reasoning.index, "summary_index": 0,
                "part": {"type": "summary_text", "text": ""}}))
        reasoning.texts.append(text)
        events.append(self._event("response.reasoning_summary_text.delta", {
            "item_id": reasoning.id, "output_index": reasoning.index, "summary_index": 0,
            "delta": text}))
        return events

    def _signed(self, block: dict[str, Any]) -> list[Event]:
        """A whole Anthropic thinking block: its signature closes the open reasoning item
        (a redacted one is an item of its own)."""
        if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            events = self._close_reasoning() + self._open_reasoning()
            assert self._reasoning is not None
            self._reasoning.encrypted = REDACTED_PREFIX + block["data"]
            return events + self._close_reasoning()
        signature = block.get("signature")
        if not isinstance(signature, str) or not signature:
            return []
        events = []
        if self._reasoning is None:
            text = block.get("thinking")
            events = self._reason(text) if isinstance(text, str) and text \
                else self._open_reasoning()
        assert self._reasoning is not None
        self._reasoning.encrypted = THINKING_PREFIX + signature
        return events + self._close_reasoning()

    def _close_reasoning(self) -> list[Event]:
        reasoning = self._reasoning
        if reasoning is None:
            return []
        self._reasoning = None
        item = reasoning_item(reasoning.id, "".join(reasoning.texts), reasoning.encrypted)
        events: list[Event] = []
        if reasoning.texts:
            where = {"item_id": reasoning.id, "output_index": reasoning.index,
                     "summary_index": 0}
            text = item["summary"][0]["text"]
            events.append(self._event("response.reasoning_summary_text.done",
                                      {**where, "text": text}))
            events.append(self._event("response.reasoning_summary_part.done", {
                **where, "part": {"type": "summary_text", "text": text}}))
        return events + self._done(reasoning.index, item)

    # -- function calls ------------------------------------------------------------------

    def _call(self, raw: dict[str, Any], position: int) -> list[Event]:
        index = raw.get("index", position)
        function = raw.get("function")
        function = function if isinstance(function, dict) else {}
        call = self._calls.get(index) if isinstance(index, int) else None
        events: list[Event] = []
        if call is None:
            events = self._close_message() + self._close_reasoning()
            call_id, name = raw.get("id"), function.get("name")
            call = _Call(new_item_id("fc_"), self._open_index(),
                         call_id if isinstance(call_id, str) and call_id
                         else new_item_id("call_"), name if isinstance(name, str) else "")
            self._calls[index if isinstance(index, int) else -1 - position] = call
            events.append(self._event("response.output_item.added", {
                "output_index": call.index,
                "item": function_call_item(call.id, call.call_id, call.name, "",
                                           "in_progress")}))
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            call.arguments.append(arguments)
            events.append(self._event("response.function_call_arguments.delta", {
                "item_id": call.id, "output_index": call.index, "delta": arguments}))
        return events

    def _close_calls(self) -> list[Event]:
        events: list[Event] = []
        for call in self._calls.values():
            arguments = "".join(call.arguments)
            events.append(self._event("response.function_call_arguments.done", {
                "item_id": call.id, "output_index": call.index, "arguments": arguments}))
            events.extend(self._done(call.index, function_call_item(
                call.id, call.call_id, call.name, arguments, "completed")))
        self._calls = {}
        return events

    # -- items and the end -----------------------------------------------------------------

    def _open_index(self) -> int:
        self._items.append(None)
        return len(self._items) - 1

    def _done(self, index: int, item: dict[str, Any]) -> list[Event]:
        self._items[index] = item
        shown = client_items([item], self._encrypted)[0]
        return [self._event("response.output_item.done", {"output_index": index,
                                                          "item": shown})]

    def finish(self, usage: dict[str, Any] | None) -> list[Event]:
        """Close what is open; response.completed (or .incomplete) with `usage`."""
        events = self.start()
        incomplete = self.finish_reason in ("length", "content_filter")
        events += self._close_reasoning()
        events += self._close_message("incomplete" if incomplete else "completed")
        events += self._close_calls()
        response = finished(dict(self.response), self.finish_reason)
        response["output"] = client_items(self.output_items, self._encrypted)
        response["usage"] = usage
        self.response = response
        kind = "response.incomplete" if response["status"] == "incomplete" \
            else "response.completed"
        return [*events, self._event(kind, {"response": response})]

    def failed(self, error: dict[str, Any], usage: dict[str, Any] | None) -> list[Event]:
        """response.failed: the output so far (open items as they are, incomplete)."""
        events = self.start()
        output = list(self._items)
        for state in (self._message, self._reasoning, *self._calls.values()):
            if state is not None:
                output[state.index] = _partial(state)
        response = {**self.response, "status": "failed", "error": error, "usage": usage,
                    "output": client_items([i for i in output if i is not None],
                                           self._encrypted)}
        self.response = response
        return [*events, self._event("response.failed", {"response": response})]


def _partial(state: _Message | _Reasoning | _Call) -> dict[str, Any]:
    if isinstance(state, _Message):
        parts = list(state.parts)
        if state.kind == "output_text":
            parts.append(output_text("".join(state.texts)))
        elif state.kind:
            parts.append({"type": "refusal", "refusal": "".join(state.texts)})
        return message_item(state.id, parts, "incomplete")
    if isinstance(state, _Reasoning):
        return reasoning_item(state.id, "".join(state.texts), state.encrypted)
    return function_call_item(state.id, state.call_id, state.name, "".join(state.arguments),
                              "incomplete")
