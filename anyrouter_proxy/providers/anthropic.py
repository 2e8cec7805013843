"""The Anthropic wire: /v1/messages passed through, and OpenAI chat/completions translated
to it (the translation itself is in `anthropic_translate.py` / `anthropic_stream.py`)."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import UpstreamError
from ..output_cap import cap_anthropic_body
from ..output_estimate import anthropic_content_tokens, anthropic_delta_tokens
from ..redaction import redact_error
from ..sse import DONE_EVENT, SSEEvent, encode_event
from ..types import PARTIAL, Usage
from .anthropic_stream import AnthropicToOpenAIStream
from .anthropic_translate import (
    FINISH_REASONS,
    anthropic_to_openai_response,
    anthropic_usage,
    translate_openai_request,
)
from .base import (
    GATEWAY_FIELDS,
    CallContext,
    Reply,
    UpstreamCall,
    cut_short,
    event_data,
    invalid_response,
    stream_error,
)
from .chunk_template import TextChunk, plain

MESSAGES_PATH = "/messages"
FORWARDED_CLIENT_HEADERS = ("anthropic-version", "anthropic-beta")


def anthropic_headers(ctx: CallContext) -> dict[str, str]:
    headers = {"Content-Type": "application/json",
               "anthropic-version": ctx.provider.anthropic_version}
    if ctx.provider.api_key:
        headers["x-api-key"] = ctx.provider.api_key
    for name in FORWARDED_CLIENT_HEADERS:
        value = ctx.client_headers.get(name)
        if value:
            headers[name] = value
    headers.update(ctx.provider.headers)
    return headers


class AnthropicPassthrough:
    """Anthropic client, Anthropic upstream: swap the model, relay events as they come."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        out = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
        out["model"] = ctx.route.model
        if ctx.output is not None:
            cap_anthropic_body(out, ctx.output.tokens)
        return UpstreamCall(MESSAGES_PATH, out, anthropic_headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        if not isinstance(data, dict) or not isinstance(data.get("content"), list):
            raise invalid_response(ctx, "not an Anthropic message")
        data["model"] = ctx.model
        usage = anthropic_usage(data["usage"]) if isinstance(data.get("usage"), dict) else None
        upstream_id = data.get("id")
        stop = data.get("stop_reason")
        return Reply(data, usage, FINISH_REASONS.get(stop) if isinstance(stop, str) else None,
                     upstream_id if isinstance(upstream_id, str) else None,
                     anthropic_content_tokens(data["content"]) if usage is None else 0)

    def translator(self, ctx: CallContext) -> AnthropicRelay:
        return AnthropicRelay(ctx)


class AnthropicTokenCounter:
    """/messages/count_tokens passed through (the route's model swapped in)."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        return UpstreamCall(f"{MESSAGES_PATH}/count_tokens",
                            {**body, "model": ctx.route.model}, anthropic_headers(ctx))

    def answer(self, raw: bytes, ctx: CallContext) -> bytes:
        return raw


class AnthropicRelay:
    """Relays Anthropic events unchanged (message_start gets the public model id), keeping
    the usage, stop reason and whether message_stop came, and estimating the output it
    relayed. message_start's usage is `partial` (input only); message_delta's is final."""

    __slots__ = ("_ctx", "_done", "_input", "finish_reason", "output_tokens", "upstream_id",
                 "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._done = False
        self._input: dict[str, Any] = {}
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None
        self.output_tokens = 0

    def feed(self, event: SSEEvent) -> list[bytes]:
        name = event.event or ""
        if name == "ping":
            return [encode_event(event.data, name)]
        data = event_data(event, self._ctx)
        kind = name or str(data.get("type", ""))
        if kind == "content_block_delta":  # the most frequent event, first
            self.output_tokens += anthropic_delta_tokens(data.get("delta"))
        elif kind == "content_block_start":
            self.output_tokens += anthropic_content_tokens([data.get("content_block")])
        elif kind == "error":
            raise stream_error(data.get("error"), self._ctx)
        elif kind == "message_start":
            message = data.get("message")
            if isinstance(message, dict):
                self.upstream_id = message.get("id") if isinstance(message.get("id"), str) \
                    else None
                if isinstance(message.get("usage"), dict):
                    self._input = message["usage"]
                    self.usage = anthropic_usage(self._input)
                    self.usage.source = PARTIAL
                message["model"] = self._ctx.model
                return [encode_event(orjson.dumps(data), name or None)]
        elif kind == "message_delta":
            delta = data.get("usage")
            if isinstance(delta, dict):
                self.usage = anthropic_usage({**self._input, **delta})
            stop = data.get("delta", {}).get("stop_reason") if isinstance(
                data.get("delta"), dict) else None
            if isinstance(stop, str) and stop:
                self.finish_reason = FINISH_REASONS.get(stop, stop)
        elif kind == "message_stop":
            self._done = True
        return [encode_event(event.data, name or None)]

    def finish(self) -> list[bytes]:
        if not self._done:
            raise cut_short(self._ctx, "message_stop")
        return []


class OpenAIViaAnthropic:
    """OpenAI chat client, Anthropic upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        request = translate_openai_request(
            body, upstream_model=ctx.route.model, default_max_tokens=ctx.default_max_tokens,
            max_output=ctx.output.tokens if ctx.output is not None else None,
            structured_output=ctx.structured_output)
        ctx.response_tool = request.response_tool
        return UpstreamCall(MESSAGES_PATH, request.body, anthropic_headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        body = anthropic_to_openai_response(data, gen_id=ctx.gen_id, model=ctx.model,
                                            created=ctx.created,
                                            response_tool=ctx.response_tool)
        body["provider"] = ctx.provider.id
        usage = anthropic_usage(data.get("usage")) if isinstance(data.get("usage"), dict) \
            else None
        choices = body.get("choices") or [{}]
        upstream_id = data.get("id")
        return Reply(body, usage, choices[0].get("finish_reason"),
                     upstream_id if isinstance(upstream_id, str) else None,
                     anthropic_content_tokens(data.get("content")) if usage is None else 0)

    def translator(self, ctx: CallContext) -> AnthropicToOpenAIRelay:
        return AnthropicToOpenAIRelay(ctx)


# The usual event of a /messages stream, before and after its text: with a plain text
# (chunk_template.plain) the event is exactly this object.
_TEXT_DELTA_HEAD = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
_TEXT_DELTA_END = '"}}'


class AnthropicToOpenAIRelay:
    """/messages stream events -> OpenAI chunks; the usual event (more text on the first
    block, written as Anthropic writes it) is encoded straight from its text."""

    __slots__ = ("_ctx", "_stream", "_text_chunk")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = AnthropicToOpenAIStream(gen_id=ctx.gen_id, model=ctx.model,
                                               created=ctx.created,
                                               include_usage=ctx.include_usage,
                                               response_tool=ctx.response_tool)
        self._text_chunk = TextChunk(gen_id=ctx.gen_id, model=ctx.model, created=ctx.created,
                                     include_usage=ctx.include_usage)

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    @property
    def upstream_id(self) -> str | None:
        return self._stream.upstream_id

    @property
    def output_tokens(self) -> int:
        return self._stream.output_tokens

    def feed(self, event: SSEEvent) -> list[bytes]:
        text = self.text(event)
        if text is not None:
            return [self._text_chunk.encode(text)]
        return [encode_event(orjson.dumps(chunk)) for chunk in self.chunks(event)]

    def text(self, event: SSEEvent) -> str | None:
        """The text of the usual event, booked; None for any other (then `chunks` it)."""
        data = event.data
        if not data.startswith(_TEXT_DELTA_HEAD) or not data.endswith(_TEXT_DELTA_END) \
                or event.event == "ping":
            return None
        text = data[len(_TEXT_DELTA_HEAD):-len(_TEXT_DELTA_END)]
        return text if plain(text) and self._stream.takes_text(0, text) else None

    def chunks(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks `feed` would send, as dicts (for a relay that re-translates them)."""
        if event.event == "ping":
            return []
        data = event_data(event, self._ctx)
        try:
            return self._stream.feed(event.event or str(data.get("type", "")), data)
        except UpstreamError as exc:
            raise redact_error(exc, self._ctx.provider) from None

    def finish(self) -> list[bytes]:
        return [encode_event(orjson.dumps(chunk)) for chunk in self.finish_chunks()] + [
            DONE_EVENT]

    def finish_chunks(self) -> list[dict[str, Any]]:
        chunks = self._stream.finish()
        for chunk in chunks:
            usage = chunk.get("usage")
            if isinstance(usage, dict) and self._stream.usage is not None:
                usage["cost"] = self._ctx.cost_of(self._stream.usage)
        return chunks
