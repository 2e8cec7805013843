"""Output tokens estimated from what an answer carried, for answers whose provider reported
no (final) usage: a stream cut short, cancelled, or from an upstream that sends no usage.

Pessimistic like the prompt estimate: CHARS_PER_TOKEN characters (UTF-8 bytes when not
ASCII) a token over the text, reasoning and tool-call arguments, rounded up per event, so
every event with content counts at least one token. Only strings the relay has already
parsed are measured: no extra parsing per event.
"""

from __future__ import annotations

from typing import Any

import orjson

from .pricing import CHARS_PER_TOKEN

# Text-bearing fields of an OpenAI delta or message (tool calls are counted apart).
OPENAI_TEXT_FIELDS = frozenset({"content", "reasoning_content", "reasoning", "refusal", "text"})
# Anthropic content_block_delta types -> their text field.
ANTHROPIC_DELTA_FIELDS = {"text_delta": "text", "thinking_delta": "thinking",
                          "input_json_delta": "partial_json"}


def _chars(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _tokens(chars: int) -> int:
    return -(-chars // CHARS_PER_TOKEN)


def text_tokens(text: str) -> int:
    """Tokens of one piece of text (0 for an empty one)."""
    return _tokens(_chars(text))


def openai_delta_tokens(delta: dict[str, Any]) -> int:
    """A streamed chat delta or a whole message (content, reasoning, refusal, tool calls)."""
    chars = 0
    for name, value in delta.items():  # a delta has one or two keys: cheaper than lookups
        if value.__class__ is str:
            if name in OPENAI_TEXT_FIELDS:
                chars += _chars(value)
        elif name == "tool_calls" and value.__class__ is list:
            chars += _tool_call_chars(value)
    return _tokens(chars)


def _tool_call_chars(calls: list[Any]) -> int:
    chars = 0
    for call in calls:
        function = call.get("function") if isinstance(call, dict) else None
        if isinstance(function, dict):
            for part in (function.get("name"), function.get("arguments")):
                if isinstance(part, str):
                    chars += _chars(part)
    return chars


def openai_choice_tokens(choices: list[Any]) -> int:
    """The choices of a streamed chunk (delta) or of a whole answer (message, text)."""
    tokens = 0
    for choice in choices:
        if choice.__class__ is not dict:
            continue
        body = choice.get("delta") or choice.get("message")
        if body.__class__ is dict:
            tokens += openai_delta_tokens(body)
        else:
            text = choice.get("text")  # legacy completions
            if text.__class__ is str:
                tokens += text_tokens(text)
    return tokens


def anthropic_delta_tokens(delta: Any) -> int:
    """One content_block_delta's `delta` (text, thinking, tool input JSON)."""
    if delta.__class__ is not dict:
        return 0
    kind = delta.get("type")  # a hostile upstream may send any JSON here, unhashable too
    name = ANTHROPIC_DELTA_FIELDS.get(kind) if kind.__class__ is str else None
    value = delta.get(name) if name is not None else None
    return text_tokens(value) if value.__class__ is str else 0


def anthropic_content_tokens(content: Any) -> int:
    """The content blocks of a whole Anthropic message."""
    tokens = 0
    for block in content if isinstance(content, list) else ():
        if not isinstance(block, dict):
            continue
        kind = block.get("type")
        if kind in ("text", "thinking") and isinstance(block.get(kind), str):
            tokens += text_tokens(block[kind])
        elif kind == "tool_use":
            tokens += _json_tokens(block.get("input")) + _json_tokens(block.get("name"))
    return tokens


def _json_tokens(value: Any) -> int:
    try:
        return _tokens(len(orjson.dumps(value)))
    except orjson.JSONEncodeError:  # deeper than orjson writes: its text form instead
        return text_tokens(str(value))
