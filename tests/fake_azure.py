"""A fake Azure OpenAI resource over real HTTP that verifies what Azure verifies.

- The address: the classic deployment URL `/openai/deployments/{deployment}/{operation}`
  with an `api-version` query it knows (else 404 "Resource not found"), or the v1 API
  `/openai/v1/{operation}` with the deployment in the body's `model`.
- The key: the `api-key` header (401 in Azure's shape otherwise).
- The deployment: one it has (404 DeploymentNotFound otherwise).
- The arguments: a field it does not know is 400 "Unrecognized request argument supplied"
  (as Azure says), and `stream_options` only from API version 2024-09-01-preview on.

Answers are Azure's: `prompt_filter_results` beside the choices, `content_filter_results`
in each choice, a first stream chunk that carries only the prompt's filter results, the
underlying model's name in `model`. A prompt containing FILTER_TRIGGER gets the content
filter's 400; tools get a tool call, and a tool result the final answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.fakes import Behaviour, _raw_or_json

FILTER_TRIGGER = "FILTER_ME"
ANSWER = "Hello from Azure!"
TOOL_ANSWER = "It is sunny in Paris."
USAGE = {"prompt_tokens": 13, "completion_tokens": 6, "total_tokens": 19,
         "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
         "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0,
                                       "accepted_prediction_tokens": 0,
                                       "rejected_prediction_tokens": 0}}
EMBEDDING_USAGE = {"prompt_tokens": 5, "total_tokens": 5}
API_VERSIONS = frozenset({"2024-02-01", "2024-06-01", "2024-10-21", "2025-04-01-preview"})
STREAM_OPTIONS_SINCE = "2024-09-01-preview"
SAFE = {"filtered": False, "severity": "safe"}
FILTER_RESULTS = {"hate": SAFE, "self_harm": SAFE, "sexual": SAFE, "violence": SAFE}
PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    **FILTER_RESULTS, "jailbreak": {"filtered": False, "detected": False}}}]
CONTENT_FILTER_ERROR = {"error": {
    "message": "The response was filtered due to the prompt triggering Azure OpenAI's content "
               "management policy. Please modify your prompt and retry. To learn more about "
               "our content filtering policies please read our documentation: "
               "https://go.microsoft.com/fwlink/?linkid=2198766",
    "type": None, "param": "prompt", "code": "content_filter", "status": 400,
    "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
        **FILTER_RESULTS, "violence": {"filtered": True, "severity": "medium"},
        "jailbreak": {"filtered": False, "detected": False}}}}}
ACCESS_DENIED = {"error": {"code": "401", "message": "Access denied due to invalid "
                           "subscription key or wrong API endpoint. Make sure to provide a "
                           "valid key for an active subscription and use a correct regional "
                           "API endpoint for your resource."}}
RESOURCE_NOT_FOUND = {"error": {"code": "404", "message": "Resource not found"}}
COMMON_ARGS = frozenset({"model", "stream", "stream_options", "user", "temperature", "top_p",
                         "n", "stop", "max_tokens", "presence_penalty", "frequency_penalty",
                         "logit_bias", "seed", "logprobs"})
KNOWN_ARGS = {
    "chat/completions": COMMON_ARGS | {"messages", "max_completion_tokens", "tools",
                                       "tool_choice", "parallel_tool_calls",
                                       "response_format", "top_logprobs"},
    "completions": COMMON_ARGS | {"prompt", "suffix", "echo", "best_of"},
    "embeddings": frozenset({"model", "input", "user", "dimensions", "encoding_format"}),
}


@dataclass
class AzureRecorded:
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    body: dict[str, Any]


class FakeAzure:
    def __init__(self, api_key: str, deployments: dict[str, str], *,
                 stream_usage: bool = True) -> None:
        self.api_key = api_key
        self.deployments = deployments  # deployment name -> the model behind it
        self.stream_usage = stream_usage  # a stream asked for usage gets it
        self.requests: list[AzureRecorded] = []
        self.script: deque[Behaviour] = deque()
        self.base_url = ""

    def then(self, *behaviours: Behaviour) -> FakeAzure:
        self.script.extend(behaviours)
        return self

    def app(self) -> web.Application:
        app = web.Application()
        for operation in KNOWN_ARGS:
            app.router.add_post(f"/openai/deployments/{{deployment}}/{operation}",
                                self._classic)
            app.router.add_post(f"/openai/v1/{operation}", self._v1)
        return app

    async def _classic(self, request: web.Request) -> web.StreamResponse:
        version = request.query.get("api-version")
        if version not in API_VERSIONS:
            return web.json_response(RESOURCE_NOT_FOUND, status=404)
        return await self._serve(request, request.match_info["deployment"], version)

    async def _v1(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        deployment = body.get("model") if isinstance(body, dict) else None
        return await self._serve(request, str(deployment), None)

    async def _serve(self, request: web.Request, deployment: str,
                     version: str | None) -> web.StreamResponse:
        body = await request.json()
        self.requests.append(AzureRecorded(request.path, dict(request.query),
                                           dict(request.headers), body))
        operation = request.path.removeprefix("/openai/v1/") if version is None else \
            request.path.removeprefix(f"/openai/deployments/{deployment}/")
        refusal = self._refusal(request, deployment, version, operation, body)
        if refusal is not None:
            return refusal
        behaviour = self.script.popleft() if self.script else Behaviour()
        if behaviour.delay_s:
            await asyncio.sleep(behaviour.delay_s)
        if behaviour.status != 200 or behaviour.body is not None:
            return _raw_or_json(behaviour)
        model = self.deployments[deployment]
        if operation == "embeddings":
            return _embeddings(body, model)
        if FILTER_TRIGGER in json.dumps(body.get("messages") or body.get("prompt")):
            return web.json_response(CONTENT_FILTER_ERROR, status=400)
        chat = operation == "chat/completions"
        if body.get("stream"):
            return await self._stream(request, body, model, chat, behaviour)
        return web.json_response(_whole(body, model, chat))

    def _refusal(self, request: web.Request, deployment: str, version: str | None,
                 operation: str, body: dict[str, Any]) -> web.Response | None:
        if request.headers.get("api-key") != self.api_key:
            return web.json_response(ACCESS_DENIED, status=401)
        if deployment not in self.deployments:
            return web.json_response({"error": {
                "code": "DeploymentNotFound",
                "message": "The API deployment for this resource does not exist. If you "
                           "created the deployment within the last 5 minutes, please wait "
                           "a moment and try again."}}, status=404)
        known = KNOWN_ARGS[operation]
        if version is not None and version < STREAM_OPTIONS_SINCE:
            known = known - {"stream_options", "max_completion_tokens"}
        unknown = sorted(set(body) - known)
        if unknown:
            return web.json_response({"error": {
                "message": f"Unrecognized request argument supplied: {unknown[0]}",
                "type": "invalid_request_error", "param": None, "code": None}}, status=400)
        temperature = body.get("temperature")
        if isinstance(temperature, int | float) and not 0 <= temperature <= 2:
            return web.json_response({"error": {
                "message": f"{temperature} is greater than the maximum of 2 - 'temperature'",
                "type": "invalid_request_error", "param": None, "code": None}}, status=400)
        return None

    async def _stream(self, request: web.Request, body: dict[str, Any], model: str,
                      chat: bool, behaviour: Behaviour) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        include_usage = (self.stream_usage and
                         bool((body.get("stream_options") or {}).get("include_usage")))
        for event in _stream_events(body, model, chat, include_usage):
            await response.write(b"data: " + json.dumps(event).encode() + b"\n\n")
            if behaviour.chunk_delay_s:
                await asyncio.sleep(behaviour.chunk_delay_s)
        await response.write(b"data: [DONE]\n\n")
        await response.write_eof()
        return response


def _wants_tool_call(body: dict[str, Any]) -> bool:
    messages = body.get("messages") or []
    return bool(body.get("tools")) and not any(m.get("role") == "tool" for m in messages)


def _whole(body: dict[str, Any], model: str, chat: bool) -> dict[str, Any]:
    choice: dict[str, Any] = {"index": 0, "finish_reason": "stop", "logprobs": None,
                              "content_filter_results": FILTER_RESULTS}
    if chat and _wants_tool_call(body):
        choice["finish_reason"] = "tool_calls"
        choice["content_filter_results"] = {}
        choice["message"] = {"role": "assistant", "content": None, "refusal": None,
                             "tool_calls": [{"id": "call_azure_1", "type": "function",
                                             "function": {
                                                 "name": body["tools"][0]["function"]["name"],
                                                 "arguments": '{"city": "Paris"}'}}]}
    elif chat:
        text = TOOL_ANSWER if body.get("tools") else ANSWER
        choice["message"] = {"role": "assistant", "content": text, "refusal": None}
    else:
        choice["text"] = ANSWER
    return {"id": "chatcmpl-azure-1" if chat else "cmpl-azure-1",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()), "model": model, "system_fingerprint": "fp_azure",
            "prompt_filter_results": PROMPT_FILTER, "choices": [choice], "usage": USAGE}


def _stream_events(body: dict[str, Any], model: str, chat: bool,
                   include_usage: bool) -> list[dict[str, Any]]:
    """Azure's order: the prompt's filter results alone, then the deltas (each with its
    filter results), the finish, and the usage chunk when asked for."""
    base = {"id": "chatcmpl-azure-s1", "created": int(time.time()), "model": model,
            "object": "chat.completion.chunk" if chat else "text_completion",
            "system_fingerprint": "fp_azure"}
    events: list[dict[str, Any]] = [{"choices": [], "created": 0, "id": "", "model": "",
                                     "object": "", "prompt_filter_results": PROMPT_FILTER}]

    def choice(delta: dict[str, Any], finish: str | None = None,
               filters: dict[str, Any] | None = None) -> dict[str, Any]:
        inner = {"index": 0, "finish_reason": finish, "logprobs": None,
                 "content_filter_results": FILTER_RESULTS if filters is None else filters}
        if chat:
            inner["delta"] = delta
        else:
            inner["text"] = delta.get("content", "")
        return {**base, "choices": [inner]}

    if chat and _wants_tool_call(body):
        name = body["tools"][0]["function"]["name"]
        events.append(choice({"role": "assistant", "content": None, "tool_calls": [
            {"index": 0, "id": "call_azure_1", "type": "function",
             "function": {"name": name, "arguments": ""}}]}, filters={}))
        for piece in ('{"ci', 'ty": "Pa', 'ris"}'):
            events.append(choice({"tool_calls": [{"index": 0, "function": {
                "arguments": piece}}]}, filters={}))
        events.append(choice({}, "tool_calls", filters={}))
    else:
        text = TOOL_ANSWER if body.get("tools") else ANSWER
        events.append(choice({"role": "assistant", "content": ""}, filters={}))
        words = text.split(" ")
        for i, word in enumerate(words):
            events.append(choice({"content": word + (" " if i < len(words) - 1 else "")}))
        events.append(choice({}, "stop", filters={}))
    if include_usage:
        events.append({**base, "choices": [], "usage": USAGE})
    return events


def _embeddings(body: dict[str, Any], model: str) -> web.Response:
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.5, -0.25, 0.125 * (i + 1)]}
            for i in range(len(inputs))]
    return web.json_response({"object": "list", "data": data, "model": model,
                              "usage": EMBEDDING_USAGE})
