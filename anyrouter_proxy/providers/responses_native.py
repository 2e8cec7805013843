"""POST /responses passed through to an upstream that speaks the Responses API itself
(`native_responses: true` on an openai-kind provider).

The upstream call is self-contained: the whole input (the conversation the proxy kept, see
responses_input.native_input), `store: false`, no previous_response_id, and `include`
asks for `reasoning.encrypted_content` so that reasoning carries across turns. The answer
and every lifecycle event come back with the generation id as the response id, the public
model id, and the client's own `store` and `previous_response_id`; encrypted reasoning is
shown only to a client that asked for it. Delta events are relayed as they came.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import ProxyError
from ..output_estimate import text_tokens
from ..sse import SSEEvent, encode_event
from ..types import PARTIAL, Usage
from .base import (
    GATEWAY_FIELDS,
    Address,
    CallContext,
    Reply,
    UpstreamCall,
    cut_short,
    event_data,
    invalid_response,
    stream_error,
)
from .responses_input import input_items, native_input
from .responses_output import (
    ENCRYPTED_INCLUDE,
    client_items,
    parse_usage,
    response_shell,
    responses_usage,
    wants_encrypted,
)

RESPONSES_PATH = "/responses"
NOT_FORWARDED = frozenset({*GATEWAY_FIELDS, "previous_response_id"})
LIFECYCLE = frozenset({"response.created", "response.queued", "response.in_progress",
                       "response.completed", "response.incomplete", "response.failed"})
FINAL = frozenset({"response.completed", "response.incomplete"})
ITEM_EVENTS = frozenset({"response.output_item.added", "response.output_item.done"})
# incomplete_details.reason -> the chat finish_reason the usage row keeps
FINISH_REASONS = {"max_output_tokens": "length", "content_filter": "content_filter"}


class ResponsesPassthrough:
    """`address`: where the OpenAI-compatible upstream takes /responses (its kind's)."""

    def __init__(self, address: Address) -> None:
        self.address = address

    def build(self, body: dict[str, Any], ctx: CallContext) -> UpstreamCall:
        out = {k: v for k, v in body.items() if k not in NOT_FORWARDED}
        out["model"] = ctx.route.model
        out["input"] = native_input(input_items(body.get("input")))
        out["store"] = False
        include = out.get("include")
        include = [*include] if isinstance(include, list) else []
        if ENCRYPTED_INCLUDE not in include:
            include.append(ENCRYPTED_INCLUDE)
        out["include"] = include
        address = self.address
        return UpstreamCall(address.path(RESPONSES_PATH, ctx), out, address.headers(ctx))

    def reply(self, data: Any, ctx: CallContext) -> Reply:
        if not isinstance(data, dict) or not isinstance(data.get("output"), list):
            raise invalid_response(ctx, "not a Responses API response")
        if data.get("status") == "failed":
            raise stream_error(data.get("error"), ctx)
        upstream_id = data.get("id")
        items = [item for item in data["output"] if isinstance(item, dict)]
        usage = parse_usage(data.get("usage"))
        body = _client_view(data, ctx)
        return Reply(body, usage, finish_reason(data), upstream_id
                     if isinstance(upstream_id, str) else None,
                     0 if usage is not None else _items_tokens(items), output_items=items)

    def translator(self, ctx: CallContext) -> NativeResponsesRelay:
        return NativeResponsesRelay(ctx)


def _client_view(response: dict[str, Any], ctx: CallContext) -> dict[str, Any]:
    """The upstream's response object as the client sees it (in place)."""
    request = ctx.request
    response["id"] = ctx.gen_id
    response["model"] = ctx.model
    response["store"] = request.get("store") is not False
    response["previous_response_id"] = request.get("previous_response_id")
    output = response.get("output")
    if isinstance(output, list):
        response["output"] = client_items(output, wants_encrypted(dict(request)))
    return response


def finish_reason(response: dict[str, Any]) -> str:
    details = response.get("incomplete_details")
    reason = details.get("reason") if isinstance(details, dict) else None
    if isinstance(reason, str) and reason:
        return FINISH_REASONS.get(reason, reason)
    output = response.get("output")
    calls = isinstance(output, list) and any(
        isinstance(item, dict) and item.get("type") == "function_call" for item in output)
    return "tool_calls" if calls else "stop"


def _items_tokens(items: list[dict[str, Any]]) -> int:
    return text_tokens(orjson.dumps(items).decode()) if items else 0


class NativeResponsesRelay:
    """Relays the upstream's events: deltas unchanged (their text estimated, for a stream
    that ends without usage), lifecycle and item events with the client's view."""

    __slots__ = ("_ctx", "_done", "_encrypted", "_next", "finish_reason", "output_items",
                 "output_tokens", "response", "upstream_id", "usage")

    def __init__(self, ctx: CallContext) -> None:
        self._ctx = ctx
        self._done = False
        self._encrypted = wants_encrypted(dict(ctx.request))
        self._next = 0  # the sequence number after the upstream's last
        self.usage: Usage | None = None
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None
        self.output_tokens = 0
        self.output_items: list[dict[str, Any]] = []
        self.response: dict[str, Any] = {}

    def feed(self, event: SSEEvent) -> list[bytes]:
        if event.is_done:
            return []
        data = event_data(event, self._ctx)
        kind = data.get("type")
        if not isinstance(kind, str):
            kind = event.event or ""
        seq = data.get("sequence_number")
        if seq.__class__ is int:
            self._next = seq + 1
        if kind.endswith(".delta"):  # the most frequent events, first
            delta = data.get("delta")
            if isinstance(delta, str):
                self.output_tokens += text_tokens(delta)
            return [encode_event(event.data, kind)]
        if kind == "error":
            raise stream_error(data, self._ctx)
        if kind in LIFECYCLE:
            self._lifecycle(kind, data)
        elif kind in ITEM_EVENTS and not self._encrypted:
            item = data.get("item")
            if isinstance(item, dict):
                data["item"] = client_items([item], False)[0]
        return [encode_event(orjson.dumps(data), kind)]

    def _lifecycle(self, kind: str, data: dict[str, Any]) -> None:
        response = data.get("response")
        if not isinstance(response, dict):
            raise invalid_response(self._ctx, f"{kind} without its response")
        if kind == "response.failed":
            raise stream_error(response.get("error"), self._ctx)
        if self.upstream_id is None and isinstance(response.get("id"), str):
            self.upstream_id = response["id"]
        usage = parse_usage(response.get("usage"))
        if usage is not None:
            self.usage = usage
        if kind in FINAL:
            self._done = True
            output = response.get("output")
            self.output_items = [i for i in output if isinstance(i, dict)] \
                if isinstance(output, list) else []
            self.finish_reason = finish_reason(response)
        elif self.usage is not None:
            self.usage.source = PARTIAL
        self.response = _client_view(response, self._ctx)
        if usage is not None and isinstance(response.get("usage"), dict):
            response["usage"]["cost"] = self._ctx.cost_of(usage)

    def finish(self) -> list[bytes]:
        if not self._done:
            raise cut_short(self._ctx, "response.completed")
        return []

    def failed(self, exc: ProxyError) -> bytes:
        """response.failed in the client's view of the response (a bare one if the
        upstream's never came)."""
        response = self.response or response_shell(
            dict(self._ctx.request), gen_id=self._ctx.gen_id, model=self._ctx.model,
            created_at=self._ctx.created)
        failed = {**response, "status": "failed", "error": exc.envelope()["error"],
                  "usage": responses_usage(self.usage) if self.usage is not None else None}
        data = {"type": "response.failed", "response": failed, "sequence_number": self._next}
        return encode_event(orjson.dumps(data), "response.failed")

