"""The fixed shape every provider adapter has (providers as typed data, docs/architecture.md).

An `Exchange` is one (client dialect, provider wire) pair: it builds the upstream
request, reads the upstream answer back into the client's dialect, and makes a stream
translator. It never does I/O; the gateway sends what it builds through `upstream.py`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, cast

import orjson

from ..config.model import Pricing, ProviderConfig, Route
from ..errors import UpstreamError
from ..output_cap import OutputCap
from ..pricing import request_cost
from ..redaction import redact
from ..sse import SSEEvent
from ..types import Usage


@dataclass(slots=True)
class CallContext:
    """What an exchange needs to know about the request it is serving."""

    gen_id: str
    model: str  # the public model id the client asked for
    created: int
    provider: ProviderConfig
    route: Route
    stream: bool
    include_usage: bool  # the client asked for the usage chunk (stream_options)
    default_max_tokens: int = 4096
    # Client headers an upstream may need (anthropic-version, anthropic-beta).
    client_headers: Mapping[str, str] = field(default_factory=dict)
    # The route's pricing: streamed usage chunks carry the cost.
    pricing: Pricing = field(default_factory=Pricing)
    # What the gateway reserved for: the upstream body carries a cap no larger (None: no
    # output to cap, e.g. embeddings).
    output: OutputCap | None = None
    # What an exchange's `build` leaves for its `reply` of the same attempt (e.g. the
    # encoding the client asked for, when the upstream has no such option).
    notes: dict[str, Any] = field(default_factory=dict)
    # The client's body as the gateway serves it: a Responses answer echoes its fields.
    request: Mapping[str, Any] = field(default_factory=dict)
    # Set by `build`: the tool whose call carries a structured answer (response_format on
    # a wire without it), folded back into the answer's content.
    response_tool: str | None = None

    @property
    def structured_output(self) -> str:
        """How a response_format is served on this route: "tool" or "native"."""
        return self.route.structured_output or self.provider.structured_output

    def cost_of(self, usage: Usage) -> float:
        return request_cost(self.pricing, usage)


@dataclass(slots=True)
class UpstreamCall:
    path: str  # sent as written when already percent-encoded (upstream.py)
    body: dict[str, Any]
    headers: dict[str, str]
    # The gateway adds the provider's AWS auth headers over the final bytes (aws_auth.py).
    signed: bool = False


@dataclass(slots=True)
class Reply:
    """A whole (non-stream) answer, already in the client's dialect."""

    body: dict[str, Any]
    usage: Usage | None
    finish_reason: str | None
    upstream_id: str | None
    output_tokens: int = 0  # estimated from the answer, when it has no usage
    # Responses: the whole output items (encrypted reasoning included), kept to continue
    # the conversation; the body shows the client's view of them.
    output_items: list[dict[str, Any]] | None = None


class StreamTranslator(Protocol):
    @property
    def usage(self) -> Usage | None:
        """The provider's usage so far: None, `partial` (input only) or final."""
        ...

    @property
    def finish_reason(self) -> str | None: ...

    @property
    def upstream_id(self) -> str | None: ...

    @property
    def output_tokens(self) -> int:
        """The output relayed so far, estimated (output_estimate.py): what a stream that
        ends without the provider's final usage is charged for."""
        ...

    def feed(self, event: SSEEvent) -> list[bytes]:
        """Client-bound wire bytes for one upstream event; raises ProxyError for an
        upstream error event."""
        ...

    def finish(self) -> list[bytes]:
        """Closing bytes once the upstream ended; raises UpstreamError when the upstream
        stream ended without its normal end."""
        ...


class ChatChunkSource(Protocol):
    """What a chat relay may offer beside `feed`/`finish`: the same chunks as dicts, not
    yet encoded, so that a relay re-translating them (the Responses bridge) does not parse
    what it just wrote. Optional: without it the bridge reads the relay's bytes."""

    def chunks(self, event: SSEEvent) -> list[dict[str, Any]]: ...

    def finish_chunks(self) -> list[dict[str, Any]]: ...


