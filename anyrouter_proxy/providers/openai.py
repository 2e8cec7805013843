"""The OpenAI wire: chat/completions, completions and embeddings passed through to any
OpenAI-compatible upstream (OpenAI, vLLM, Ollama, llama.cpp, ...)."""

from __future__ import annotations

import functools
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import UpstreamError
from ..output_cap import cap_openai_body
from ..output_estimate import openai_choice_tokens
from ..pricing import CHARS_PER_TOKEN
from ..redaction import redact_error
from ..sse import DONE, DONE_EVENT, SSEEvent, encode_event
from ..types import CHAT, COMPLETIONS, EMBEDDINGS, ENDPOINT_PATHS, PARTIAL, PROVIDER, Usage
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
    Address,
    CallContext,
    Reply,
    UpstreamCall,
    cut_short,
    event_data,
    invalid_response,
    stream_error,
    upstream_fields,
)
from .chunk_template import ChunkTemplate, plain

OPENAI_API_HOST = "api.openai.com"


@functools.lru_cache(maxsize=64)
def is_openai_api(base_url: str) -> bool:
    """OpenAI's own API, whose reasoning models take only max_completion_tokens."""
    return urlsplit(base_url).hostname == OPENAI_API_HOST


def openai_headers(ctx: CallContext) -> dict[str, str]:
    headers = {"Content-Type": "application/json"}
    if ctx.provider.api_key:
        headers["Authorization"] = f"Bearer {ctx.provider.api_key}"
    headers.update(ctx.provider.headers)
    return headers


class OpenAIAddress:
    """base_url + the endpoint's own path, the key as a Bearer token."""

    def path(self, endpoint_path: str, ctx: CallContext) -> str:
        return endpoint_path

    def headers(self, ctx: CallContext) -> dict[str, str]:
        return openai_headers(ctx)

    def chat_cap_field(self, ctx: CallContext) -> str | None:
        return "max_completion_tokens" if is_openai_api(ctx.provider.base_url) else None


OPENAI_ADDRESS = OpenAIAddress()


def ask_for_usage(out: dict[str, Any], ctx: CallContext) -> None:
    """Every stream is accounted, asked for or not: usage is requested with
    stream_options, unless the provider rejects the field (`stream_options: false`), when
    none goes up at all and the usage is what the stream reports, else an estimate."""
    if not ctx.provider.stream_options:
        out.pop("stream_options", None)
        return
    options = out.get("stream_options")
    out["stream_options"] = {**(options if isinstance(options, dict) else {}),
                             "include_usage": True}


def parse_usage(raw: Any) -> Usage | None:
    """OpenAI `usage` -> Usage (details included); None when absent or not an object."""
    if not isinstance(raw, dict):
        return None
    return openai_usage(raw)


class OpenAIPassthrough:
    """Client and upstream both speak OpenAI: swap the model, keep everything else."""

    def __init__(self, endpoint: str, address: Address = OPENAI_ADDRESS) -> None:
        self.endpoint = endpoint
        self.path = ENDPOINT_PATHS[endpoint]
        self.address = address

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        address = self.address
        out = upstream_fields(body, ctx)
        out["model"] = ctx.route.model
        if ctx.output is not None and self.endpoint != EMBEDDINGS:
            field = address.chat_cap_field(ctx) if self.endpoint == CHAT else None
            cap_openai_body(out, ctx.output, field=field)
        if ctx.stream:
            ask_for_usage(out, ctx)
        elif not ctx.provider.stream_options:
            out.pop("stream_options", None)
        return UpstreamCall(address.path(self.path, ctx), out, address.headers(ctx))

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
        usage = parse_usage(data.get("usage"))
        return Reply(data, usage, *_finish_and_id(choices, upstream_id),
                     output_tokens=openai_choice_tokens(choices) if usage is None else 0)

    def translator(self, ctx: CallContext) -> OpenAIStreamRelay:
        return OpenAIStreamRelay(ctx)


