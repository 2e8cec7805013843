"""Gemini `streamGenerateContent?alt=sse` events -> OpenAI chat.completion.chunks (pure).

Each event is a whole `GenerateContentResponse` holding the next piece of each candidate;
the stream has no end marker: it is complete once every candidate it began has a
finishReason (after that, the connection closes).

| Gemini event | OpenAI chunks |
|---|---|
| a candidate's first piece | delta {role: assistant, content: ...} |
| text parts / thought parts | delta.content / delta.reasoning_content |
| functionCall parts | delta.tool_calls, each whole: {index, id, type, function {name, arguments}} |
| finishReason | a chunk with delta {} and finish_reason |
| usageMetadata | usage: `partial` while a candidate runs, the provider's once all finished |
| promptFeedback.blockReason, no candidates | raises PromptBlocked (400 content_filter) |
| the end, every candidate finished | the usage chunk, when the client asked for it |
| the end, a candidate unfinished | raises UpstreamError: the stream was cut short |

Tool-call `index` counts the calls of each candidate (0, 1, ...); thought signatures ride on
the calls as in whole answers (`gemini_response.tool_call`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, UpstreamError
from ..output_estimate import openai_delta_tokens, text_tokens
from ..types import PARTIAL, PROVIDER, Usage
from .anthropic_translate import openai_usage_dict
from .gemini_response import (
    PromptBlocked,
    finish_reason,
    gemini_usage,
    prompt_block,
    tool_call,
)
from .shapes import need_dict, need_list, upstream_invalid


@dataclass(slots=True)
class _Candidate:
    calls: int = 0  # tool calls sent so far
    finished: bool = False


class GeminiToOpenAIStream:
    """Feed Gemini stream events (parsed data dicts); get OpenAI chunk dicts."""

    def __init__(self, *, gen_id: str, model: str, created: int, include_usage: bool,
                 provider: str) -> None:
        self._head = {"id": gen_id, "object": "chat.completion.chunk", "created": created,
                      "model": model}
        self._include_usage = include_usage
        self._provider = provider
        self.output_tokens = 0  # estimated from the deltas, for a stream without usage
        self.finish_reason: str | None = None
        self.upstream_id: str | None = None
        self._candidates: dict[int, _Candidate] = {}
        self._running = 0  # candidates begun and not finished
        # The last usageMetadata, turned into Usage only when asked for (once, not per event).
        self._usage_raw: dict[str, Any] | None = None
        self._usage_final = False  # every candidate had finished when it came
        self._usage: Usage | None = None

    @property
    def complete(self) -> bool:
        """Every candidate begun has finished."""
        return self._running == 0 and bool(self._candidates)

    @property
    def usage(self) -> Usage | None:
        """The last usage reported: the provider's if every candidate had finished by
        then, else `partial` (a running count)."""
        if self._usage is None and self._usage_raw is not None:
            self._usage = gemini_usage(self._usage_raw)
            if self._usage is not None:
                self._usage.source = PROVIDER if self._usage_final else PARTIAL
        return self._usage

    def text(self, data: dict[str, Any]) -> str | None:
        """The text of the usual event (booked as `feed` books it): one more piece of text
        of the first candidate, running, nothing else but usage. None for any other event
        (not booked: `feed` takes it)."""
        candidates = data.get("candidates")
        if candidates.__class__ is not list or len(candidates) != 1 or "promptFeedback" in data:
            return None
        candidate = candidates[0]
        if candidate.__class__ is not dict or candidate.get("finishReason") is not None:
            return None
        content = candidate.get("content")
        parts = content.get("parts") if content.__class__ is dict else None
        if parts.__class__ is not list or len(parts) != 1:
            return None
        part = parts[0]
        text = part.get("text") if part.__class__ is dict and len(part) == 1 else None
        index = candidate.get("index", 0)  # the first candidate's (TextChunk's index)
        state = self._candidates.get(0) if index == 0 and index.__class__ is int else None
        if text.__class__ is not str or not text or state is None or state.finished:
            return None
        if self.upstream_id is None and isinstance(data.get("responseId"), str):
            self.upstream_id = data["responseId"]
        self.output_tokens += text_tokens(text)
        usage = data.get("usageMetadata")
        if usage.__class__ is dict:
            self._usage_raw, self._usage_final, self._usage = usage, False, None
        return text

    def feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            return self._feed(data)
        except PromptBlocked:
            raise
        except InvalidRequest as exc:
            raise upstream_invalid(exc) from exc

    def finish(self) -> list[dict[str, Any]]:
        if not self.complete:
            raise UpstreamError("the upstream stream ended before its finishReason")
        if not self._include_usage:
            return []
        return [{**self._head, "choices": [],
                 "usage": openai_usage_dict(self.usage or Usage())}]

    def _feed(self, data: dict[str, Any]) -> list[dict[str, Any]]:
        if "promptFeedback" in data:
            blocked = prompt_block(data, self._provider)
            if blocked is not None:
                raise blocked
        if self.upstream_id is None and isinstance(data.get("responseId"), str):
            self.upstream_id = data["responseId"]
        chunks: list[dict[str, Any]] = []
        for i, item in enumerate(need_list(data.get("candidates") or [], "candidates")):
            chunks.extend(self._candidate(need_dict(item, f"candidates[{i}]"), i))
        usage = data.get("usageMetadata")
        if isinstance(usage, dict):
            self._usage_raw, self._usage_final, self._usage = usage, self.complete, None
        return chunks

    def _candidate(self, candidate: dict[str, Any], position: int) -> list[dict[str, Any]]:
        index = candidate.get("index")
        index = index if isinstance(index, int) else position
        state = self._candidates.get(index)
        delta: dict[str, Any] = {}
        if state is None:
            state = self._candidates[index] = _Candidate()
            self._running += 1
            delta = {"role": "assistant", "content": ""}
        elif state.finished:
            return []
        content = candidate.get("content")
        if content is not None:
            _add_parts(delta, need_dict(content, "content").get("parts"), state)
        chunks = [self._chunk(index, delta)] if delta else []
        self.output_tokens += openai_delta_tokens(delta)
        reason = finish_reason(candidate.get("finishReason"), state.calls > 0)
        if reason is not None:
            state.finished = True
            self._running -= 1
            if index == 0 or self.finish_reason is None:
                self.finish_reason = reason
            chunks.append(self._chunk(index, {}, reason))
        return chunks

    def _chunk(self, index: int, delta: dict[str, Any],
               reason: str | None = None) -> dict[str, Any]:
        chunk = {**self._head, "choices": [{"index": index, "delta": delta, "logprobs": None,
                                            "finish_reason": reason}]}
        if self._include_usage:
            chunk["usage"] = None
        return chunk


def _add_parts(delta: dict[str, Any], parts: Any, state: _Candidate) -> None:
    """One event's parts of a candidate into its delta: text, thoughts, whole calls."""
    if parts.__class__ is list and len(parts) == 1:  # most events: one piece of text
        part = parts[0]
        text = part.get("text") if part.__class__ is dict else None
        if text.__class__ is str and len(part) == 1:
            if text:
                delta["content"] = text
            return
    texts: list[str] = []
    thoughts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in need_list(parts or [], "content.parts"):
        need_dict(part, "content.parts[]")
        if "functionCall" in part:
            calls.append({"index": state.calls, **tool_call(part)})
            state.calls += 1
        elif isinstance(part.get("text"), str) and part["text"]:
            (thoughts if part.get("thought") is True else texts).append(part["text"])
    if thoughts:
        delta["reasoning_content"] = "".join(thoughts)
    if texts:
        delta["content"] = "".join(texts)
    if calls:
        delta["tool_calls"] = calls
