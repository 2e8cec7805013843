"""The OpenAI /embeddings request and answer, for the exchanges that translate it to a
provider's own embedding API (gemini, vertex, bedrock): the texts and options a client
sent, and the answer built from the provider's vectors.

`encoding_format: base64` (what the openai Python SDK asks for unless told otherwise) is
OpenAI's: each vector as little-endian float32, base64-encoded. The usage shown is the
provider's count, else the prompt estimate the request is then charged at.
"""

from __future__ import annotations

import base64
import math
import struct
from typing import Any

from ..pricing import estimate_prompt_tokens
from ..types import Usage
from .anthropic_translate import MAX_TOKEN_COUNT
from .base import CallContext, Reply
from .shapes import bad_type, need_int, opt_str, unsupported

FORMATS = ("float", "base64")


def embedding_texts(body: dict[str, Any], provider: str) -> tuple[list[str], bool]:
    """(the texts, whether `input` was one string); token arrays are refused (400)."""
    value = body.get("input")
    if isinstance(value, str):
        return [value], True
    if not isinstance(value, list) or not value:
        raise bad_type("input", "a string or a non-empty list of strings")
    if not all(isinstance(item, str) for item in value):
        raise unsupported("input", f"{provider} embeds text; send strings, not token arrays")
    return value, False


def embedding_options(body: dict[str, Any], ctx: CallContext) -> int | None:
    """The `dimensions` asked for (None: the model's default). Leaves the encoding and the
    prompt estimate in `ctx.notes` for `embeddings_reply`."""
    fmt = opt_str(body.get("encoding_format"), "encoding_format") or "float"
    if fmt not in FORMATS:
        raise bad_type("encoding_format", "'float' or 'base64'")
    ctx.notes["encoding"] = fmt
    ctx.notes["prompt_estimate"] = estimate_prompt_tokens(body)
    dimensions = body.get("dimensions")
    return None if dimensions is None else need_int(dimensions, "dimensions", minimum=1)


def embeddings_reply(vectors: list[list[float]], tokens: int | None,
                     ctx: CallContext) -> Reply:
    """The OpenAI answer for vectors in input order; `tokens` None: the provider counted
    none, so the estimate is charged (`usage_source` estimated) and shown."""
    base64_out = ctx.notes.get("encoding") == "base64"
    shown = tokens if tokens is not None else int(ctx.notes.get("prompt_estimate", 0))
    body = {"object": "list", "data": [
        {"object": "embedding", "index": i,
         "embedding": pack_base64(vector) if base64_out else vector}
        for i, vector in enumerate(vectors)],
        "model": ctx.model, "provider": ctx.provider.id,
        "usage": {"prompt_tokens": shown, "total_tokens": shown}}
    return Reply(body, Usage(prompt_tokens=tokens) if tokens is not None else None, None, None)


def pack_base64(values: list[float]) -> str:
    """OpenAI's base64 encoding: little-endian float32."""
    return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()


def float_vector(value: Any) -> list[float] | None:
    """A list of JSON numbers as floats; None for anything else."""
    if not isinstance(value, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    return [float(v) for v in value]


def token_count(value: Any) -> int | None:
    """A provider's token count, at most MAX_TOKEN_COUNT; None when it is not a count."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0 \
            or not math.isfinite(value):
        return None
    return min(int(value), MAX_TOKEN_COUNT)
