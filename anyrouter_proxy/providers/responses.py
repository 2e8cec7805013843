"""POST /responses on any provider that serves chat/completions: the Responses request
translated to a Chat Completions request (responses_to_chat.py), built by that provider's
own chat exchange, and its chat answer and chat stream translated back
(responses_output.py, responses_stream.py). A new provider kind that serves chat serves
Responses through this bridge without more code."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, cast

import orjson

from ..errors import InvalidRequest, ProxyError
from ..sse import DONE_EVENT, SSEDecoder, SSEEvent, encode_event
from ..types import Usage
from .base import (
    CallContext,
    ChatChunkSource,
    Exchange,
    Reply,
    StreamTranslator,
    UpstreamCall,
    invalid_response,
)
from .responses_input import input_items
from .responses_output import (
    chat_output,
    client_items,
    finished,
    response_shell,
    responses_usage,
    wants_encrypted,
)
from .responses_stream import ChatToResponses, Event
from .responses_to_chat import responses_to_chat_request
from .shapes import need_dict, need_list

# Chat parameters a translator may name in an error, as the Responses client wrote them.
CHAT_PARAMS = {"response_format": "text.format", "reasoning_effort": "reasoning.effort",
               "max_tokens": "max_output_tokens", "max_completion_tokens": "max_output_tokens",
               "messages": "input"}
_HEAD = re.compile(r"[a-z_]+")


class ResponsesViaChat:
    """Responses client, any chat-serving upstream (through `chat`, its chat exchange).
    `signed_thinking`: the upstream takes Anthropic thinking blocks back."""

    def __init__(self, chat: Exchange, *, signed_thinking: bool = False) -> None:
        self.chat = chat
        self.signed_thinking = signed_thinking

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        try:
            request = responses_to_chat_request(body, input_items(body.get("input")),
                                                signed_thinking=self.signed_thinking)
            return self.chat.build(request, ctx)
        except InvalidRequest as exc:
            raise _in_responses_terms(exc) from None

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        inner = self.chat.reply(data, ctx)
        body = dict(ctx.request)
        response = response_shell(body, gen_id=ctx.gen_id, model=ctx.model,
                                  created_at=ctx.created)
        try:
            choices = need_list(inner.body.get("choices"), "choices")
            message = need_dict(choices[0] if choices else None, "choices[0]").get("message")
            items = chat_output(need_dict(message, "choices[0].message"),
                                incomplete=inner.finish_reason in ("length", "content_filter"))
        except InvalidRequest as exc:
            raise invalid_response(ctx, exc.message) from None
        finished(response, inner.finish_reason)
        response["output"] = client_items(items, wants_encrypted(body))
        response["usage"] = responses_usage(inner.usage) if inner.usage is not None else None
        return Reply(response, inner.usage, inner.finish_reason, inner.upstream_id,
                     inner.output_tokens, output_items=items)

    def translator(self, ctx: CallContext) -> ChatBridgeRelay:
        return ChatBridgeRelay(self.chat.translator(ctx), ctx)


def _in_responses_terms(exc: InvalidRequest) -> InvalidRequest:
    """A chat translator's refusal, naming the Responses field the client wrote."""
    param = exc.param
    head = _HEAD.match(param or "")
    mapped = CHAT_PARAMS.get(head.group(0)) if head is not None else None
    if param is None or head is None or mapped is None:
        return exc
    named = mapped if mapped == "input" else mapped + param[head.end():]
    return InvalidRequest(exc.message.replace(param, named), code=exc.code, param=named,
                          metadata=exc.metadata)


class ChatBridgeRelay:
    """Relays a chat stream (as the chat exchange's own relay gives it) as Responses
    events; usage, finish reason and output estimate are the chat relay's."""

    __slots__ = ("_ctx", "_decoder", "_events", "_inner", "_source", "_text")

    def __init__(self, inner: StreamTranslator, ctx: CallContext) -> None:
        self._inner = inner
        self._ctx = ctx
        body = dict(ctx.request)
        self._events = ChatToResponses(
            response_shell(body, gen_id=ctx.gen_id, model=ctx.model, created_at=ctx.created),
            encrypted=wants_encrypted(body))
        self._decoder: SSEDecoder | None = None
        # The chat relay's chunks as dicts, when it offers them (no encode and re-parse).
        self._source = cast(ChatChunkSource, inner) \
            if hasattr(inner, "chunks") and hasattr(inner, "finish_chunks") else None
        # The text of the usual chunk, when the chat relay can tell it without the chunk.
        self._text: Callable[[SSEEvent], str | None] | None = \
            getattr(inner, "text", None) if self._source is not None else None

    @property
    def usage(self) -> Usage | None:
        return self._inner.usage

    @property
    def finish_reason(self) -> str | None:
        return self._inner.finish_reason

    @property
    def upstream_id(self) -> str | None:
        return self._inner.upstream_id

    @property
    def output_tokens(self) -> int:
        return self._inner.output_tokens

    @property
    def output_items(self) -> list[dict[str, Any]]:
        return self._events.output_items

    @property
    def response(self) -> dict[str, Any]:
        """The response object as the client last saw it."""
        return self._events.response

    def feed(self, event: SSEEvent) -> list[bytes]:
        machine = self._events
        if self._text is not None and (text := self._text(event)) is not None:
            encoded = machine.text_delta(text)  # the usual event, first
            if encoded is not None:
                return [encoded]
            return _encode(machine.feed({"choices": [{"index": 0, "delta": {"content": text},
                                                      "finish_reason": None}]}))
        if self._source is not None:
            chunks = self._source.chunks(event)
            if len(chunks) == 1:  # the usual event, first
                return _encode(machine.feed(chunks[0]))
        else:
            chunks = [c for raw in self._inner.feed(event) for c in self._chunks(raw)]
        events: list[Event] = []
        for chunk in chunks:
            events.extend(machine.feed(chunk))
        return _encode(events)

    def finish(self) -> list[bytes]:
        # Both raise when the chat stream was cut short.
        chunks = self._source.finish_chunks() if self._source is not None else [
            c for raw in self._inner.finish() for c in self._chunks(raw)]
        events: list[Event] = []
        for chunk in chunks:
            events.extend(self._events.feed(chunk))
        usage = self._inner.usage
        shown = None
        if usage is not None:
            shown = {**responses_usage(usage), "cost": self._ctx.cost_of(usage)}
        events.extend(self._events.finish(shown))
        return _encode(events)

    def failed(self, exc: ProxyError) -> bytes:
        """The stream's last event when it fails after it began: response.failed."""
        usage = self._inner.usage
        error = exc.envelope()["error"]
        return b"".join(_encode(self._events.failed(
            error, responses_usage(usage) if usage is not None else None)))

    def _chunks(self, raw: bytes) -> list[dict[str, Any]]:
        """The chunk dicts of what the chat relay would have sent (one event, as every
        relay writes them, or any SSE)."""
        if raw.startswith(b"data: {") and raw.endswith(b"\n\n") and raw.count(b"\n") == 2:
            chunk = orjson.loads(memoryview(raw)[6:-2])
            return [chunk] if isinstance(chunk, dict) else []
        if raw == DONE_EVENT:
            return []
        if self._decoder is None:
            self._decoder = SSEDecoder()
        chunks = []
        for event in self._decoder.feed(raw):
            if not event.is_done:
                data = orjson.loads(event.data)
                if isinstance(data, dict):
                    chunks.append(data)
        return chunks


def _encode(events: list[Event]) -> list[bytes]:
    return [encode_event(orjson.dumps(data), kind) for kind, data in events]
