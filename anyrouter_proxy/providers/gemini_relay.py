"""Gemini stream relays (kinds gemini and vertex): upstream SSE events to the client's
dialect, OpenAI chunks (`gemini_stream.GeminiToOpenAIStream`) or, through them, Anthropic
events (`anthropic_stream.OpenAIToAnthropicStream`). The stream has no end marker: it is
complete when every candidate has its finishReason; else it was cut short."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import UpstreamError
from ..redaction import redact_error
from ..sse import DONE_EVENT, SSEEvent, encode_event
from ..types import Usage
from .anthropic_client import message_id
from .anthropic_stream import OpenAIToAnthropicStream
from .base import CallContext, cut_short, event_data, stream_error
from .chunk_template import TextChunk
from .gemini_stream import GeminiToOpenAIStream

END = "a finishReason"


class GeminiToOpenAIRelay:
    """Gemini stream events -> OpenAI chunks (SSE), then the usage chunk and [DONE]. The
    usual event (one more piece of text) is encoded straight from its text."""

    __slots__ = ("_ctx", "_parsed", "_stream", "_text_chunk")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = GeminiToOpenAIStream(gen_id=ctx.gen_id, model=ctx.model,
                                            created=ctx.created,
                                            include_usage=ctx.include_usage,
                                            provider=ctx.provider.id)
        self._text_chunk = TextChunk(gen_id=ctx.gen_id, model=ctx.model, created=ctx.created,
                                     include_usage=ctx.include_usage)
        self._parsed: tuple[SSEEvent, dict[str, Any]] | None = None  # what `text` declined

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
        data = _data(event, self._ctx)
        text = self._stream.text(data)
        if text is not None:
            return [self._text_chunk.encode(text)]
        return [b"data: " + orjson.dumps(chunk) + b"\n\n"
                for chunk in _feed(self._stream, data, self._ctx)]

    def text(self, event: SSEEvent) -> str | None:
        """The text of the usual event, booked; None for another (then `chunks` it)."""
        data = _data(event, self._ctx)
        text = self._stream.text(data)
        if text is None:
            self._parsed = event, data
        return text

    def chunks(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks `feed` would send, as dicts (for a relay that re-translates them)."""
        parsed, self._parsed = self._parsed, None
        data = parsed[1] if parsed is not None and parsed[0] is event else \
            _data(event, self._ctx)
        return _feed(self._stream, data, self._ctx)

    def finish(self) -> list[bytes]:
        return [encode_event(orjson.dumps(chunk)) for chunk in self.finish_chunks()] + [
            DONE_EVENT]

    def finish_chunks(self) -> list[dict[str, Any]]:
        if not self._stream.complete:
            raise cut_short(self._ctx, END)
        chunks = self._stream.finish()
        for chunk in chunks:
            usage = chunk.get("usage")
            if isinstance(usage, dict) and self._stream.usage is not None:
                usage["cost"] = self._ctx.cost_of(self._stream.usage)
        return chunks


def _data(event: SSEEvent, ctx: CallContext) -> dict[str, Any]:
    data = event_data(event, ctx)
    if "error" in data:  # an error after the stream began
        raise stream_error(data["error"], ctx)
    return data


def _feed(stream: GeminiToOpenAIStream, data: dict[str, Any],
          ctx: CallContext) -> list[dict[str, Any]]:
    try:
        return stream.feed(data)
    except UpstreamError as exc:
        raise redact_error(exc, ctx.provider) from None


class GeminiToAnthropicRelay:
    """Gemini stream events -> OpenAI chunks -> Anthropic events (SSE)."""

    __slots__ = ("_anthropic", "_ctx", "_stream")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = GeminiToOpenAIStream(gen_id=ctx.gen_id, model=ctx.model,
                                            created=ctx.created, include_usage=True,
                                            provider=ctx.provider.id)
        self._anthropic = OpenAIToAnthropicStream(model=ctx.model, message_id=message_id(None))

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
        return self._events(_feed(self._stream, _data(event, self._ctx), self._ctx))

    def finish(self) -> list[bytes]:
        if not self._stream.complete:
            raise cut_short(self._ctx, END)
        out = self._events(self._stream.finish())
        return out + [encode_event(orjson.dumps(data), name)
                      for name, data in self._anthropic.finish()]

    def _events(self, chunks: list[dict[str, Any]]) -> list[bytes]:
        return [encode_event(orjson.dumps(data), name)
                for chunk in chunks for name, data in self._anthropic.feed(chunk)]