class Exchange(Protocol):
    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall: ...

    def reply(self, data: Any, ctx: CallContext) -> Reply: ...

    def translator(self, ctx: CallContext) -> StreamTranslator: ...


class FanOut(Protocol):
    """An exchange that serves one request with several upstream calls (a model that
    embeds one text per call): the gateway sends them concurrently, at most `concurrency`
    at once, and hands every answer back in the order of the calls. Its `build` and
    `reply` serve a request that takes one call."""

    concurrency: int

    def build_all(self, body: dict[str, Any], ctx: CallContext) -> list[UpstreamCall]: ...

    def reply_all(self, answers: list[Any], ctx: CallContext) -> Reply: ...


def as_fan_out(exchange: Exchange) -> FanOut | None:
    """The exchange as a FanOut if it is one: an attribute look-up, where a runtime
    Protocol check would cost ~30 µs on every request."""
    return cast(FanOut, exchange) if hasattr(exchange, "build_all") else None


class TokenCounter(Protocol):
    """POST /messages/count_tokens for one kind of provider: the upstream call for an
    Anthropic body, and the upstream's answer as `{"input_tokens": N}` (JSON bytes)."""

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall: ...

    def answer(self, raw: bytes, ctx: CallContext) -> bytes: ...


# Request fields that steer the gateway and mean nothing (or something else) upstream;
# OpenRouter's own, passed on to a provider with `forward_routing_fields`.
GATEWAY_FIELDS = ("provider", "models", "route", "transforms")


def upstream_fields(body: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """A copy of a client body to send upstream: without the gateway's routing fields,
    unless the provider takes them itself."""
    if ctx.provider.forward_routing_fields:
        return dict(body)
    return {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}


class Address(Protocol):
    """Where and how an OpenAI-compatible upstream is called: the path of each endpoint
    below base_url and the headers (authentication) it wants."""

    def path(self, endpoint_path: str, ctx: CallContext) -> str:
        """The upstream path for one of ENDPOINT_PATHS (query string included)."""
        ...

    def headers(self, ctx: CallContext) -> dict[str, str]: ...

    def chat_cap_field(self, ctx: CallContext) -> str | None:
        """The output cap field a chat body gets when it has none (None: the request's
        own preference)."""
        ...


def invalid_response(ctx: CallContext, what: str) -> UpstreamError:
    """The upstream answered something that is not its API's shape."""
    return UpstreamError(f"Provider {ctx.provider.id} sent an invalid response: {what}",
                         code="upstream_invalid_response",
                         metadata={"provider_name": ctx.provider.id})


def event_data(event: SSEEvent, ctx: CallContext) -> dict[str, Any]:
    """A stream event's JSON object, or the upstream's fault."""
    try:
        data = orjson.loads(event.data)
    except orjson.JSONDecodeError:
        raise invalid_response(ctx, "a stream event is not JSON") from None
    if not isinstance(data, dict):
        raise invalid_response(ctx, "a stream event is not a JSON object")
    return data


def stream_error(raw: Any, ctx: CallContext) -> UpstreamError:
    """An error the upstream sent as a stream event (its message redacted of our key)."""
    message = raw.get("message") if isinstance(raw, dict) else None
    detail = redact(str(message), ctx.provider) if message else "unknown error"
    return UpstreamError(f"Provider {ctx.provider.id} failed mid-stream: {detail}",
                         metadata={"provider_name": ctx.provider.id})


def cut_short(ctx: CallContext, end: str) -> UpstreamError:
    """A stream that ended without its normal end: an error, never a clean end."""
    return UpstreamError(f"Provider {ctx.provider.id} ended the stream before {end}",
                         code="upstream_invalid_response",
                         metadata={"provider_name": ctx.provider.id})
