"""OpenAI /embeddings on the Gemini wire.

| client | gemini kind | vertex kind |
|---|---|---|
| input: one string | embedContent {content, outputDimensionality} | predict {instances} |
| input: a list of strings | batchEmbedContents {requests: [...]} | predict, one instance each |
| dimensions | outputDimensionality | parameters.outputDimensionality |
| encoding_format float / base64 | values as given / little-endian float32, base64 | the same |

Usage: Vertex AI reports each instance's statistics.token_count (summed into
prompt_tokens); the Gemini API reports none, so the answer is charged at the prompt
estimate (`usage_source` estimated), which its `usage` then shows. Token-array inputs are
refused (400).
"""

from __future__ import annotations

import base64
import struct
from typing import Any

from ..pricing import estimate_prompt_tokens
from ..types import Usage
from .base import CallContext, Reply, UpstreamCall, invalid_response
from .gemini_relay import GeminiToOpenAIRelay
from .google_wire import VERTEX, google_headers, method_path, model_resource
from .shapes import bad_type, need_body, need_int, opt_str, unsupported


def _inputs(body: dict[str, Any]) -> tuple[list[str], bool]:
    """(the texts, whether the input was one string)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list) or not value:
        raise bad_type("input", "a string or a non-empty list of strings")
    if not all(isinstance(item, str) for item in value):
        raise unsupported("input", "Gemini embeds text; send strings, not token arrays")
    return value, False


def _options(body: dict[str, Any]) -> tuple[int | None, str]:
    dimensions = body.get("dimensions")
    fmt = opt_str(body.get("encoding_format"), "encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise bad_type("encoding_format", "'float' or 'base64'")
    return (None if dimensions is None else need_int(dimensions, "dimensions", minimum=1)), fmt


class GeminiEmbeddings:
    """OpenAI embeddings client, Gemini-wire upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        body = need_body(body)
        texts, single = _inputs(body)
        dimensions, ctx.notes["encoding"] = _options(body)
        ctx.notes["prompt_estimate"] = estimate_prompt_tokens(body)
        headers = google_headers(ctx)
        if ctx.provider.kind == VERTEX:
            request: dict[str, Any] = {"instances": [{"content": t} for t in texts]}
            if dimensions is not None:
                request["parameters"] = {"outputDimensionality": dimensions}
            return UpstreamCall(method_path(ctx, "predict"), request, headers)
        if single:
            return UpstreamCall(method_path(ctx, "embedContent"),
                                _embed_request(texts[0], dimensions), headers)
        model = model_resource(ctx)
        requests = [{"model": model, **_embed_request(t, dimensions)} for t in texts]
        return UpstreamCall(method_path(ctx, "batchEmbedContents"), {"requests": requests},
                            headers)

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        """The usage shown is the provider's count, else the estimate charged."""
        if not isinstance(data, dict):
            raise invalid_response(ctx, "not a JSON object")
        vectors, tokens = _vectors(data, ctx)
        base64_out = ctx.notes.get("encoding") == "base64"
        shown = tokens if tokens is not None else int(ctx.notes.get("prompt_estimate", 0))
        body = {"object": "list", "data": [
            {"object": "embedding", "index": i,
             "embedding": _base64(vector) if base64_out else vector}
            for i, vector in enumerate(vectors)],
            "model": ctx.model, "provider": ctx.provider.id,
            "usage": {"prompt_tokens": shown, "total_tokens": shown}}
        return Reply(body, Usage(prompt_tokens=tokens) if tokens is not None else None,
                     None, None)

    def translator(self, ctx: CallContext) -> GeminiToOpenAIRelay:
        return GeminiToOpenAIRelay(ctx)  # never used: embeddings do not stream


def _base64(values: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def _embed_request(text: str, dimensions: int | None) -> dict[str, Any]:
    request: dict[str, Any] = {"content": {"parts": [{"text": text}]}}
    if dimensions is not None:
        request["outputDimensionality"] = dimensions
    return request


def _vectors(data: dict[str, Any], ctx: CallContext) -> tuple[list[list[float]], int | None]:
    """(the vectors in input order, tokens counted by the provider if it did)."""
    if ctx.provider.kind == VERTEX:
        items = [p.get("embeddings") if isinstance(p, dict) else None
                 for p in data.get("predictions") or []]
    elif "embedding" in data:
        items = [data["embedding"]]
    else:
        items = data.get("embeddings") or []
    vectors, tokens = [], None
    for item in items if isinstance(items, list) else ():
        values = item.get("values") if isinstance(item, dict) else None
        if not isinstance(values, list) or not all(
                isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise invalid_response(ctx, "an embedding without its values")
        vectors.append([float(v) for v in values])
        stats = item.get("statistics")
        count = stats.get("token_count") if isinstance(stats, dict) else None
        if isinstance(count, int | float) and not isinstance(count, bool):
            tokens = (tokens or 0) + int(count)
    if not vectors:
        raise invalid_response(ctx, "no embeddings")
    return vectors, tokens
