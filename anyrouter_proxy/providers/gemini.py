"""The Gemini wire (kinds gemini and vertex): OpenAI chat and Anthropic Messages clients
translated to `generateContent` / `streamGenerateContent?alt=sse`, and
`/messages/count_tokens` to `countTokens`. The translation is in `gemini_request.py`,
`gemini_response.py` and `gemini_stream.py`, the stream relays in `gemini_relay.py`;
paths and headers in `google_wire.py`; embeddings in `gemini_embeddings.py`.

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
from ..types import Usage
from .anthropic_client import anthropic_to_openai_request, openai_to_anthropic_response
from .base import CallContext, Reply, UpstreamCall, invalid_response
from .gemini_relay import GeminiToAnthropicRelay, GeminiToOpenAIRelay
from .gemini_request import openai_to_gemini_request
from .gemini_response import gemini_to_openai_response, gemini_usage, prompt_block
from .google_wire import GENERATE, STREAM, VERTEX, google_headers, method_path, model_resource

COUNT_TOKENS = "countTokens"


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
