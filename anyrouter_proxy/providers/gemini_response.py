"""Gemini `GenerateContentResponse` -> OpenAI chat completion, usage and finish reasons
(pure, no I/O). An answer of the wrong shape raises UpstreamError (502,
upstream_invalid_response); a prompt Gemini refused raises `PromptBlocked` (400).

| Gemini | OpenAI |
|---|---|
| candidates[i] | choices[i] (its `index`) |
| text parts | message.content (joined) |
| text parts with thought: true | message.reasoning_content |
| functionCall {id, name, args} | tool_calls[] {id (else a new call_...), function} |
| the functionCall part's thoughtSignature | the call's extra_content.google.thought_signature |
| finishReason | finish_reason (FINISH_REASONS; STOP with function calls -> tool_calls) |
| usageMetadata | usage (`gemini_usage`) |
| responseId | the upstream id (the answer's id is the generation id) |
| promptFeedback.blockReason, no candidates | PromptBlocked: 400 content_filter |

Other parts (inline images, executable code, their results) are dropped.
"""

from __future__ import annotations

import uuid
from typing import Any

import orjson

from ..errors import InvalidRequest
from ..types import Usage
from .anthropic_translate import MAX_TOKEN_COUNT, openai_usage_dict
from .shapes import need_dict, need_list, upstream_invalid

FINISH_REASONS: dict[str, str] = {
    "STOP": "stop", "MAX_TOKENS": "length",
    "SAFETY": "content_filter", "RECITATION": "content_filter", "LANGUAGE": "content_filter",
    "BLOCKLIST": "content_filter", "PROHIBITED_CONTENT": "content_filter",
    "SPII": "content_filter", "IMAGE_SAFETY": "content_filter",
    "IMAGE_PROHIBITED_CONTENT": "content_filter", "IMAGE_RECITATION": "content_filter",
}  # any other reason (OTHER, MALFORMED_FUNCTION_CALL, ...) -> "stop"


class PromptBlocked(InvalidRequest):
    """Gemini refused the prompt itself (promptFeedback.blockReason): the request's fault."""

    code = "content_filter"


def _count(value: Any) -> int:
    """A token count as sent (an integer); anything else counts 0."""
    if value.__class__ is not int or value <= 0:
        return 0
    return min(int(value), MAX_TOKEN_COUNT)


def gemini_usage(raw: Any) -> Usage | None:
    """usageMetadata -> Usage. Gemini counts thoughts apart from candidates and tool-use
    prompts apart from the prompt; OpenAI's completion_tokens include reasoning, and
    prompt_tokens everything read (the cached content included)."""
    if not isinstance(raw, dict):
        return None
    thoughts = _count(raw.get("thoughtsTokenCount"))
    return Usage(
        prompt_tokens=_count(raw.get("promptTokenCount"))
        + _count(raw.get("toolUsePromptTokenCount")),
        completion_tokens=_count(raw.get("candidatesTokenCount")) + thoughts,
        cached_tokens=_count(raw.get("cachedContentTokenCount")),
        reasoning_tokens=thoughts)


def finish_reason(raw: Any, has_calls: bool) -> str | None:
    """An OpenAI finish_reason for a candidate's finishReason (None while it runs)."""
    if not isinstance(raw, str) or not raw:
        return None
    reason = FINISH_REASONS.get(raw, "stop")
    return "tool_calls" if reason == "stop" and has_calls else reason


def prompt_block(resp: dict[str, Any], provider: str) -> PromptBlocked | None:
    """The error for an answer whose prompt was blocked (no candidates), else None."""
    feedback = resp.get("promptFeedback")
    reason = feedback.get("blockReason") if isinstance(feedback, dict) else None
    if not isinstance(reason, str) or not reason or resp.get("candidates"):
        return None
    detail = feedback.get("blockReasonMessage") if isinstance(feedback, dict) else None
    why = f": {detail}" if isinstance(detail, str) and detail else ""
    return PromptBlocked(f"Provider {provider} blocked the prompt ({reason}){why}",
                         metadata={"provider_name": provider, "block_reason": reason})


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_call(part: dict[str, Any]) -> dict[str, Any]:
    """A functionCall part -> an OpenAI tool call (whole: Gemini sends calls whole)."""
    call = need_dict(part.get("functionCall"), "functionCall")
    name = call.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest("a functionCall has no name", param="functionCall.name")
    args = call.get("args")
    out: dict[str, Any] = {
        "id": call["id"] if isinstance(call.get("id"), str) and call["id"] else new_call_id(),
        "type": "function",
        "function": {"name": name, "arguments": orjson.dumps(
            args if isinstance(args, dict) else {}).decode()}}
    signature = part.get("thoughtSignature")
    if isinstance(signature, str) and signature:
        out["extra_content"] = {"google": {"thought_signature": signature}}
    return out


def candidate_parts(candidate: dict[str, Any]) -> list[dict[str, Any]]:
    content = candidate.get("content")
    if content is None:
        return []
    parts = need_dict(content, "content").get("parts")
    return [need_dict(p, "content.parts[]") for p in need_list(parts or [], "content.parts")]


def gemini_to_openai_response(resp: Any, *, gen_id: str, model: str,
                              created: int) -> dict[str, Any]:
    try:
        resp = need_dict(resp, "response")
        candidates = need_list(resp.get("candidates") or [], "candidates")
        choices = [_choice(need_dict(c, f"candidates[{i}]"), i)
                   for i, c in enumerate(candidates)]
    except InvalidRequest as exc:
        raise upstream_invalid(exc) from exc
    if not choices:
        raise upstream_invalid(InvalidRequest("the answer has no candidates"))
    return {"id": gen_id, "object": "chat.completion", "created": created, "model": model,
            "choices": choices,
            "usage": openai_usage_dict(gemini_usage(resp.get("usageMetadata")) or Usage())}


def _choice(candidate: dict[str, Any], position: int) -> dict[str, Any]:
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in candidate_parts(candidate):
        if "functionCall" in part:
            calls.append(tool_call(part))
        elif isinstance(part.get("text"), str):
            (thoughts if part.get("thought") is True else texts).append(part["text"])
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if thoughts:
        message["reasoning_content"] = "".join(thoughts)
    if calls:
        message["tool_calls"] = calls
    index = candidate.get("index")
    return {"index": index if isinstance(index, int) else position, "message": message,
            "logprobs": None,
            "finish_reason": finish_reason(candidate.get("finishReason"), bool(calls)) or "stop"}
