"""The OpenAI wire: chat/completions, completions and embeddings passed through to any
OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp, ...)."""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import UpstreamError
from ..redaction import redact_error
from ..sse import DONE_EVENT, SSEEvent, encode_event
from ..types import CHAT, COMPLETIONS, ENDPOINT_PATHS, Usage
from .anthropic_client import (
    anthropic_to_openai_request,
    message_id,
    openai_to_anthropic_response,
)
from .anthropic_stream import OpenAIToAnthropicStream
from .anthropic_translate import (
    openai_usage,
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


def openai_headers(ctx: CallContext) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if ctx.provider.api_key:
        headers["Authorization"] = f"Bearer {ctx.provider.api_key}"
    headers.update(ctx.provider.headers)
    return headers


def parse_usage(raw: Any) -> Usage | None:
    """OpenAI `usage` -> Usage (details included); None when absent or not an object."""
    if not isinstance(raw, dict):
        return None
    return openai_usage(raw)


class OpenAIPassthrough:
    """Client and upstream both speak OpenAI: swap the model, keep everything else."""

    def __init__(self, endpoint: str) -> None:
        self.endpoint = endpoint
        self.path = ENDPOINT_PATHS[endpoint]

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        out = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
        out["model"] = ctx.route.model
        if ctx.stream:
            # Always ask for usage: every stream is accounted, asked for or not (SPEC §4).
            options = out.get("stream_options")
            out["stream_options"] = {**(options if isinstance(options, dict) else {}),
                                     "include_usage": True}
        return UpstreamCall(self.path, out, openai_headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        if not isinstance(data, dict):
            raise invalid_response(ctx, "not a JSON object")
        upstream_id = data.get("id")
        if self.endpoint in (CHAT, COMPLETIONS):
            choices = data.get("choices")
            if not isinstance(choices, list):
                raise invalid_response(ctx, "no choices")
            data["id"] = ctx.gen_id
        else:
            choices = []
        data["model"] = ctx.model
        data["provider"] = ctx.provider.id
        return Reply(data, parse_usage(data.get("usage")), *_finish_and_id(choices, upstream_id))

    def translator(self, ctx: CallContext) -> OpenAIStreamRelay:
        return OpenAIStreamRelay(ctx)


class OpenAIStreamRelay:
    """Relays OpenAI chunks with our id and model; keeps the usage it saw.

    The usage chunk is forwarded only when the client asked for it: the proxy always
    asks upstream for usage, so it strips what the client would not otherwise get.
    """

    __slots__ = ("_ctx", "_done", "finish_reason", "upstream_id", "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._done = False
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.is_done:
            self._done = True
            return []
        chunk = event_data(event, self._ctx)
        if "error" in chunk:
            raise stream_error(chunk["error"], self._ctx)
        if self.upstream_id is None and isinstance(chunk.get("id"), str):
            self.upstream_id = chunk["id"]
        chunk["id"] = self._ctx.gen_id
        chunk["model"] = self._ctx.model
        choices = chunk.get("choices")
        if choices and isinstance(choices, list) and isinstance(choices[0], dict):
            reason = choices[0].get("finish_reason")
            if reason and isinstance(reason, str):
                self.finish_reason = reason
        raw_usage = chunk.get("usage")
        if raw_usage:
            self.usage = parse_usage(raw_usage)
            if not self._ctx.include_usage:
                if not choices:
                    return []
                del chunk["usage"]
            elif isinstance(raw_usage, dict) and self.usage is not None:
                raw_usage["cost"] = self._ctx.cost_of(self.usage)  # as OpenRouter does
        elif "usage" in chunk and not self._ctx.include_usage:
            del chunk["usage"]  # `usage: null` on every chunk is noise the client did not ask for
        return [encode_event(orjson.dumps(chunk))]

    def finish(self) -> list[bytes]:
        if not self._done:
            raise cut_short(self._ctx, "[DONE]")
        return [DONE_EVENT]


def _finish_and_id(choices: Any, upstream_id: Any) -> tuple[str | None, str | None]:
    """An OpenAI answer's finish_reason and id, when they are strings (else None)."""
    first = choices[0] if isinstance(choices, list) and choices else None
    finish = first.get("finish_reason") if isinstance(first, dict) else None
    return (finish if isinstance(finish, str) else None,
            upstream_id if isinstance(upstream_id, str) else None)


class AnthropicViaOpenAI:
    """Anthropic Messages client, OpenAI-compatible upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        out = anthropic_to_openai_request(body, upstream_model=ctx.route.model)
        return UpstreamCall(ENDPOINT_PATHS[CHAT], out, openai_headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        if not isinstance(data, dict):
            raise invalid_response(ctx, "not a JSON object")
        body = openai_to_anthropic_response(data, model=ctx.model)
        return Reply(body, parse_usage(data.get("usage")),
                     *_finish_and_id(data.get("choices"), data.get("id")))

    def translator(self, ctx: CallContext) -> OpenAIToAnthropicRelay:
        return OpenAIToAnthropicRelay(ctx)


class OpenAIToAnthropicRelay:
    __slots__ = ("_ctx", "_done", "_stream", "upstream_id")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._done = False
        self._stream = OpenAIToAnthropicStream(model=ctx.model, message_id=message_id(None))
        self.upstream_id: str | None = None

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.is_done:
            self._done = True
            return []
        try:
            chunk = orjson.loads(event.data)
        except orjson.JSONDecodeError:
            raise invalid_response(self._ctx, "a stream event is not JSON") from None
        if isinstance(chunk, dict):
            if "error" in chunk:
                raise stream_error(chunk["error"], self._ctx)
            if self.upstream_id is None and isinstance(chunk.get("id"), str):
                self.upstream_id = chunk["id"]
        try:
            events = self._stream.feed(chunk)
        except UpstreamError as exc:
            raise redact_error(exc, self._ctx.provider) from None
        return [encode_event(orjson.dumps(data), name) for name, data in events]

    def finish(self) -> list[bytes]:
        if not self._done:
            raise cut_short(self._ctx, "[DONE]")
        return [encode_event(orjson.dumps(data), name) for name, data in self._stream.finish()]
