"""The Gemini wire (kinds gemini and vertex): OpenAI chat and Anthropic Messages clients
translated to `generateContent` / `streamGenerateContent?alt=sse`, and
`/messages/count_tokens` to `countTokens`. The translation is in `gemini_request.py`,
`gemini_response.py` and `gemini_stream.py`; paths and headers in `google_wire.py`;
embeddings in `gemini_embeddings.py`.

An Anthropic client goes through the OpenAI shape (`anthropic_to_openai_request`, then
`openai_to_anthropic_response` / `OpenAIToAnthropicStream` on the way back), keeping its
`thinking` budget as given.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import UpstreamError
from ..output_estimate import openai_choice_tokens
from ..redaction import redact_error
from ..sse import DONE_EVENT, SSEEvent, encode_event
from ..types import Usage
from .anthropic_client import (
    anthropic_to_openai_request,
    message_id,
    openai_to_anthropic_response,
)
from .anthropic_stream import OpenAIToAnthropicStream
from .base import (
    CallContext,
    Reply,
    UpstreamCall,
    cut_short,
    event_data,
    invalid_response,
    stream_error,
)
from .gemini_request import openai_to_gemini_request
from .gemini_response import gemini_to_openai_response, gemini_usage, prompt_block
from .gemini_stream import GeminiToOpenAIStream
from .google_wire import GENERATE, STREAM, VERTEX, google_headers, method_path, model_resource

COUNT_TOKENS = "countTokens"
END = "a finishReason"


def _max_output(ctx: CallContext) -> int | None:
    return ctx.output.tokens if ctx.output is not None else None


def _generate_call(request: dict[str, Any], ctx: CallContext) -> UpstreamCall:
    return UpstreamCall(method_path(ctx, STREAM if ctx.stream else GENERATE), request,
                        google_headers(ctx))


def _openai_reply(data: Any, ctx: CallContext) -> tuple[dict[str, Any], Usage | None]:
    """A whole Gemini answer as an OpenAI chat completion, and its usage."""
    if not isinstance(data, dict):
        raise invalid_response(ctx, "not a JSON object")
    blocked = prompt_block(data, ctx.provider.id)
    if blocked is not None:
        raise blocked
    try:
        body = gemini_to_openai_response(data, gen_id=ctx.gen_id, model=ctx.model,
                                         created=ctx.created)
    except UpstreamError as exc:
        raise redact_error(exc, ctx.provider) from None
    return body, gemini_usage(data.get("usageMetadata"))


def _upstream_id(data: dict[str, Any]) -> str | None:
    value = data.get("responseId")
    return value if isinstance(value, str) else None


class GeminiChat:
    """OpenAI chat client, Gemini-wire upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        request = openai_to_gemini_request(body, model=ctx.route.model,
                                           max_output=_max_output(ctx))
        return _generate_call(request, ctx)

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        body, usage = _openai_reply(data, ctx)
        body["provider"] = ctx.provider.id
        choices = body["choices"]
        return Reply(body, usage, choices[0]["finish_reason"], _upstream_id(data),
                     openai_choice_tokens(choices) if usage is None else 0)

    def translator(self, ctx: CallContext) -> GeminiToOpenAIRelay:
        return GeminiToOpenAIRelay(ctx)


class GeminiMessages:
    """Anthropic Messages client, Gemini-wire upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        request = openai_to_gemini_request(_as_openai(body, ctx), model=ctx.route.model,
                                           max_output=_max_output(ctx))
        return _generate_call(request, ctx)

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        openai_body, usage = _openai_reply(data, ctx)
        choices = openai_body["choices"]
        body = openai_to_anthropic_response(openai_body, model=ctx.model)
        return Reply(body, usage, choices[0]["finish_reason"], _upstream_id(data),
                     openai_choice_tokens(choices) if usage is None else 0)

    def translator(self, ctx: CallContext) -> GeminiToAnthropicRelay:
        return GeminiToAnthropicRelay(ctx)


def _as_openai(body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """An Anthropic body in OpenAI's shape; an enabled thinking budget is kept exact, and
    top_k (which Gemini has too) kept."""
    out = anthropic_to_openai_request(body, upstream_model=ctx.route.model,
                                      max_output=_max_output(ctx))
    if body.get("top_k") is not None:
        out["top_k"] = body["top_k"]  # checked by anthropic_to_openai_request
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        out.pop("reasoning_effort", None)
        out["thinking"] = {"type": "enabled", "budget_tokens": thinking.get("budget_tokens")}
    return out


class GeminiToOpenAIRelay:
    """Gemini stream events -> OpenAI chunks (SSE), then the usage chunk and [DONE]."""

    __slots__ = ("_ctx", "_stream")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = GeminiToOpenAIStream(gen_id=ctx.gen_id, model=ctx.model,
                                            created=ctx.created,
                                            include_usage=ctx.include_usage,
                                            provider=ctx.provider.id)

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
        return [encode_event(orjson.dumps(chunk)) for chunk in _feed(self._stream, event,
                                                                     self._ctx)]

    def finish(self) -> list[bytes]:
        if not self._stream.complete:
            raise cut_short(self._ctx, END)
        chunks = self._stream.finish()
        for chunk in chunks:
            usage = chunk.get("usage")
            if isinstance(usage, dict) and self._stream.usage is not None:
                usage["cost"] = self._ctx.cost_of(self._stream.usage)
        return [encode_event(orjson.dumps(chunk)) for chunk in chunks] + [DONE_EVENT]


def _feed(stream: GeminiToOpenAIStream, event: SSEEvent,
          ctx: CallContext) -> list[dict[str, Any]]:
    data = event_data(event, ctx)
    if "error" in data:  # an error after the stream began
        raise stream_error(data["error"], ctx)
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
        return self._events(_feed(self._stream, event, self._ctx))

    def finish(self) -> list[bytes]:
        if not self._stream.complete:
            raise cut_short(self._ctx, END)
        out = self._events(self._stream.finish())
        return out + [encode_event(orjson.dumps(data), name)
                      for name, data in self._anthropic.finish()]

    def _events(self, chunks: list[dict[str, Any]]) -> list[bytes]:
        return [encode_event(orjson.dumps(data), name)
                for chunk in chunks for name, data in self._anthropic.feed(chunk)]


class GeminiTokenCounter:
    """/messages/count_tokens -> countTokens (Gemini API: the whole generateContentRequest;
    Vertex AI: contents, systemInstruction and tools)."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        request = openai_to_gemini_request(_as_openai({**body, "max_tokens": 1}, ctx),
                                           model=ctx.route.model)
        request.pop("generationConfig", None)
        request.pop("toolConfig", None)
        if ctx.provider.kind != VERTEX:
            request = {"generateContentRequest": {"model": model_resource(ctx), **request}}
        return UpstreamCall(method_path(ctx, COUNT_TOKENS), request, google_headers(ctx))

    def answer(self, raw: bytes, ctx: CallContext) -> bytes:
        try:
            total = orjson.loads(raw).get("totalTokens")
        except (orjson.JSONDecodeError, AttributeError):
            total = None
        if not isinstance(total, int):
            raise invalid_response(ctx, "countTokens gave no totalTokens")
        return orjson.dumps({"input_tokens": total})
