"""OpenAI /embeddings on Bedrock's InvokeModel (`POST /model/{modelId}/invoke`), signed as
Converse is (the gateway's last step, `aws_auth.py`). The families' bodies are in
`bedrock_embed_wire.py`.

One OpenAI request may take several InvokeModel calls: Titan embeds one text per call,
Cohere up to 96. The gateway sends them concurrently (at most `concurrency` at once, so
that one request does not take the provider's whole pool) and hands the answers back in
call order; they make one answer, one usage row and one charge. Usage: the sum of Titan's
`inputTextTokenCount`s; Cohere's answers carry no count, so the prompt estimate is charged
(`usage_source` estimated) and shown. A call that fails fails the attempt, which then
fails over or is retried whole as any other (ValidationException 400, ThrottlingException
429, AccessDenied 502).
"""

from __future__ import annotations

from typing import Any, NoReturn
from urllib.parse import quote

from ..errors import InvalidRequest
from .base import CallContext, Reply, UpstreamCall, invalid_response
from .bedrock_embed_wire import batches, family_of, family_options
from .embeddings_shape import embedding_options, embedding_texts, embeddings_reply
from .shapes import need_body

JSON = "application/json"
FAN_OUT_CONCURRENCY = 4  # InvokeModel calls of one request in flight at once


def invoke_path(model: str) -> str:
    """Percent-encoded as AWS's SDKs send it (`:` and `/` included), signed as sent."""
    return f"/model/{quote(model, safe='')}/invoke"


class BedrockEmbeddings:
    """OpenAI embeddings client, Bedrock InvokeModel upstream (one or several calls)."""

    concurrency = FAN_OUT_CONCURRENCY

    def build_all(self, body: dict[str, Any], ctx: CallContext) -> list[UpstreamCall]:
        body = need_body(body)
        family = family_of(ctx.route.model)
        texts, _ = embedding_texts(body, "Bedrock")
        options = family_options(family, body, embedding_options(body, ctx))
        headers = {"Content-Type": JSON, "Accept": JSON, **ctx.provider.headers}
        path = invoke_path(ctx.route.model)
        groups = batches(texts, family)
        ctx.notes["expected"] = [len(group) for group in groups]
        return [UpstreamCall(path, family.request(group, options), dict(headers), signed=True)
                for group in groups]

    def reply_all(self, answers: list[Any], ctx: CallContext) -> Reply:
        """One OpenAI answer from every call's answer, in call (so input) order."""
        family = family_of(ctx.route.model)
        expected: list[int] = ctx.notes.get("expected") or [1] * len(answers)
        if len(answers) != len(expected):
            raise invalid_response(ctx, "an answer is missing")
        vectors: list[list[float]] = []
        tokens: int | None = 0
        for data, count in zip(answers, expected, strict=True):
            answer = family.answer(data)
            if answer is None:
                raise invalid_response(ctx, f"not a {family.name} answer")
            if len(answer.vectors) != count:
                raise invalid_response(ctx, f"{len(answer.vectors)} embeddings for "
                                            f"{count} texts")
            vectors += answer.vectors
            tokens = None if tokens is None or answer.tokens is None else tokens + answer.tokens
        return embeddings_reply(vectors, tokens, ctx)

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        """The first call (the gateway sends them all: `build_all`)."""
        return self.build_all(body, ctx)[0]

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        return self.reply_all([data], ctx)

    def translator(self, ctx: CallContext) -> NoReturn:
        raise InvalidRequest("Embeddings cannot be streamed", param="stream")
