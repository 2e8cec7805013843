"""The response tool folded back into the answer (pure, no I/O): a structured answer made
with a tool (see `structured.py`) reaches the client as OpenAI's structured output does.

Whole answers (`fold_response_tool`) and streams (`ResponseToolFold`) alike:

| upstream answer, in OpenAI's shape | what the client gets |
|---|---|
| a call of the response tool | its arguments (a JSON string) as `content`; text beside it dropped |
| its arguments streaming | `delta.content`, fragment by fragment; "{}" when none came |
| calls of the client's own tools | tool_calls, indexed 0, 1, ... without the response tool |
| finish_reason tool_calls, only the response tool called | "stop" |
| no call of the response tool | the text as it came (a stream holds it back until the end) |

Only the first call of the response tool counts; another one (a parallel call) is dropped.
"""

from __future__ import annotations

from typing import Any

EMPTY_INPUT = "{}"  # what a tool call without arguments stands for


def fold_response_tool(response: dict[str, Any], tool: str) -> dict[str, Any]:
    """A chat.completion (as `anthropic_to_openai_response` makes it) with the call of
    `tool` turned into the message content; changed in place and returned."""
    choice = response["choices"][0]
    message = choice["message"]
    calls = message.get("tool_calls") or []
    answer = next((c for c in calls if c["function"]["name"] == tool), None)
    others = [c for c in calls if c["function"]["name"] != tool]
    if answer is not None:
        message["content"] = answer["function"]["arguments"] or EMPTY_INPUT
    if others:
        message["tool_calls"] = others
    else:
        message.pop("tool_calls", None)
        if choice["finish_reason"] == "tool_calls":
            choice["finish_reason"] = "stop"
    return response


class ResponseToolFold:
    """Feed the chat.completion.chunks of one stream (as `AnthropicToOpenAIStream` makes
    them: one kind of delta per chunk); get the chunks the client is sent."""

    __slots__ = ("_answer", "_dropped", "_held", "_tool", "_tools", "_wrote", "finish_reason")

    def __init__(self, tool: str) -> None:
        self._tool = tool
        self._answer: int | None = None  # the upstream index of the response tool's call
        self._dropped: set[int] = set()  # further calls of it
        self._tools = 0  # the client's tool calls passed on
        self._wrote = False  # some of the answer was sent
        self._held: list[str] = []  # text, until it is known whether the tool is called
        self.finish_reason: str | None = None

    def feed(self, chunks: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for chunk in chunks:
            choices = chunk.get("choices")
            if not choices:  # the usage chunk
                out.append(chunk)
                continue
            choice = choices[0]
            delta = choice["delta"]
            if choice.get("finish_reason") is not None:
                out.extend(self._finish(chunk, choice))
            elif delta.get("tool_calls"):
                out.extend(self._calls(chunk, delta["tool_calls"]))
            elif delta.get("content") and "role" not in delta:
                if self._answer is None:
                    self._held.append(delta["content"])
            else:
                out.append(chunk)
        return out

    def _calls(self, chunk: dict[str, Any], calls: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for call in calls:
            index = call["index"]
            if "id" in call:  # a call starts
                if call["function"]["name"] == self._tool:
                    if self._answer is None:
                        self._answer = index
                        self._held.clear()
                    else:
                        self._dropped.add(index)
                    continue
                self._tools += 1
            if index == self._answer:
                text = call.get("function", {}).get("arguments")
                if text:
                    self._wrote = True
                    out.append(_content_chunk(chunk, text))
            elif index not in self._dropped:
                folded = (self._answer, *self._dropped)
                position = index - sum(1 for i in folded if i is not None and i < index)
                out.append(_with_delta(chunk, {"tool_calls": [{**call, "index": position}]}))
        return out

    def _finish(self, chunk: dict[str, Any], choice: dict[str, Any]) -> list[dict[str, Any]]:
        out = []
        if self._answer is None and self._held:
            out.append(_content_chunk(chunk, "".join(self._held)))
            self._held.clear()
        elif self._answer is not None and not self._wrote:
            self._wrote = True
            out.append(_content_chunk(chunk, EMPTY_INPUT))
        if choice["finish_reason"] == "tool_calls" and not self._tools:
            choice["finish_reason"] = "stop"
        self.finish_reason = choice["finish_reason"]
        out.append(chunk)
        return out


def _with_delta(chunk: dict[str, Any], delta: dict[str, Any]) -> dict[str, Any]:
    """`chunk` (its id, model, usage field...) with one choice carrying `delta`."""
    return {**chunk, "choices": [{"index": 0, "delta": delta, "logprobs": None,
                                  "finish_reason": None}]}


def _content_chunk(chunk: dict[str, Any], text: str) -> dict[str, Any]:
    return _with_delta(chunk, {"content": text})
