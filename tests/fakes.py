"""Fake upstreams that speak the real OpenAI wire format over real HTTP (SSE included).

Each fake records what it received and follows a script of behaviours, one per request,
falling back to a normal answer when the script is empty.
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import jsonschema
from aiohttp import web

from tests.anthropic_wire import (
    ANSWER,
    SIGNATURE_PREFIX,
    THINKING,
    answer_content,
    anthropic_problem,
)
from tests.fake_responses import FakeResponse, responses_problem
from tests.schema_sample import fragments, sample_instance, strict_problem

USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16,
         "prompt_tokens_details": {"cached_tokens": 3},
         "completion_tokens_details": {"reasoning_tokens": 0}}
EMBEDDING_USAGE = {"prompt_tokens": 4, "total_tokens": 4}
WEATHER_ARGUMENTS = '{"city": "Paris"}'


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Behaviour:
    """What the fake does for one request."""

    status: int = 200
    body: Any = None  # JSON body for error statuses, or raw bytes/str to send as is
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the response headers
    first_event_delay_s: float = 0.0  # streams: after headers, before the first event
    chunk_delay_s: float = 0.0  # streams: between events
    chunks: int = 3  # streams: number of content chunks
    content: str | None = None  # streams: every content chunk's text (default "tok<i> ");
    # whole answers (chat, responses): the answer's text
    numbered: bool = False  # streams: each content chunk's text starts with "<i>"
    stall_after: int | None = None  # streams: stop sending (stay open) after N events
    drop_after: int | None = None  # streams: drop the connection after N events
    no_done: bool = False  # streams: end without [DONE]
    error_event_after: int | None = None  # streams: send an error event after N events
    usage: dict[str, Any] = field(default_factory=dict)  # merged into the answer's usage


class FakeOpenAI:
    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self.script: deque[Behaviour] = deque()
        self.cancelled = 0  # requests whose client went away before the fake finished
        self.completed = 0

    def then(self, *behaviours: Behaviour) -> FakeOpenAI:
        self.script.extend(behaviours)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._completions)
        app.router.add_post("/v1/embeddings", self._embeddings)
        app.router.add_post("/v1/responses", self._responses)
        return app

    async def _record(self, request: web.Request) -> tuple[dict[str, Any], Behaviour]:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        behaviour = self.script.popleft() if self.script else Behaviour()
        if behaviour.delay_s:
            try:
                await asyncio.sleep(behaviour.delay_s)
            except asyncio.CancelledError:
                self.cancelled += 1
                raise
        return body, behaviour

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=True)

    async def _completions(self, request: web.Request) -> web.StreamResponse:
        return await self._generate(request, chat=False)

    async def _generate(self, request: web.Request, *, chat: bool) -> web.StreamResponse:
        body, behaviour = await self._record(request)
        problem = openai_format_problem(body)
        if problem:
            return web.json_response({"error": {"message": problem, "type":
                                                "invalid_request_error", "param":
                                                "response_format", "code": None}}, status=400)
        if behaviour.status != 200 or behaviour.body is not None:
            return _raw_or_json(behaviour)
        upstream_id = f"chatcmpl-{self.name}-{len(self.requests)}"
        base = {"id": upstream_id, "created": int(time.time()), "model": body.get("model"),
                "system_fingerprint": "fp_fake"}
        if body.get("stream"):
            return await self._stream(request, body, behaviour, base, chat)
        choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None}
        if chat and _wants_tool_call(body):
            choice["finish_reason"] = "tool_calls"
            choice["message"] = {"role": "assistant", "content": None, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {
                    "name": body["tools"][0]["function"]["name"],
                    "arguments": tool_arguments(body)}}]}
        elif chat:
            choice["message"] = {"role": "assistant",
                                 "content": behaviour.content or openai_answer(body),
                                 "refusal": None}
        else:
            choice["text"] = ANSWER
        self.completed += 1
        return web.json_response({**base, "object": "chat.completion" if chat
                                  else "text_completion", "choices": [choice],
                                  "usage": {**USAGE, **behaviour.usage}},
                                 headers=behaviour.headers)

    async def _stream(self, request: web.Request, body: dict[str, Any], behaviour: Behaviour,
                      base: dict[str, Any], chat: bool) -> web.StreamResponse:
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        obj = "chat.completion.chunk" if chat else "text_completion"
        events: list[bytes] = []

        def chunk(choices: list[dict[str, Any]], usage: Any = None) -> bytes:
            data = {**base, "object": obj, "choices": choices}
            if include_usage:
                data["usage"] = usage
            return b"data: " + json.dumps(data).encode() + b"\n\n"

        pieces = fragments(openai_answer(body), behaviour.chunks) \
            if chat and body.get("response_format") else None
        for i in range(len(pieces) if pieces else behaviour.chunks):
            text = pieces[i] if pieces else behaviour.content if behaviour.content is not None \
                else f"tok{i} "
            if behaviour.numbered:
                text = f"<{i}>{text}"
            delta: dict[str, Any] = {"content": text}
            if i == 0:
                delta["role"] = "assistant"
            events.append(chunk([{"index": 0, "delta": delta, "finish_reason": None}] if chat
                                else [{"index": 0, "text": text, "finish_reason": None}]))
        finish = "stop"
        if chat and _wants_tool_call(body):
            name = body["tools"][0]["function"]["name"]
            arguments = tool_arguments(body)
            pieces = ['{"ci', 'ty": "Pa', 'ris"}'] if arguments == WEATHER_ARGUMENTS \
                else fragments(arguments)
            for n, piece in enumerate(pieces):
                call: dict[str, Any] = {"index": 0, "function": {"arguments": piece}}
                if n == 0:
                    call.update(id="call_1", type="function")
                    call["function"]["name"] = name
                events.append(chunk([{"index": 0, "delta": {"tool_calls": [call]},
                                      "finish_reason": None}]))
            finish = "tool_calls"
        events.append(chunk([{"index": 0, "delta": {}, "finish_reason": finish}] if chat
                            else [{"index": 0, "text": "", "finish_reason": finish}]))
        if include_usage:
            events.append(chunk([], {**USAGE, "completion_tokens": behaviour.chunks,
                                     "total_tokens": USAGE["prompt_tokens"] + behaviour.chunks,
                                     **behaviour.usage}))
        if not behaviour.no_done:
            events.append(b"data: [DONE]\n\n")

        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            if behaviour.first_event_delay_s:
                await asyncio.sleep(behaviour.first_event_delay_s)
            for n, event in enumerate(events):
                if behaviour.error_event_after == n:
                    await response.write(b'data: {"error": {"message": "upstream exploded", '
                                         b'"type": "server_error"}}\n\n')
                    return response
                if behaviour.drop_after == n:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if behaviour.stall_after == n:
                    await asyncio.sleep(3600)
                await response.write(event)
                if behaviour.chunk_delay_s:
                    await asyncio.sleep(behaviour.chunk_delay_s)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        self.completed += 1
        await response.write_eof()
        return response

    async def _responses(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._record(request)
        if behaviour.status != 200 or behaviour.body is not None:
            return _raw_or_json(behaviour)
        problem = responses_problem(body)
        if problem:
            return web.json_response({"error": {"message": problem, "type":
                                                "invalid_request_error", "code": None,
                                                "param": None}}, status=400)
        answer = FakeResponse(body, f"resp_{self.name}_{len(self.requests)}",
                              behaviour.content, behaviour.usage)
        if not body.get("stream"):
            self.completed += 1
            return web.json_response(answer.whole(), headers=behaviour.headers)
        events = answer.events()
        if behaviour.no_done:
            events = events[:-1]  # no response.completed
        if behaviour.error_event_after is not None:
            events = [*events[:behaviour.error_event_after], answer.error_event()]
        return await self._send_events(request, events, behaviour)

    async def _send_events(self, request: web.Request, events: list[bytes],
                           behaviour: Behaviour) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n, event in enumerate(events):
                if behaviour.drop_after == n:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if behaviour.stall_after == n:
                    await asyncio.sleep(3600)
                await response.write(event)
                if behaviour.chunk_delay_s:
                    await asyncio.sleep(behaviour.chunk_delay_s)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        self.completed += 1
        await response.write_eof()
        return response

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        body, behaviour = await self._record(request)
        if behaviour.status != 200 or behaviour.body is not None:
            return _raw_or_json(behaviour)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        data = [{"object": "embedding", "index": i,
                 "embedding": _encoded(embedding_values(i), body.get("encoding_format"))}
                for i in range(len(inputs))]
        self.completed += 1
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": EMBEDDING_USAGE})


def embedding_values(index: int) -> list[float]:
    """The vector the fake embeds input `index` as."""
    return [0.1 * (index + 1), 0.2, 0.3]


def _encoded(values: list[float], encoding_format: Any) -> Any:
    """As OpenAI answers: floats, or with "base64" little-endian float32 bytes in base64
    (what the Node SDK asks for by default)."""
    if encoding_format == "base64":
        return base64.b64encode(struct.pack(f"<{len(values)}f", *values)).decode()
    return values


def tool_arguments(body: dict[str, Any]) -> str:
    """The fake's call of the first tool: {"city": "Paris"} where its schema takes that,
    else an instance of its schema (a "json" tool standing for structured output)."""
    schema = body["tools"][0]["function"].get("parameters") or {}
    try:
        jsonschema.validate(json.loads(WEATHER_ARGUMENTS), schema)
    except jsonschema.ValidationError:
        return json.dumps(sample_instance(schema))
    return WEATHER_ARGUMENTS


def _wants_tool_call(body: dict[str, Any]) -> bool:
    """Tools offered and no tool result to answer yet: the fake calls the first tool."""
    messages = body.get("messages") or [{}]
    return bool(body.get("tools")) and messages[-1].get("role") != "tool"


def openai_format_problem(body: dict[str, Any]) -> str | None:
    """OpenAI's 400 for a response_format it refuses: a strict schema breaking its rules."""
    fmt = body.get("response_format") or {}
    spec = fmt.get("json_schema") or {}
    if fmt.get("type") == "json_schema" and spec.get("strict"):
        problem = strict_problem(spec.get("schema"))
        if problem:
            return f"Invalid schema for response_format '{spec.get('name')}': {problem}"
    return None