class OpenAIStreamRelay:
    """Relays OpenAI chunks with our id and model; keeps the usage it saw and estimates
    the output it relayed (for a stream that ends without usage).

    The usage chunk is forwarded only when the client asked for it: the proxy always
    asks upstream for usage, so it strips what the client would not otherwise get.
    Usage that comes with choices still running (a running count) is `partial`; the
    usage chunk, one beside a finish_reason, or any once [DONE] came is the provider's.
    """

    __slots__ = ("_ctx", "_done", "_template", "finish_reason", "output_tokens",
                 "upstream_id", "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._done = False
        self._template: ChunkTemplate | None = None  # learnt from the first usual chunk
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None
        self.output_tokens = 0

    def feed(self, event: SSEEvent) -> list[bytes]:
        template = self._template
        if template is not None and (content := template.match(event.data)) is not None:
            self.output_tokens += -(-len(content) // CHARS_PER_TOKEN)  # as _chunk counts it
            return [template.relayed(content)]
        chunk = self._chunk(event)
        if chunk is None:
            return []
        relayed = orjson.dumps(chunk)
        if template is None:
            self._learn_from(event.data, chunk, relayed)
        return [b"data: " + relayed + b"\n\n"]

    def relay_read(self, read: bytes) -> bytes | None:
        """What `feed` sends for a read that is one whole usual chunk's event (booked),
        without decoding it; None for any other read (not booked: the decoder and `feed`
        take it). Only between events (the SSE decoder idle)."""
        template = self._template
        if template is None or (taken := template.relay_read(read)) is None:
            return None
        relayed, length = taken
        self.output_tokens += -(-length // CHARS_PER_TOKEN)  # as feed counts it
        return relayed

    def text(self, event: SSEEvent) -> str | None:
        """The text of a chunk that is the usual one (booked); None for any other (not
        booked: `chunks` takes it)."""
        template = self._template
        if template is not None and (content := template.match(event.data)) is not None:
            self.output_tokens += -(-len(content) // CHARS_PER_TOKEN)
            return content
        return None

    def _learn_from(self, raw: str, chunk: dict[str, Any], relayed: bytes | None) -> None:
        """A template from this chunk (`relayed`: its encoding, if made) if it is the usual
        one: one choice, its delta one piece of plain text, no finish reason nor usage
        (what `feed` books by a formula)."""
        choices = chunk.get("choices")
        if chunk.get("usage") is not None or choices.__class__ is not list or len(choices) != 1:
            return
        choice = choices[0]
        delta = choice.get("delta") if choice.__class__ is dict else None
        content = delta.get("content") if delta.__class__ is dict and len(delta) == 1 else None
        if content.__class__ is str and choice.get("finish_reason") is None and plain(content):
            if relayed is None:
                relayed = orjson.dumps(chunk)
            self._template = ChunkTemplate.learn(raw, content, relayed.decode())

    def chunks(self, event: SSEEvent) -> list[dict[str, Any]]:
        """The chunks `feed` would send, as dicts (for a relay that re-translates them)."""
        chunk = self._chunk(event)
        if chunk is None:
            return []
        if self._template is None:  # so that `text` takes the next ones
            self._learn_from(event.data, chunk, None)
        return [chunk]

    def finish_chunks(self) -> list[dict[str, Any]]:
        if not self._done:
            raise cut_short(self._ctx, "[DONE]")
        return []

    def _chunk(self, event: SSEEvent) -> dict[str, Any] | None:
        """Book one upstream event; the chunk to send on, if any."""
        ctx = self._ctx
        if event.data == DONE:
            self._done = True
            if self.usage is not None:
                self.usage.source = PROVIDER
            return None
        chunk = event_data(event, ctx)
        if "error" in chunk:
            raise stream_error(chunk["error"], ctx)
        if self.upstream_id is None and isinstance(chunk.get("id"), str):
            self.upstream_id = chunk["id"]
        chunk["id"] = ctx.gen_id
        chunk["model"] = ctx.model
        choices = chunk.get("choices")
        if choices.__class__ is list and choices:
            choice = choices[0]
            delta: Any = choice.get("delta") if choice.__class__ is dict else None
            content = delta.get("content") if delta.__class__ is dict else None
            if content.__class__ is str and len(delta) == 1 and len(choices) == 1 \
                    and content.isascii():  # the usual chunk: one piece of text
                self.output_tokens += -(-len(content) // CHARS_PER_TOKEN)
            else:
                self.output_tokens += openai_choice_tokens(choices)
            if choice.__class__ is dict:
                reason = choice.get("finish_reason")
                if reason and reason.__class__ is str:
                    self.finish_reason = reason
        raw_usage = chunk.get("usage")
        if raw_usage:
            self.usage = parse_usage(raw_usage)
            if self.usage is not None and choices and self.finish_reason is None:
                self.usage.source = PARTIAL
            if not self._ctx.include_usage:
                if not choices:
                    return None
                del chunk["usage"]
            elif isinstance(raw_usage, dict) and self.usage is not None:
                raw_usage["cost"] = self._ctx.cost_of(self.usage)  # as OpenRouter does
        elif "usage" in chunk and not self._ctx.include_usage:
            del chunk["usage"]  # `usage: null` on every chunk is noise the client did not ask for
        return chunk

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

    def __init__(self, address: Address = OPENAI_ADDRESS) -> None:
        self.address = address

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        out = anthropic_to_openai_request(
            body, upstream_model=ctx.route.model,
            max_output=ctx.output.tokens if ctx.output is not None else None)
        if out.get("stream"):
            ask_for_usage(out, ctx)
        address = self.address
        return UpstreamCall(address.path(ENDPOINT_PATHS[CHAT], ctx), out, address.headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        if not isinstance(data, dict):
            raise invalid_response(ctx, "not a JSON object")
        body = openai_to_anthropic_response(data, model=ctx.model)
        usage = parse_usage(data.get("usage"))
        choices = data.get("choices")
        return Reply(body, usage, *_finish_and_id(choices, data.get("id")),
                     output_tokens=openai_choice_tokens(choices)
                     if usage is None and isinstance(choices, list) else 0)

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

    @property
    def output_tokens(self) -> int:
        return self._stream.output_tokens

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.is_done:
            self._done = True
            self._stream.ended()
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
