"""A fake OpenAI-compatible upstream that rejects fields it does not know, as Mistral's API
does: 422 with pydantic's `extra_forbidden` details inside Mistral's error object.

Its streams report usage on the last chunk (beside the finish reason) without being asked,
as Mistral's do, or, with `stream_usage=False`, no usage at all (as some servers do).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from aiohttp import web

ANSWER_WORDS = ("Bonjour", " from", " the", " strict", " upstream")
USAGE = {"prompt_tokens": 9, "completion_tokens": len(ANSWER_WORDS), "total_tokens": 14}
KNOWN_FIELDS = frozenset({
    "model", "messages", "temperature", "top_p", "max_tokens", "stream", "stop",
    "random_seed", "response_format", "tools", "tool_choice", "presence_penalty",
    "frequency_penalty", "n", "safe_prompt", "parallel_tool_calls", "prediction"})


@dataclass
class StrictRecorded:
    path: str
    body: dict[str, Any]


class FakeStrict:
    def __init__(self, *, stream_usage: bool = True) -> None:
        self.stream_usage = stream_usage
        self.requests: list[StrictRecorded] = []
        self.base_url = ""

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        return app

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(StrictRecorded(request.path, body))
        extra = [name for name in body if name not in KNOWN_FIELDS]
        if extra:
            return web.json_response(_extra_forbidden(body, extra), status=422)
        base = {"id": "cmpl-strict-1", "created": int(time.time()), "model": body["model"]}
        if not body.get("stream"):
            return web.json_response({**base, "object": "chat.completion", "choices": [
                {"index": 0, "message": {"role": "assistant", "content": "".join(ANSWER_WORDS),
                                         "tool_calls": None}, "finish_reason": "stop"}],
                "usage": USAGE})
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        chunk = {**base, "object": "chat.completion.chunk"}
        deltas = [{"role": "assistant", "content": ""}] + [{"content": w} for w in ANSWER_WORDS]
        for delta in deltas:
            await _send(response, {**chunk, "choices": [
                {"index": 0, "delta": delta, "finish_reason": None}]})
        last: dict[str, Any] = {**chunk, "choices": [
            {"index": 0, "delta": {"content": ""}, "finish_reason": "stop"}]}
        if self.stream_usage:
            last["usage"] = USAGE
        await _send(response, last)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


async def _send(response: web.StreamResponse, data: dict[str, Any]) -> None:
    await response.write(b"data: " + json.dumps(data).encode() + b"\n\n")


def _extra_forbidden(body: dict[str, Any], names: list[str]) -> dict[str, Any]:
    return {"object": "error", "message": {"detail": [
        {"type": "extra_forbidden", "loc": ["body", name], "msg": "Extra inputs are not "
         "permitted", "input": body[name], "url": "https://errors.pydantic.dev/2.10/v/"
         "extra_forbidden"} for name in names]},
        "type": "invalid_request_error", "param": None, "code": None}