def openai_answer(body: dict[str, Any]) -> str:
    """The model's text: JSON for a response_format json_schema / json_object."""
    fmt = body.get("response_format") or {}
    if fmt.get("type") == "json_schema":
        return json.dumps(sample_instance(fmt["json_schema"].get("schema") or {}))
    if fmt.get("type") == "json_object":
        return json.dumps({"answer": ANSWER})
    return ANSWER


def _raw_or_json(behaviour: Behaviour) -> web.Response:
    body = behaviour.body
    if isinstance(body, bytes | str):
        headers = {k: v for k, v in behaviour.headers.items() if k.lower() != "content-type"}
        return web.Response(status=behaviour.status, body=body, headers=headers,
                            content_type=behaviour.headers.get("Content-Type", "text/html"))
    if body is None:
        body = {"error": {"message": f"fake failure {behaviour.status}", "type": "server_error",
                          "code": None, "param": None}}
    return web.json_response(body, status=behaviour.status, headers=behaviour.headers)


class FakeAnthropic:
    """A fake Anthropic Messages API: the exact event sequence, and the validation the real
    API does on what a gateway might get wrong (max_tokens, system inside messages, tools
    and tool_choice, structured output); what it answers is in tests/anthropic_wire.py."""

    def __init__(self, name: str = "anthropic") -> None:
        self.name = name
        self.requests: list[Recorded] = []
        self.script: deque[Behaviour] = deque()
        self.cancelled = 0
        self.completed = 0

    def then(self, *behaviours: Behaviour) -> FakeAnthropic:
        self.script.extend(behaviours)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/messages", self._messages)
        app.router.add_post("/v1/messages/count_tokens", self._count_tokens)
        return app

    async def _count_tokens(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        return web.json_response({"input_tokens": 42})

    async def _messages(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(Recorded(request.path, dict(request.headers), body))
        behaviour = self.script.popleft() if self.script else Behaviour()
        problem = anthropic_problem(request.headers, body)
        if problem:
            return web.json_response({"type": "error", "error": {
                "type": "invalid_request_error", "message": problem}}, status=400)
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.status != 200 or behaviour.body is not None:
            return _raw_or_json(behaviour)
        content = answer_content(body)
        tool = any(block["type"] == "tool_use" for block in content)
        thinking = body.get("thinking")
        if isinstance(thinking, dict) and thinking.get("type") == "enabled":
            content.insert(0, {"type": "thinking", "thinking": THINKING,
                               "signature": f"{SIGNATURE_PREFIX}{len(self.requests)}"})
        usage = {"input_tokens": 20, "output_tokens": 7, "cache_read_input_tokens": 5,
                 "cache_creation_input_tokens": 0, **behaviour.usage}
        message = {"id": f"msg_{self.name}_{len(self.requests)}", "type": "message",
                   "role": "assistant", "model": body["model"], "content": content,
                   "stop_reason": "tool_use" if tool else "end_turn", "stop_sequence": None,
                   "usage": usage}
        if not body.get("stream"):
            self.completed += 1
            return web.json_response(message)
        return await self._stream(request, message, behaviour)

    async def _stream(self, request: web.Request, message: dict[str, Any],
                      behaviour: Behaviour) -> web.StreamResponse:
        def event(name: str, data: dict[str, Any]) -> bytes:
            return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()

        start_usage = {k: v for k, v in message["usage"].items() if k != "server_tool_use"}
        start = {**message, "content": [], "stop_reason": None,
                 "usage": {**start_usage, "output_tokens": 1}}
        events = [event("message_start", {"type": "message_start", "message": start})]
        for index, block in enumerate(message["content"]):
            if block["type"] == "thinking":
                events += _thinking_events(event, index, block)
                continue
            if block["type"] == "text":
                events.append(event("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "text", "text": ""}}))
                events.append(event("ping", {"type": "ping"}))
                for piece in fragments(block["text"]):
                    events.append(event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "text_delta", "text": piece}}))
            else:
                events.append(event("content_block_start", {
                    "type": "content_block_start", "index": index,
                    "content_block": {"type": "tool_use", "id": block["id"],
                                      "name": block["name"], "input": {}}}))
                for piece in fragments(json.dumps(block["input"]), 4):
                    events.append(event("content_block_delta", {
                        "type": "content_block_delta", "index": index,
                        "delta": {"type": "input_json_delta", "partial_json": piece}}))
            events.append(event("content_block_stop", {"type": "content_block_stop",
                                                       "index": index}))
        events.append(event("message_delta", {
            "type": "message_delta",
            "delta": {"stop_reason": message["stop_reason"], "stop_sequence": None},
            "usage": {k: v for k, v in message["usage"].items()  # cumulative, as Anthropic's
                      if k in ("output_tokens", "server_tool_use")}}))
        if not behaviour.no_done:
            events.append(event("message_stop", {"type": "message_stop"}))
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        try:
            for n, raw in enumerate(events):
                if behaviour.drop_after == n:
                    assert request.transport is not None
                    request.transport.close()
                    return response
                if behaviour.error_event_after == n:
                    await response.write(event("error", {"type": "error", "error": {
                        "type": "overloaded_error", "message": "Overloaded"}}))
                    return response
                await response.write(raw)
                if behaviour.chunk_delay_s:
                    await asyncio.sleep(behaviour.chunk_delay_s)
        except (asyncio.CancelledError, ConnectionError):
            self.cancelled += 1
            raise
        self.completed += 1
        await response.write_eof()
        return response


def _thinking_events(event: Any, index: int, block: dict[str, Any]) -> list[bytes]:
    return [
        event("content_block_start", {"type": "content_block_start", "index": index,
                                      "content_block": {"type": "thinking", "thinking": "",
                                                        "signature": ""}}),
        event("content_block_delta", {"type": "content_block_delta", "index": index,
                                      "delta": {"type": "thinking_delta",
                                                "thinking": block["thinking"]}}),
        event("content_block_delta", {"type": "content_block_delta", "index": index,
                                      "delta": {"type": "signature_delta",
                                                "signature": block["signature"]}}),
        event("content_block_stop", {"type": "content_block_stop", "index": index})]
