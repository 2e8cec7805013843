"""Metered fake upstreams: they bill what they were actually asked for, as an adversarial
(or merely generous) provider would, and report that usage on the real wire format.

OpenAI wire: n choices (or best_of) x the largest output cap the body carries; with no cap
at all, its own large limit (REASONING_LIMIT when reasoning effort was asked, else
OWN_LIMIT). Anthropic wire: max_tokens (required; a thinking budget must fit below it, as
the real API checks). Prompt tokens are counted at PROMPT_CHARS_PER_TOKEN characters of
text a token. Streams send `deltas` text deltas and may be cut short, sent without usage,
or paced so a client can leave in the middle.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

OWN_LIMIT = 32_000
REASONING_LIMIT = 20_480
PROMPT_CHARS_PER_TOKEN = 4  # a real tokenizer; the proxy's estimate is more pessimistic
OPENAI_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
WORD = "word "


@dataclass
class Meter:
    """How the fake behaves; the same for every request until changed."""

    deltas: int = 3  # streams: text deltas before the end
    cut_after: int | None = None  # streams: drop the connection after this many deltas
    usage: bool = True  # report usage (OpenAI usage chunk / Anthropic usage fields)
    delta_delay_s: float = 0.0  # streams: pause between deltas
    extra_tokens: int = 0  # bill this many output tokens beyond what was asked
    gate: asyncio.Event | None = None  # when set: wait for it before answering
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Billed:
    prompt_tokens: int
    completion_tokens: int


class MeteredUpstream:
    def __init__(self) -> None:
        self.meter = Meter()
        self.requests: list[tuple[str, dict[str, Any]]] = []  # (path, body)
        self.billed: list[Billed] = []  # what it reported, one per request it answered
        self.cancelled = 0

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._openai)
        app.router.add_post("/v1/completions", self._openai)
        app.router.add_post("/v1/messages", self._anthropic)
        app.router.add_post("/v1/responses", self._responses)
        return app

    def cost(self, prompt_price: float, completion_price: float) -> float:
        """USD of everything it reported, at these prices (per 1M tokens)."""
        return sum(b.prompt_tokens * prompt_price + b.completion_tokens * completion_price
                   for b in self.billed) / 1_000_000

    async def _arrive(self, request: web.Request) -> dict[str, Any]:
        body: dict[str, Any] = await request.json()
        self.requests.append((request.path, body))
        self.meter.arrived.set()
        if self.meter.gate is not None:
            await self.meter.gate.wait()
        return body

    # -- the OpenAI wire ---------------------------------------------------------------------

    async def _openai(self, request: web.Request) -> web.StreamResponse:
        body = await self._arrive(request)
        chat = request.path.endswith("/chat/completions")
        billed = Billed(prompt_tokens(body), openai_output(body) + self.meter.extra_tokens)
        usage = {"prompt_tokens": billed.prompt_tokens,
                 "completion_tokens": billed.completion_tokens,
                 "total_tokens": billed.prompt_tokens + billed.completion_tokens}
        base = {"id": "cmpl-metered", "created": 1700000000, "model": body.get("model")}
        if not body.get("stream"):
            choices = [{"index": i, "finish_reason": "length", "logprobs": None,
                        **({"message": {"role": "assistant", "content": WORD * 3}} if chat
                           else {"text": WORD * 3})}
                       for i in range(choice_count(body))]
            self.billed.append(billed)
            answer = {**base, "object": "chat.completion" if chat else "text_completion",
                      "choices": choices}
            if self.meter.usage:
                answer["usage"] = usage
            return web.json_response(answer)
        kind = "chat.completion.chunk" if chat else "text_completion"

        def chunk(choices: list[dict[str, Any]], **extra: Any) -> bytes:
            return _data({**base, "object": kind, "choices": choices, **extra})

        def delta(text: str, finish: str | None = None) -> dict[str, Any]:
            return ({"index": 0, "delta": {"content": text} if text else {},
                     "finish_reason": finish} if chat
                    else {"index": 0, "text": text, "finish_reason": finish})

        events = [chunk([delta(WORD)]) for _ in range(self.meter.deltas)]
        events.append(chunk([delta("", "length")]))
        if self.meter.usage:
            events.append(chunk([], usage=usage))
        events.append(b"data: [DONE]\n\n")
        return await self._stream(request, events, billed)

    # -- the Responses wire ------------------------------------------------------------------

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body = await self._arrive(request)
        billed = Billed(prompt_tokens(body), openai_output(body) + self.meter.extra_tokens)
        usage = {"input_tokens": billed.prompt_tokens,
                 "input_tokens_details": {"cached_tokens": 0},
                 "output_tokens": billed.completion_tokens,
                 "output_tokens_details": {"reasoning_tokens": 0},
                 "total_tokens": billed.prompt_tokens + billed.completion_tokens}
        item = {"id": "msg_metered", "type": "message", "status": "incomplete",
                "role": "assistant", "content": [{"type": "output_text", "annotations": [],
                                                  "text": WORD * self.meter.deltas}]}
        whole = {"id": "resp_metered", "object": "response", "created_at": 1700000000,
                 "status": "incomplete", "error": None, "model": body.get("model"),
                 "incomplete_details": {"reason": "max_output_tokens"}, "output": [item],
                 "usage": usage if self.meter.usage else None}
        if not body.get("stream"):
            self.billed.append(billed)
            return web.json_response(whole)
        start = {**whole, "status": "in_progress", "incomplete_details": None, "output": [],
                 "usage": None}
        seq = iter(range(1000))

        def event(kind: str, **data: Any) -> bytes:
            return _event(kind, {"type": kind, **data, "sequence_number": next(seq)})

        where = {"item_id": "msg_metered", "output_index": 0, "content_index": 0}
        events = [event("response.created", response=start),
                  event("response.in_progress", response=start),
                  event("response.output_item.added", output_index=0,
                        item={**item, "status": "in_progress", "content": []})]
        events += [event("response.output_text.delta", **where, delta=WORD, logprobs=[])
                   for _ in range(self.meter.deltas)]
        events += [event("response.output_item.done", output_index=0, item=item),
                   event("response.incomplete", response=whole)]
        return await self._stream(request, events, billed, first_delta=3)

    # -- the Anthropic wire ------------------------------------------------------------------

    async def _anthropic(self, request: web.Request) -> web.StreamResponse:
        body = await self._arrive(request)
        problem = anthropic_problem(body)
        if problem:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": problem}}, status=400)
        billed = Billed(prompt_tokens(body), body["max_tokens"] + self.meter.extra_tokens)
        usage = {"input_tokens": billed.prompt_tokens, "output_tokens": billed.completion_tokens,
                 "cache_read_input_tokens": 0, "cache_creation_input_tokens": 0}
        message: dict[str, Any] = {
            "id": "msg_metered", "type": "message", "role": "assistant",
            "model": body["model"], "content": [{"type": "text", "text": WORD * 3}],
            "stop_reason": "max_tokens", "stop_sequence": None}
        if not body.get("stream"):
            self.billed.append(billed)
            return web.json_response({**message, **({"usage": usage} if self.meter.usage
                                                   else {})})
        start = {**message, "content": [], "stop_reason": None}
        if self.meter.usage:
            start["usage"] = {**usage, "output_tokens": 1}
        events = [_event("message_start", {"type": "message_start", "message": start}),
                  _event("content_block_start", {"type": "content_block_start", "index": 0,
                                                 "content_block": {"type": "text", "text": ""}})]
        events += [_event("content_block_delta", {
            "type": "content_block_delta", "index": 0,
            "delta": {"type": "text_delta", "text": WORD}})] * self.meter.deltas
        events.append(_event("content_block_stop", {"type": "content_block_stop", "index": 0}))
        end: dict[str, Any] = {"type": "message_delta",
                               "delta": {"stop_reason": "max_tokens", "stop_sequence": None}}
        if self.meter.usage:
            end["usage"] = {"output_tokens": billed.completion_tokens}
        events += [_event("message_delta", end),
                   _event("message_stop", {"type": "message_stop"})]
        return await self._stream(request, events, billed, first_delta=2)

    # -- streaming ---------------------------------------------------------------------------

    async def _stream(self, request: web.Request, events: list[bytes], billed: Billed,
                      first_delta: int = 0) -> web.StreamResponse:
        """Send the events; a cut-short stream drops the connection after `cut_after`
        deltas. The provider bills what it generated, reported or not."""
        self.billed.append(billed)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        meter = self.meter
        try:
            for n, event in enumerate(events):
                if meter.cut_after is not None and n == first_delta + meter.cut_after:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                await response.write(event)
                if meter.delta_delay_s:
                    await asyncio.sleep(meter.delta_delay_s)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        await response.write_eof()
        return response


def _data(payload: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload).encode() + b"\n\n"


def _event(name: str, payload: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(payload)}\n\n".encode()


def prompt_tokens(body: dict[str, Any]) -> int:
    chars = 0
    stack: list[Any] = [body.get("messages"), body.get("system"), body.get("prompt"),
                        body.get("input"), body.get("instructions")]
    while stack:
        node = stack.pop()
        if isinstance(node, str):
            chars += len(node)
        elif isinstance(node, dict):
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return max(1, chars // PROMPT_CHARS_PER_TOKEN)


def choice_count(body: dict[str, Any]) -> int:
    return max(int(body.get("n") or 1), int(body.get("best_of") or 1))


def openai_cap(body: dict[str, Any]) -> int | None:
    """The largest cap the body carries (whichever one a given upstream applies)."""
    caps = [int(body[name]) for name in OPENAI_CAP_FIELDS if body.get(name) is not None]
    return max(caps) if caps else None


def openai_output(body: dict[str, Any]) -> int:
    cap = openai_cap(body)
    if cap is None:
        reasoning = body.get("reasoning")  # the Responses API's
        effort = reasoning.get("effort") if isinstance(reasoning, dict) \
            else body.get("reasoning_effort")
        cap = REASONING_LIMIT if effort not in (None, "none") else OWN_LIMIT
    return cap * choice_count(body)


def anthropic_problem(body: dict[str, Any]) -> str | None:
    max_tokens = body.get("max_tokens")
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Field required"
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled" and \
            thinking.get("budget_tokens", 0) >= max_tokens:
        return "`max_tokens` must be greater than `thinking.budget_tokens`"
    return None


# -- the proxy in front of it --------------------------------------------------------------

PROMPT_PRICE, COMPLETION_PRICE = 1.0, 10.0  # USD per 1M tokens
OPENAI_MODEL, ANTHROPIC_MODEL = "oa/model", "an/model"
OPENAI_LIMITED, ANTHROPIC_LIMITED = "oa/limited", "an/limited"  # max_output_tokens: 8192
MODEL_LIMIT = 8192


def metered_sections(base_url: str, provider_key: str) -> dict[str, Any]:
    """providers and models for config_factory: one metered fake behind an openai-kind and
    an anthropic-kind provider, each with a model with and without an output limit."""
    pricing = {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}
    models: dict[str, Any] = {}
    for provider, model, limited in (("oa", OPENAI_MODEL, OPENAI_LIMITED),
                                     ("an", ANTHROPIC_MODEL, ANTHROPIC_LIMITED)):
        routes = [{"provider": provider, "model": f"{provider}-upstream"}]
        models[model] = {"pricing": pricing, "routes": routes}
        models[limited] = {"pricing": pricing, "routes": routes,
                           "max_output_tokens": MODEL_LIMIT}
    return {"providers": {
        "oa": {"kind": "openai", "base_url": base_url, "api_key": provider_key},
        "an": {"kind": "anthropic", "base_url": base_url, "api_key": provider_key}},
        "models": models}


def upstream_output(path: str, body: dict[str, Any]) -> int:
    """The most an upstream body lets the provider write: its cap times its choices."""
    if path.endswith("/messages"):
        return int(body["max_tokens"])
    cap = openai_cap(body)
    assert cap is not None, f"no output cap on the upstream body {body}"
    return cap * choice_count(body)
