"""The Bedrock wire (kind bedrock): Converse (`POST /model/{modelId}/converse`) and
ConverseStream (`/converse-stream`, an AWS event stream), from Chat Completions and from
Anthropic Messages. The translation is in `bedrock_translate.py` / `bedrock_stream.py`;
signing (SigV4 or a bearer API key) is the gateway's last step, `aws_auth.py`.

The route model is a model id, an inference-profile id or an ARN: it goes in the path
percent-encoded as AWS's SDKs send it (`:` and `/` included), and the request is signed
over exactly that path.

Exception events of a stream, as errors: throttlingException -> 429 (upstream_rate_limited,
Retry-After), validationException -> 400 with Bedrock's message, any other
(modelStreamErrorException, internalServerException, serviceUnavailableException, an error
message) -> 502. Before the first event reaches the client they fail over like an HTTP
error would; after it they end the stream with an error event.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from ..errors import InvalidRequest, ProxyError, RateLimited, UpstreamError
from ..output_estimate import anthropic_content_tokens, text_tokens
from ..redaction import redact
from ..sse import DONE_EVENT, SSEEvent, encode_event
from ..types import Usage
from .anthropic_stream import AnthropicToOpenAIStream
from .anthropic_translate import (
    FINISH_REASONS,
    anthropic_to_openai_response,
    anthropic_usage,
    translate_openai_request,
)
from .aws_eventstream import ERROR_EVENT, EXCEPTION_SUFFIX
from .base import CallContext, Reply, UpstreamCall, cut_short, event_data
from .bedrock_stream import ConverseToAnthropicStream
from .bedrock_translate import (
    anthropic_to_converse,
    converse_to_anthropic,
    converse_usage,
    message_id,
)
from .chunk_template import TextChunk

JSON = "application/json"
EVENT_STREAM = "application/vnd.amazon.eventstream"
STREAM_END = "the metadata event"


def converse_path(model: str, stream: bool) -> str:
    operation = "converse-stream" if stream else "converse"
    return f"/model/{quote(model, safe='')}/{operation}"


def bedrock_call(body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
    headers = {"Content-Type": JSON, "Accept": EVENT_STREAM if ctx.stream else JSON}
    headers.update(ctx.provider.headers)
    return UpstreamCall(converse_path(ctx.route.model, ctx.stream), body, headers, signed=True)


def _max_output(ctx: CallContext) -> int | None:
    return ctx.output.tokens if ctx.output is not None else None


def _usage(data: dict[str, Any]) -> Usage | None:
    raw = data.get("usage")
    return anthropic_usage(converse_usage(raw)) if isinstance(raw, dict) else None


def _answer(data: Any, ctx: CallContext) -> tuple[dict[str, Any], Usage | None]:
    """A Converse answer as an Anthropic message, and its usage (None: it had none)."""
    message = converse_to_anthropic(data, model=ctx.model)
    return message, _usage(data)


class MessagesViaBedrock:
    """Anthropic Messages client, Bedrock upstream."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        return bedrock_call(anthropic_to_converse(body, upstream_model=ctx.route.model,
                                                  max_output=_max_output(ctx)), ctx)

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        message, usage = _answer(data, ctx)
        return Reply(message, usage, FINISH_REASONS.get(message["stop_reason"], "stop"), None,
                     anthropic_content_tokens(message["content"]) if usage is None else 0)

    def translator(self, ctx: CallContext) -> BedrockAnthropicRelay:
        return BedrockAnthropicRelay(ctx)


