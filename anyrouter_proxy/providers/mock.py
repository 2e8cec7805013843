"""`kind: mock`: an in-process upstream that answers deterministically, speaking the
OpenAI wire, so `make run` works with no credentials and no network. For demos only:
tests of the proxy path use a real HTTP upstream.

It echoes the last user message; offered function tools and no tool result to answer yet,
it calls the first tool instead, with placeholder arguments for its required parameters
(strings "demo", numbers 0, booleans false), so that agent loops can be tried out."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Mapping
from typing import Any

import orjson

from ..config.model import ProviderConfig
from ..sse import DONE_EVENT, encode_event

EMBEDDING_DIMENSIONS = 8
PLACEHOLDERS: dict[str, Any] = {"string": "demo", "number": 0, "integer": 0, "boolean": False,
                                "array": [], "object": {}}


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return " ".join(_text_of(part.get("text", "") if isinstance(part, dict) else part)
                        for part in value)
    return ""


def _last_user_text(body: Mapping[str, Any]) -> str:
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return _text_of(message.get("content"))
    return _text_of(body.get("prompt", ""))


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


class MockResponse:
    def __init__(self, status: int, body: bytes = b"", events: list[bytes] | None = None) -> None:
        self.status = status
        self.headers: Mapping[str, str] = {
            "Content-Type": "text/event-stream" if events is not None else "application/json"}
        self._body = body
        self._events = events or []

    async def read(self) -> bytes:
        return self._body

    async def chunks(self) -> AsyncIterator[bytes]:
        for event in self._events:
            yield event

    def close(self) -> None:
        pass


class MockUpstream:
    async def send(self, provider: ProviderConfig, path: str, body: bytes,
                   headers: Mapping[str, str]) -> MockResponse:
        request = orjson.loads(body)
        if path == "/embeddings":
            return MockResponse(200, orjson.dumps(_embeddings(request)))
        prompt = _last_user_text(request)
        answer = f"Hello from the AnyRouter demo provider. You said: {prompt[:200]}"
        words = answer.split(" ")
        max_tokens = request.get("max_tokens") or request.get("max_completion_tokens")
        if isinstance(max_tokens, int) and max_tokens < len(words):
            words, finish = words[:max_tokens], "length"
        else:
            finish = "stop"
        usage = {"prompt_tokens": _count_tokens(orjson.dumps(request.get("messages",
                                                 request.get("prompt", ""))).decode()),
                 "completion_tokens": len(words)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        chat = path == "/chat/completions"
        base = {"id": f"mock-{hashlib.sha256(body).hexdigest()[:16]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": request.get("model", "echo")}
        call = _tool_call(request) if chat else None
        if call is not None:
            return _call_response(base, call, usage, bool(request.get("stream")))
        if request.get("stream"):
            return MockResponse(200, events=_stream(base, words, finish, usage, chat))
        text = " ".join(words)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish}
        if chat:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return MockResponse(200, orjson.dumps({**base, "choices": [choice], "usage": usage}))

    async def close(self) -> None:
        pass

    def retire(self, providers: object) -> None:
        pass


def _tool_call(request: Mapping[str, Any]) -> dict[str, Any] | None:
    """A call of the first function tool, unless the last message answers a tool call."""
    tools = request.get("tools")
    messages = request.get("messages")
    if not isinstance(tools, list) or not tools or not isinstance(messages, list) or (
            messages and isinstance(messages[-1], dict) and messages[-1].get("role") == "tool"):
        return None
    function = tools[0].get("function") if isinstance(tools[0], dict) else None
    if not isinstance(function, dict) or not isinstance(function.get("name"), str):
        return None
    schema = function.get("parameters")
    properties = schema.get("properties", {}) if isinstance(schema, dict) else {}
    required = schema.get("required", []) if isinstance(schema, dict) else []
    arguments = {name: PLACEHOLDERS.get(str(spec.get("type")), "demo")
                 for name, spec in properties.items()
                 if name in required and isinstance(spec, dict)}
    return {"id": f"call_mock_{len(messages)}", "type": "function",
            "function": {"name": function["name"], "arguments": orjson.dumps(arguments).decode()}}


def _call_response(base: dict[str, Any], call: dict[str, Any], usage: dict[str, int],
                   stream: bool) -> MockResponse:
    if not stream:
        message = {"role": "assistant", "content": None, "tool_calls": [call]}
        choice = {"index": 0, "finish_reason": "tool_calls", "message": message}
        return MockResponse(200, orjson.dumps({**base, "choices": [choice], "usage": usage}))
    base = {**base, "object": "chat.completion.chunk"}
    delta = {"role": "assistant", "tool_calls": [{**call, "index": 0}]}
    events = [encode_event(orjson.dumps({**base, "choices": [
                  {"index": 0, "delta": delta, "finish_reason": None}]})),
              encode_event(orjson.dumps({**base, "choices": [
                  {"index": 0, "delta": {}, "finish_reason": "tool_calls"}]})),
              encode_event(orjson.dumps({**base, "choices": [], "usage": usage})),
              DONE_EVENT]
    return MockResponse(200, events=events)


def _stream(base: dict[str, Any], words: list[str], finish: str, usage: dict[str, int],
            chat: bool) -> list[bytes]:
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    events = []
    for i, word in enumerate(words):
        piece = word if i == 0 else " " + word
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        if chat:
            choice["delta"] = {"role": "assistant", "content": piece} if i == 0 else \
                {"content": piece}
        else:
            choice["text"] = piece
        events.append(encode_event(orjson.dumps({**base, "choices": [choice]})))
    last: dict[str, Any] = {"index": 0, "finish_reason": finish}
    last["delta" if chat else "text"] = {} if chat else ""
    events.append(encode_event(orjson.dumps({**base, "choices": [last]})))
    events.append(encode_event(orjson.dumps({**base, "choices": [], "usage": usage})))
    events.append(DONE_EVENT)
    return events


def _embeddings(request: Mapping[str, Any]) -> dict[str, Any]:
    inputs = request.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    data = []
    for i, item in enumerate(items):
        digest = hashlib.sha256(str(item).encode()).digest()
        vector = [round(b / 255 * 2 - 1, 6) for b in digest[:EMBEDDING_DIMENSIONS]]
        data.append({"object": "embedding", "index": i, "embedding": vector})
    tokens = sum(_count_tokens(str(item)) for item in items)
    return {"object": "list", "data": data, "model": request.get("model", "echo"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
