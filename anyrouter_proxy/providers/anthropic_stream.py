"""Stream translators between Anthropic Messages events and OpenAI chat.completion.chunks.

Both are pure state machines: the caller parses SSE (`sse.py`) and feeds events in; they
raise only `ProxyError`s (`UpstreamError` for an upstream error event, an upstream event of
the wrong shape, or a stream that ends without its normal end).

AnthropicToOpenAIStream: Anthropic events -> OpenAI chunks

| Anthropic event | OpenAI chunk |
|---|---|
| message_start | delta {role: assistant, content: ""}; upstream_id, input usage |
| content_block_start text / thinking | delta.content / delta.reasoning_content, if not empty |
| content_block_start tool_use | delta.tool_calls [{index, id, type, function: {name, ""}}] |
| content_block_start redacted_thinking | delta.thinking_blocks [{type: redacted_thinking, data}] |
| text_delta | delta.content |
| thinking_delta | delta.reasoning_content |
| signature_delta | nothing yet: kept for the block's stop |
| content_block_stop of a thinking block | delta.thinking_blocks [{type, thinking, signature}] |
| input_json_delta | delta.tool_calls [{index, function: {arguments}}] |
| message_delta | delta {} with finish_reason; usage updated |
| message_stop | nothing; `finish()` then gives the usage chunk if asked for |
| ping, citations_delta, server-tool blocks, unknown events | nothing |
| error | raises UpstreamError with the upstream's message |

With `response_tool` (a structured answer made with a tool), the chunks then go through
`ResponseToolFold` (structured_answer.py): that tool's input streams as delta.content.

Tool-call `index` counts tool_use blocks only (0, 1, ...), not Anthropic block indexes. Each
thinking block is sent whole, once, in `thinking_blocks` when it ends (text and signature
together, as LiteLLM's non-streamed `thinking_blocks`), while its text also streams as
`reasoning_content`: a client keeps the `thinking_blocks` it saw and sends them back on the
assistant message, which is what keeps thinking alive across tool-use turns.

OpenAIToAnthropicStream: OpenAI chunks -> Anthropic events

| OpenAI chunk | Anthropic events |
|---|---|
| the first chunk | message_start (usage 0 until the usage chunk) |
| delta.reasoning_content (or delta.reasoning) | thinking block, thinking_delta |
| delta.thinking_blocks with a signature | signature_delta on the open thinking block |
| delta.content | text block, text_delta |
| delta.tool_calls with a new index | tool_use block {id, name, input: {}} |
| tool_calls[].function.arguments | input_json_delta {partial_json} |
| finish_reason, usage | remembered for `finish()` |
| {"error": {...}} | raises UpstreamError |

Blocks open and close as the kind of delta changes, indexed 0, 1, ... An argument fragment
for a tool whose block was already closed (interleaved calls) goes to that block's index,
which the Anthropic SDK accumulates by index. `finish()` closes the open block and sends
message_delta (stop_reason, stop_sequence null, the full usage) and message_stop.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from anyrouter_proxy.errors import InvalidRequest, UpstreamError
from anyrouter_proxy.output_estimate import (
    anthropic_delta_tokens,
    openai_choice_tokens,
    text_tokens,
)
from anyrouter_proxy.providers.anthropic_translate import (
    FINISH_REASONS,
    STOP_REASONS,
    anthropic_usage,
    anthropic_usage_dict,
    openai_usage,
    openai_usage_dict,
)
from anyrouter_proxy.providers.shapes import (
    need_dict,
    need_int,
    need_list,
    need_str,
    upstream_invalid,
)
from anyrouter_proxy.providers.structured_answer import ResponseToolFold
from anyrouter_proxy.types import PARTIAL, PROVIDER, Usage

Event = tuple[str, dict[str, Any]]
_TEXT_DELTAS = {"text_delta": "text", "thinking_delta": "thinking"}  # delta type -> its field


def _stream_error(error: Any, default: str) -> UpstreamError:
    """The upstream's own error event, carried with its message."""
    error = error if isinstance(error, dict) else {}
    message = error.get("message")
    kind = error.get("type")
    return UpstreamError(message if isinstance(message, str) and message else default,
                         metadata={"provider_error_type": kind} if isinstance(kind, str)
                         else None)


@dataclass(slots=True)
class _Block:
    kind: str  # text | thinking | tool_use | other
    tool_index: int = -1
    thinking: list[str] = field(default_factory=list)
    signature: str = ""


