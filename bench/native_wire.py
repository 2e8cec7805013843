"""The native provider kinds' streams as the benchmark's upstream sends them: the same
answer as the OpenAI chat stream (`chunks` content pieces " tok0", " tok1", ...) in each
kind's own wire format, and the credentials the upstream expects (bench/config-kinds.yaml
holds the same values).

- azure: POST /openai/v1/chat/completions with `api-key`; OpenAI SSE with Azure's extras
  (a first chunk with only `prompt_filter_results`, `content_filter_results` in choices).
- gemini: POST /v1beta/models/M:streamGenerateContent?alt=sse with `x-goog-api-key`;
  `data: GenerateContentResponse` events, CRLF-separated, `usageMetadata` in each.
- vertex: POST /v1/projects/P/locations/L/publishers/google/models/M:streamGenerateContent
  ?alt=sse with a bearer token from POST /token; the same, with Vertex's `createTime`
  and `trafficType`.
- bedrock: POST /model/ID/converse-stream, SigV4-signed; ConverseStream events as AWS
  event-stream frames.
"""

from __future__ import annotations

import json
from typing import Any

from bench.eventstream import event_frame

AZURE_KEY = "bench-azure-api-key-0000000000000000"
GEMINI_KEY = "AIza-bench-gemini-key-000000000000000000"
VERTEX_TOKEN = "ya29.bench-vertex-access-token"
VERTEX_PROJECT, VERTEX_LOCATION = "bench-project", "us-central1"
AWS_ACCESS_KEY = "AKIABENCHBEDROCK0001"
AWS_SECRET_KEY = "bench/Secret+Key/for/the/bedrock/bench/01"
AWS_REGION = "us-east-1"
BEDROCK_MODEL = "anthropic.claude-3-5-sonnet-20240620-v1:0"
EVENT_STREAM = b"application/vnd.amazon.eventstream"
CREATED = 1735689600
_SAFE = {"filtered": False, "severity": "safe"}
_FILTER_RESULTS = {"hate": _SAFE, "self_harm": _SAFE, "sexual": _SAFE, "violence": _SAFE}
_PROMPT_FILTER = [{"prompt_index": 0, "content_filter_results": {
    **_FILTER_RESULTS, "jailbreak": {"filtered": False, "detected": False}}}]
# AWS pads every stream event with a "p" field of varying length (hides the text's length)
_PAD = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123"


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def azure_stream_events(model: str, chunks: int, usage: dict[str, Any] | None) -> list[bytes]:
    """The `data:` events of an Azure OpenAI chat stream, [DONE] last."""
    base = {"id": "chatcmpl-benchazure000000000000000", "created": CREATED, "model": model,
            "object": "chat.completion.chunk", "system_fingerprint": "fp_bench00"}

    def event(obj: dict[str, Any]) -> bytes:
        return b"data: " + _dumps(obj) + b"\n\n"

    def choice(delta: dict[str, Any], finish: str | None = None,
               filters: dict[str, Any] | None = None) -> bytes:
        return event({**base, "choices": [{
            "index": 0, "delta": delta, "finish_reason": finish, "logprobs": None,
            "content_filter_results": _FILTER_RESULTS if filters is None else filters}]})

    events = [event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                     "prompt_filter_results": _PROMPT_FILTER}),
              choice({"role": "assistant", "content": "", "refusal": None}, filters={})]
    events += [choice({"content": f" tok{i}"}) for i in range(chunks)]
    events.append(choice({}, "stop", filters={}))
    if usage is not None:
        events.append(event({**base, "choices": [], "usage": usage}))
    events.append(b"data: [DONE]\n\n")
    return events


def gemini_stream_events(model: str, chunks: int, prompt_tokens: int,
                         vertex: bool) -> list[bytes]:
    """The events of `streamGenerateContent?alt=sse`: one GenerateContentResponse per
    piece, the last with finishReason; Google separates events with CRLF blank lines."""
    events = []
    for i in range(chunks):
        last = i == chunks - 1
        candidate: dict[str, Any] = {"content": {"parts": [{"text": f" tok{i}"}],
                                                 "role": "model"}}
        if last:
            candidate["finishReason"] = "STOP"
        candidate["index"] = 0
        usage: dict[str, Any] = {"promptTokenCount": prompt_tokens,
                                 "candidatesTokenCount": i + 1,
                                 "totalTokenCount": prompt_tokens + i + 1}
        if last:
            usage["promptTokensDetails"] = [{"modality": "TEXT",
                                             "tokenCount": prompt_tokens}]
            if vertex:
                usage["candidatesTokensDetails"] = [{"modality": "TEXT",
                                                     "tokenCount": chunks}]
        if vertex:
            usage["trafficType"] = "ON_DEMAND"
        body: dict[str, Any] = {"candidates": [candidate], "usageMetadata": usage,
                                "modelVersion": model}
        if vertex:
            body["createTime"] = "2025-01-01T00:00:00.000000Z"
        body["responseId"] = "qFPnaMj0Jp2t7M8PgZSl-AQ"
        events.append(b"data: " + _dumps(body) + b"\r\n\r\n")
    return events


def converse_stream_frames(chunks: int, prompt_tokens: int) -> list[bytes]:
    """ConverseStream: messageStart, a contentBlockDelta per piece, contentBlockStop,
    messageStop, metadata (usage and latency), each one event-stream frame."""
    def frame(event: str, data: dict[str, Any]) -> bytes:
        data["p"] = _PAD[:(len(event) * 7 + len(data)) % len(_PAD) + 1]
        return event_frame(event, data)

    frames = [frame("messageStart", {"role": "assistant"})]
    frames += [frame("contentBlockDelta", {"contentBlockIndex": 0,
                                           "delta": {"text": f" tok{i}"}})
               for i in range(chunks)]
    frames.append(frame("contentBlockStop", {"contentBlockIndex": 0}))
    frames.append(frame("messageStop", {"stopReason": "end_turn"}))
    frames.append(frame("metadata", {
        "usage": {"inputTokens": prompt_tokens, "outputTokens": chunks,
                  "totalTokens": prompt_tokens + chunks},
        "metrics": {"latencyMs": 389}}))
    return frames


def token_answer() -> bytes:
    """The token endpoint's answer to a service account's JWT-bearer grant."""
    return _dumps({"access_token": VERTEX_TOKEN, "expires_in": 3599, "token_type": "Bearer"})