class ChatViaBedrock:
    """OpenAI chat client, Bedrock upstream (through the Anthropic shape)."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        # A response_format is always served with the response tool here: Converse has no
        # counterpart of Anthropic's output_config (see structured.py).
        request = translate_openai_request(
            body, upstream_model=ctx.route.model, default_max_tokens=ctx.default_max_tokens,
            max_output=_max_output(ctx), structured_output="tool")
        ctx.response_tool = request.response_tool
        return bedrock_call(anthropic_to_converse(request.body, upstream_model=ctx.route.model,
                                                  max_output=_max_output(ctx)), ctx)

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        message, usage = _answer(data, ctx)
        body = anthropic_to_openai_response(message, gen_id=ctx.gen_id, model=ctx.model,
                                            created=ctx.created, response_tool=ctx.response_tool)
        body["provider"] = ctx.provider.id
        return Reply(body, usage, body["choices"][0]["finish_reason"], None,
                     anthropic_content_tokens(message["content"]) if usage is None else 0)

    def translator(self, ctx: CallContext) -> BedrockOpenAIRelay:
        return BedrockOpenAIRelay(ctx)


def exception_error(name: str, data: dict[str, Any], ctx: CallContext) -> ProxyError:
    """An exception event of a Converse stream, as the error the client (or failover) sees."""
    pid = ctx.provider.id
    message = redact(str(data.get("message") or name), ctx.provider)
    meta = {"provider_name": pid, "provider_error_type": name}
    if name == "throttlingException":
        return RateLimited(f"Provider {pid} is rate limiting the gateway: {message}",
                           code="upstream_rate_limited", headers={"Retry-After": "1"},
                           metadata={**meta, "provider_status": 429})
    if name == "validationException":
        return InvalidRequest(message, metadata={**meta, "provider_status": 400})
    return UpstreamError(f"Provider {pid} failed mid-stream: {message}", metadata=meta)


def converse_event(event: SSEEvent, ctx: CallContext) -> tuple[str, dict[str, Any]]:
    """(event type, payload) of one Converse stream event; raises for an exception."""
    name = event.event or ""
    data = event_data(event, ctx)
    if name == ERROR_EVENT or name.endswith(EXCEPTION_SUFFIX):
        raise exception_error(name, data, ctx)
    return name, data


class BedrockAnthropicRelay:
    """Converse stream -> Anthropic SSE events."""

    __slots__ = ("_ctx", "_stream")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = ConverseToAnthropicStream(model=ctx.model, message_id=message_id())

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def finish_reason(self) -> str | None:
        return self._stream.finish_reason

    @property
    def upstream_id(self) -> str | None:
        return None  # Converse names none

    @property
    def output_tokens(self) -> int:
        return self._stream.output_tokens

    def feed(self, event: SSEEvent) -> list[bytes]:
        name, data = converse_event(event, self._ctx)
        return [encode_event(orjson.dumps(out), kind)
                for kind, out in self._stream.feed(name, data)]

    def finish(self) -> list[bytes]:
        if not self._stream.done:
            raise cut_short(self._ctx, STREAM_END)
        return []


class BedrockOpenAIRelay:
    """Converse stream -> Anthropic events -> OpenAI chat.completion.chunks."""

    __slots__ = ("_ctx", "_openai", "_parsed", "_stream", "_text_chunk")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._stream = ConverseToAnthropicStream(model=ctx.model, message_id=message_id())
        self._openai = AnthropicToOpenAIStream(gen_id=ctx.gen_id, model=ctx.model,
                                               created=ctx.created,
                                               include_usage=ctx.include_usage,
                                               response_tool=ctx.response_tool)
        self._text_chunk = TextChunk(gen_id=ctx.gen_id, model=ctx.model, created=ctx.created,
                                     include_usage=ctx.include_usage)
        self._parsed: tuple[SSEEvent, str, dict[str, Any]] | None = None  # `text` declined

    @property
    def usage(self) -> Usage | None:
        return self._stream.usage

    @property
    def finish_reason(self) -> str | None:
        # The chat answer's (a structured answer's tool call is a "stop"), else Converse's.
        return self._openai.finish_reason or self._stream.finish_reason

    @property
    def upstream_id(self) -> str | None:
        return None

    @property
    def output_tokens(self) -> int:
        return self._stream.output_tokens

    def feed(self, event: SSEEvent) -> list[bytes]:
        text = self.text(event)
        if text is not None:
            return [self._text_chunk.encode(text)]
        return [b"data: " + orjson.dumps(chunk) + b"\n\n" for chunk in self.chunks(event)]

    def text(self, event: SSEEvent) -> str | None:
        """The usual event's text, a chunk `{"content": text}` and nothing else, booked by
        both translators; None for any other (then `chunks` it)."""
        if event.event == "contentBlockDelta":  # never an exception: its data is parsed here
            try:
                data = orjson.loads(event.data)
            except orjson.JSONDecodeError:
                data = None
            if data.__class__ is dict:
                self._parsed = event, "contentBlockDelta", data
                found = self._stream.text_block(data)
                if found is not None:
                    index, text = found
                    tokens = text_tokens(text)
                    if self._openai.takes_text(index, text, tokens):  # booked by that one
                        self._stream.book_text(tokens)
                        self._parsed = None
                        return text
                return None
        name, data = converse_event(event, self._ctx)  # raises for an exception, bad data
        self._parsed = event, name, data
        return None

    def chunks(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks `feed` sends for an event `text` declined, as dicts (for a relay that
        re-translates them): through both translators."""
        parsed, self._parsed = self._parsed, None
        name, data = parsed[1:] if parsed is not None and parsed[0] is event else \
            converse_event(event, self._ctx)
        return [chunk for kind, out in self._stream.feed(name, data)
                for chunk in self._openai.feed(kind, out)]

    def finish_chunks(self) -> list[dict[str, Any]]:
        if not self._stream.done:
            raise cut_short(self._ctx, STREAM_END)
        chunks = self._openai.finish()
        usage = self._stream.usage
        for chunk in chunks:
            if isinstance(chunk.get("usage"), dict) and usage is not None:
                chunk["usage"]["cost"] = self._ctx.cost_of(usage)
        return chunks

    def finish(self) -> list[bytes]:
        return [encode_event(orjson.dumps(chunk)) for chunk in self.finish_chunks()] + [
            DONE_EVENT]