class AnthropicToOpenAIStream:
    """Feed Anthropic SSE events (event name, parsed data dict); get OpenAI chunk dicts."""

    def __init__(self, *, gen_id: str, model: str, created: int, include_usage: bool,
                 response_tool: str | None = None) -> None:
        self._head = {"id": gen_id, "object": "chat.completion.chunk", "created": created,
                      "model": model}
        self._include_usage = include_usage
        # None until message_start; `partial` (input only) until message_delta's final count.
        self.usage: Usage | None = None
        self.output_tokens = 0  # estimated from the deltas, for a stream without usage
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None
        self._raw_usage: dict[str, Any] = {}
        self._started = False
        self._stopped = False
        self._blocks: dict[int, _Block] = {}
        self._tools = 0
        # A structured answer made with a tool: that tool's call becomes content.
        self._fold = ResponseToolFold(response_tool) if response_tool is not None else None

    def feed(self, event: str, data: dict[str, Any]) -> list[dict[str, Any]]:
        if self._stopped:
            return []
        try:
            chunks = self._feed(event, data)
        except InvalidRequest as exc:
            raise upstream_invalid(exc) from exc
        fold = self._fold
        return chunks if fold is None or not chunks else self._folded(fold, chunks)

    def takes_text(self, index: int, text: str, tokens: int | None = None) -> bool:
        """Whether a text_delta of `text` on block `index` is one chunk `{"content": text}`
        (TextChunk's) and nothing else; if so it is booked, as `feed` books it (`tokens`:
        its text_tokens, when known)."""
        block = self._blocks.get(index)
        if block is None or block.kind != "text" or not self._started or self._stopped \
                or self._fold is not None or not text:
            return False
        self.output_tokens += text_tokens(text) if tokens is None else tokens
        return True

    def _folded(self, fold: ResponseToolFold,
                chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        chunks = fold.feed(chunks)
        if fold.finish_reason is not None:
            self.finish_reason = fold.finish_reason
        return chunks

    def finish(self) -> list[dict[str, Any]]:
        if not self._stopped:
            raise UpstreamError("the upstream stream ended before message_stop")
        chunks = []
        if self.finish_reason is None:
            self.finish_reason = "stop"
            chunks.append(self._chunk({}, "stop"))
        if self._include_usage:
            chunks.append({**self._head, "choices": [],
                           "usage": openai_usage_dict(self.usage or Usage())})
        return chunks if self._fold is None else self._folded(self._fold, chunks)

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        chunk = {**self._head, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                            "finish_reason": finish_reason}]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk

    def _feed(self, event: str, data: Any) -> list[dict[str, Any]]:
        data = need_dict(data, "event data")
        kind = data.get("type")
        if kind.__class__ is not str:
            kind = event
        if kind == "content_block_delta" and self._started:  # the most frequent, first
            return self._block_delta(data)
        if kind == "error":
            raise _stream_error(data.get("error"), "the upstream stream failed")
        if kind == "message_start":
            message = need_dict(data.get("message"), "message")
            self.upstream_id = message.get("id") if isinstance(message.get("id"), str) else None
            self._add_usage(message.get("usage"), PARTIAL)
        chunks = [] if self._started else [self._chunk({"role": "assistant", "content": ""})]
        self._started = True
        if kind == "content_block_start":
            chunks.extend(self._block_start(data))
        elif kind == "content_block_delta":
            chunks.extend(self._block_delta(data))
        elif kind == "content_block_stop":
            chunks.extend(self._block_stop(data))
        elif kind == "message_delta":
            chunks.extend(self._message_delta(data))
        elif kind == "message_stop":
            self._stopped = True
        return chunks

    def _add_usage(self, usage: Any, source: str) -> None:
        """Anthropic's counts are cumulative: later values replace earlier ones."""
        if isinstance(usage, dict):
            self._raw_usage.update({k: v for k, v in usage.items() if v is not None})
            self.usage = anthropic_usage(self._raw_usage)
            self.usage.source = source

    def _block_start(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        index = need_int(data.get("index"), "index")
        block = need_dict(data.get("content_block"), "content_block")
        kind = block.get("type")
        if kind == "tool_use":
            self._blocks[index] = _Block("tool_use", tool_index=self._tools)
            self._tools += 1
            call = {"index": self._tools - 1, "id": need_str(block.get("id"), "content_block.id"),
                    "type": "function",
                    "function": {"name": need_str(block.get("name"), "content_block.name"),
                                 "arguments": ""}}
            return [self._chunk({"tool_calls": [call]})]
        if kind == "redacted_thinking":
            self._blocks[index] = _Block("other")
            data_ = need_str(block.get("data"), "content_block.data")
            return [self._chunk({"thinking_blocks": [{"type": "redacted_thinking",
                                                      "data": data_}]})]
        if kind in ("text", "thinking"):
            self._blocks[index] = _Block(kind)
            text = block.get(kind)
            if isinstance(text, str) and text:
                self.output_tokens += text_tokens(text)
                return self._text(self._blocks[index], text)
            return []
        self._blocks[index] = _Block("other")
        return []

    def _text(self, block: _Block, text: str) -> list[dict[str, Any]]:
        if block.kind == "thinking":
            block.thinking.append(text)
            return [self._chunk({"reasoning_content": text})]
        return [self._chunk({"content": text})]

    def _block_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.get(need_int(data.get("index"), "index"))
        delta = need_dict(data.get("delta"), "delta")
        kind = delta.get("type")
        if block is None:
            return []
        self.output_tokens += anthropic_delta_tokens(delta)
        field_ = _TEXT_DELTAS.get(kind) if isinstance(kind, str) else None
        if field_ is not None and field_ == block.kind:
            text = need_str(delta.get(field_), f"delta.{field_}")
            return self._text(block, text) if text else []
        if kind == "signature_delta" and block.kind == "thinking":
            block.signature += need_str(delta.get("signature"), "delta.signature")
        elif kind == "input_json_delta" and block.kind == "tool_use":
            partial = need_str(delta.get("partial_json"), "delta.partial_json")
            if partial:
                call = {"index": block.tool_index, "function": {"arguments": partial}}
                return [self._chunk({"tool_calls": [call]})]
        return []

    def _block_stop(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        block = self._blocks.pop(need_int(data.get("index"), "index"), None)
        if block is None or block.kind != "thinking":
            return []
        whole = {"type": "thinking", "thinking": "".join(block.thinking),
                 "signature": block.signature}
        return [self._chunk({"thinking_blocks": [whole]})]

    def _message_delta(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        self._add_usage(data.get("usage"), PROVIDER)
        delta = need_dict(data.get("delta", {}), "delta")
        stop = delta.get("stop_reason")
        if not isinstance(stop, str) or self.finish_reason is not None:
            return []
        self.finish_reason = FINISH_REASONS.get(stop, "stop")
        return [self._chunk({}, self.finish_reason)]


class OpenAIToAnthropicStream:
    """Feed OpenAI chat.completion.chunk dicts; get (event_name, data) Anthropic events."""

    def __init__(self, *, model: str, message_id: str) -> None:
        self._model = model
        self._message_id = message_id
        self.usage: Usage | None = None  # the upstream's usage chunk, when one came
        self.output_tokens = 0  # estimated from the deltas, for a stream without usage
        self.finish_reason: str | None = None
        self._started = False
        self._next_index = 0
        self._open: int | None = None
        self._open_kind: str | None = None  # text | thinking | tool:<openai index>
        self._tool_blocks: dict[int, int] = {}  # OpenAI tool index -> Anthropic block index

    def feed(self, chunk: dict[str, Any]) -> list[Event]:
        try:
            return self._feed(chunk)
        except InvalidRequest as exc:
            raise upstream_invalid(exc) from exc

    def ended(self) -> None:
        """The upstream stream reached its normal end: the usage it sent is final."""
        if self.usage is not None:
            self.usage.source = PROVIDER

    def finish(self) -> list[Event]:
        if self.finish_reason is None:
            raise UpstreamError("the upstream stream ended without a finish_reason")
        events = self._message_start() + self._close()
        stop = STOP_REASONS.get(self.finish_reason, "end_turn")
        events.append(("message_delta", {
            "type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": None},
            "usage": anthropic_usage_dict(self.usage or Usage())}))
        events.append(("message_stop", {"type": "message_stop"}))
        return events

    def _feed(self, chunk: Any) -> list[Event]:
        chunk = need_dict(chunk, "chunk")
        if chunk.get("error") is not None:
            raise _stream_error(chunk["error"], "the upstream stream failed")
        usage = None
        if chunk.get("usage") is not None:
            usage = self.usage = openai_usage(need_dict(chunk["usage"], "usage"))
        events = self._message_start()
        choices = need_list(chunk.get("choices") or [], "choices")
        self.output_tokens += openai_choice_tokens(choices)
        for i, item in enumerate(choices):
            choice = need_dict(item, f"choices[{i}]")
            if choice.get("index", 0) != 0:
                continue
            events.extend(self._delta(need_dict(choice.get("delta") or {}, f"choices[{i}].delta")))
            finish = choice.get("finish_reason")
            if isinstance(finish, str):
                self.finish_reason = finish
        if usage is not None and choices and self.finish_reason is None:
            usage.source = PARTIAL  # a running count, choices still coming
        return events

    def _message_start(self) -> list[Event]:
        if self._started:
            return []
        self._started = True
        usage = anthropic_usage_dict(self.usage or Usage())
        usage["output_tokens"] = 0
        message: dict[str, Any] = {"id": self._message_id, "type": "message", "role": "assistant",
                                   "model": self._model, "content": [], "stop_reason": None,
                                   "stop_sequence": None, "usage": usage}
        return [("message_start", {"type": "message_start", "message": message})]

    def _delta(self, delta: dict[str, Any]) -> list[Event]:
        events: list[Event] = []
        reasoning = delta.get("reasoning_content") or delta.get("reasoning")
        if isinstance(reasoning, str) and reasoning:
            events += self._switch("thinking", {"type": "thinking", "thinking": "",
                                                "signature": ""})
            events.append(self._block_delta({"type": "thinking_delta", "thinking": reasoning}))
        for block in need_list(delta.get("thinking_blocks") or [], "delta.thinking_blocks"):
            events += self._signed(need_dict(block, "delta.thinking_blocks[]"))
        content = delta.get("content")
        if isinstance(content, str) and content:
            events += self._switch("text", {"type": "text", "text": ""})
            events.append(self._block_delta({"type": "text_delta", "text": content}))
        for i, call in enumerate(need_list(delta.get("tool_calls") or [], "delta.tool_calls")):
            events += self._tool_call(need_dict(call, f"delta.tool_calls[{i}]"), i)
        return events

    def _signed(self, block: dict[str, Any]) -> list[Event]:
        if block.get("type") == "redacted_thinking" and isinstance(block.get("data"), str):
            redacted = {"type": "redacted_thinking", "data": block["data"]}
            return self._switch("redacted", redacted) + self._close()
        signature = block.get("signature")
        if not isinstance(signature, str) or not signature:
            return []
        events = self._switch("thinking", {"type": "thinking", "thinking": "", "signature": ""})
        events.append(self._block_delta({"type": "signature_delta", "signature": signature}))
        return events

    def _tool_call(self, call: dict[str, Any], position: int) -> list[Event]:
        tool = need_int(call.get("index", position), "delta.tool_calls[].index")
        function = need_dict(call.get("function") or {}, "delta.tool_calls[].function")
        events: list[Event] = []
        if tool not in self._tool_blocks:
            call_id = call.get("id") if isinstance(call.get("id"), str) else None
            name = function.get("name")
            events += self._switch(f"tool:{tool}", {
                "type": "tool_use", "id": call_id or f"toolu_{uuid.uuid4().hex[:24]}",
                "name": name if isinstance(name, str) else "", "input": {}})
            self._tool_blocks[tool] = self._next_index - 1
        arguments = function.get("arguments")
        if isinstance(arguments, str) and arguments:
            events.append(self._block_delta({"type": "input_json_delta", "partial_json": arguments},
                                            index=self._tool_blocks[tool]))
        return events

    def _switch(self, kind: str, block: dict[str, Any]) -> list[Event]:
        """Make `kind` the open block: close another one, start a new one."""
        if self._open_kind == kind:
            return []
        events = self._close()
        self._open, self._open_kind = self._next_index, kind
        self._next_index += 1
        events.append(("content_block_start", {"type": "content_block_start",
                                               "index": self._open, "content_block": block}))
        return events

    def _close(self) -> list[Event]:
        if self._open is None:
            return []
        index, self._open, self._open_kind = self._open, None, None
        return [("content_block_stop", {"type": "content_block_stop", "index": index})]

    def _block_delta(self, delta: dict[str, Any], index: int | None = None) -> Event:
        return ("content_block_delta", {"type": "content_block_delta",
                                        "index": self._open if index is None else index,
                                        "delta": delta})
