"""`kind: mock`: an in-process upstream that answers deterministically, speaking the
OpenAI wire, so `make run` works with no credentials and no network. For demos only:
tests of the proxy path use a real HTTP upstream.

Chat answers follow mock_answer.py: text, a tool call when tools are offered, JSON for
`response_format`; in OpenAI's shapes, streamed or not. /messages reaches it translated,
like any OpenAI-compatible upstream.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import orjson

from ..config.model import ProviderConfig
from ..sse import DONE_EVENT, encode_event
from .embeddings_shape import pack_base64
from .mock_answer import ECHO, ECHO_CHARS, MockAnswer, ToolCall, compose_answer, last_user_text

EMBEDDING_DIMENSIONS = 8
JSON_SLICE = 8  # characters of a JSON answer (or tool arguments) per streamed delta


def _count_tokens(text: str) -> int:
    return max(1, len(text.split()))


class MockResponse:
    resent = False

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
                   headers: Mapping[str, str],
                   on_sent: Callable[[], None] | None = None) -> MockResponse:
        if on_sent is not None:
            on_sent()
        request = orjson.loads(body)
        if path == "/embeddings":
            return MockResponse(200, orjson.dumps(_embeddings(request)))
        chat = path == "/chat/completions"
        answer = compose_answer(request) if chat else \
            MockAnswer(ECHO + last_user_text(request)[:ECHO_CHARS])
        pieces, finish = _pieces(answer, request)
        prompt = orjson.dumps([request.get("messages", request.get("prompt", "")),
                               request.get("tools")]).decode()
        usage = {"prompt_tokens": _count_tokens(prompt), "completion_tokens": len(pieces)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        base = {"id": f"mock-{hashlib.sha256(body).hexdigest()[:16]}",
                "object": "chat.completion" if chat else "text_completion",
                "created": int(time.time()), "model": request.get("model", "echo")}
        if request.get("stream"):
            return MockResponse(200, events=_stream(base, answer, pieces, finish, usage, chat))
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if chat:
            choice["message"] = _message(answer, "".join(pieces))
        else:
            choice["text"] = "".join(pieces)
        return MockResponse(200, orjson.dumps({**base, "choices": [choice], "usage": usage}))

    async def close(self) -> None:
        pass

    def retire(self, providers: object) -> None:
        pass


def _pieces(answer: MockAnswer, request: Mapping[str, Any]) -> tuple[list[str], str]:
    """The answer as streamed deltas (one token each) and its finish reason; text is cut
    at the request's output cap, as a real model's would be."""
    if answer.tool_call is not None:
        return _slices(answer.tool_call.arguments), "tool_calls"
    text = answer.content or ""
    pieces = _slices(text) if answer.json else \
        [word if i == 0 else " " + word for i, word in enumerate(text.split(" "))]
    cap = request.get("max_tokens") or request.get("max_completion_tokens")
    if isinstance(cap, int) and 0 < cap < len(pieces):
        return pieces[:cap], "length"
    return pieces, "stop"


def _slices(text: str) -> list[str]:
    return [text[i:i + JSON_SLICE] for i in range(0, len(text), JSON_SLICE)] or [""]


def _message(answer: MockAnswer, content: str) -> dict[str, Any]:
    call = answer.tool_call
    if call is None:
        return {"role": "assistant", "content": content, "refusal": None}
    return {"role": "assistant", "content": None, "refusal": None,
            "tool_calls": [{"id": call.id, "type": "function",
                            "function": {"name": call.name, "arguments": call.arguments}}]}


def _stream(base: dict[str, Any], answer: MockAnswer, pieces: list[str], finish: str,
            usage: dict[str, int], chat: bool) -> list[bytes]:
    base = {**base, "object": "chat.completion.chunk" if chat else "text_completion"}
    deltas = _tool_deltas(answer.tool_call, pieces) if answer.tool_call is not None else \
        [{"role": "assistant", "content": piece} if i == 0 else {"content": piece}
         for i, piece in enumerate(pieces)]
    events = []
    for delta in deltas:
        choice: dict[str, Any] = {"index": 0, "finish_reason": None}
        if chat:
            choice["delta"] = delta
        else:
            choice["text"] = delta.get("content", "")
        events.append(encode_event(orjson.dumps({**base, "choices": [choice]})))
    last: dict[str, Any] = {"index": 0, "finish_reason": finish}
    last["delta" if chat else "text"] = {} if chat else ""
    events.append(encode_event(orjson.dumps({**base, "choices": [last]})))
    events.append(encode_event(orjson.dumps({**base, "choices": [], "usage": usage})))
    events.append(DONE_EVENT)
    return events


def _tool_deltas(call: ToolCall, pieces: list[str]) -> list[dict[str, Any]]:
    """OpenAI's streamed tool call: id, type and name first with empty arguments, then
    the arguments in pieces, each under the call's index."""
    first = {"index": 0, "id": call.id, "type": "function",
             "function": {"name": call.name, "arguments": ""}}
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": None,
                                     "tool_calls": [first]}]
    deltas += [{"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
               for piece in pieces]
    return deltas


def _embeddings(request: Mapping[str, Any]) -> dict[str, Any]:
    inputs = request.get("input")
    items = inputs if isinstance(inputs, list) else [inputs]
    # The Node openai SDK asks for base64 unless told otherwise, as OpenAI allows.
    base64_out = request.get("encoding_format") == "base64"
    data = []
    for i, item in enumerate(items):
        digest = hashlib.sha256(str(item).encode()).digest()
        vector = [round(b / 255 * 2 - 1, 6) for b in digest[:EMBEDDING_DIMENSIONS]]
        data.append({"object": "embedding", "index": i,
                     "embedding": pack_base64(vector) if base64_out else vector})
    tokens = sum(_count_tokens(str(item)) for item in items)
    return {"object": "list", "data": data, "model": request.get("model", "echo"),
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
