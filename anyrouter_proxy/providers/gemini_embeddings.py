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

from typing import Any

from .base import CallContext, Reply, UpstreamCall, invalid_response
from .embeddings_shape import (
    embedding_options,
    embedding_texts,
    embeddings_reply,
    float_vector,
    token_count,
)
from .gemini_relay import GeminiToOpenAIRelay
from .google_wire import VERTEX, google_headers, method_path, model_resource
from .shapes import need_body


class GeminiEmbeddings:
    """OpenAI embeddings client, Gemini-wire upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        body = need_body(body)
        texts, single = embedding_texts(body, "Gemini")
        dimensions = embedding_options(body, ctx)
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
        return embeddings_reply(vectors, tokens, ctx)

    def translator(self, ctx: CallContext) -> GeminiToOpenAIRelay:
        return GeminiToOpenAIRelay(ctx)  # never used: embeddings do not stream


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
        vector = float_vector(item.get("values")) if isinstance(item, dict) else None
        if vector is None:
            raise invalid_response(ctx, "an embedding without its values")
        vectors.append(vector)
        stats = item.get("statistics")
        count = token_count(stats.get("token_count")) if isinstance(stats, dict) else None
        if count is not None:
            tokens = (tokens or 0) + count
    if not vectors:
        raise invalid_response(ctx, "no embeddings")
    return vectors, tokens
