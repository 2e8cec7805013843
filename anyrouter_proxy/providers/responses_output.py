"""The Responses API answer (pure, no I/O): the response object, its usage, and a Chat
Completions answer as Responses output items.

| chat completion | Responses output item(s), in this order |
|---|---|
| message.thinking_blocks (Anthropic) | a `reasoning` item per block: text in `summary`, |
|  | signature in `encrypted_content` |
| message.reasoning_content (or reasoning) | one `reasoning` item, the text in `summary` |
| message.content, message.refusal | one `message` item: `output_text` and `refusal` parts |
| message.tool_calls | one `function_call` item each (`call_id` = the tool call's id) |
| finish_reason length / content_filter | status `incomplete`, incomplete_details.reason |
|  | `max_output_tokens` / `content_filter` |

The `encrypted_content` the proxy writes for Anthropic's thinking starts with
FOREIGN_REASONING_PREFIX: sent back on a later turn it becomes the signed thinking block
again for an Anthropic route, and is left out for every other provider. The client sees
`encrypted_content` only when it asked for it (`include: ["reasoning.encrypted_content"]`);
the proxy keeps it either way, to continue the conversation.
"""

from __future__ import annotations

from typing import Any

from ..ids import new_item_id
from ..types import Usage
from .shapes import need_dict, need_list, opt_str

FOREIGN_REASONING_PREFIX = "anyrouter:"
THINKING_PREFIX = "anyrouter:anthropic-thinking:"
REDACTED_PREFIX = "anyrouter:anthropic-redacted:"
ENCRYPTED_INCLUDE = "reasoning.encrypted_content"
INCOMPLETE_REASONS = {"length": "max_output_tokens", "content_filter": "content_filter"}


def response_shell(body: dict[str, Any], *, gen_id: str, model: str,
                   created_at: int) -> dict[str, Any]:
    """The response object for `body` before any output: what it asked for, echoed."""
    reasoning = body.get("reasoning") if isinstance(body.get("reasoning"), dict) else {}
    assert isinstance(reasoning, dict)
    text = body.get("text") if isinstance(body.get("text"), dict) else {}
    assert isinstance(text, dict)
    return {
        "id": gen_id, "object": "response", "created_at": created_at,
        "status": "in_progress", "background": False, "error": None,
        "incomplete_details": None, "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": body.get("max_tool_calls"), "model": model, "output": [],
        "parallel_tool_calls": body.get("parallel_tool_calls") is not False,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
        "store": body.get("store") is not False,
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, **text},
        "tool_choice": body.get("tool_choice", "auto"), "tools": body.get("tools") or [],
        "top_p": body.get("top_p", 1.0), "truncation": body.get("truncation") or "disabled",
        "usage": None, "user": body.get("user"), "metadata": body.get("metadata") or {},
    }


def finished(response: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
    """`response` with the status its finish reason gives (in place)."""
    reason = INCOMPLETE_REASONS.get(finish_reason or "")
    response["status"] = "incomplete" if reason else "completed"
    response["incomplete_details"] = {"reason": reason} if reason else None
    return response


def responses_usage(usage: Usage) -> dict[str, Any]:
    return {"input_tokens": usage.prompt_tokens,
            "input_tokens_details": {"cached_tokens": usage.cached_tokens,
                                     "cache_write_tokens": usage.cache_write_tokens},
            "output_tokens": usage.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": usage.reasoning_tokens},
            "total_tokens": usage.prompt_tokens + usage.completion_tokens}


def parse_usage(raw: Any) -> Usage | None:
    """A Responses `usage` object -> Usage; None when absent."""
    if not isinstance(raw, dict):
        return None
    given = raw.get("input_tokens_details")
    given = given if isinstance(given, dict) else {}
    made = raw.get("output_tokens_details")
    made = made if isinstance(made, dict) else {}
    return Usage(prompt_tokens=_count(raw.get("input_tokens")),
                 completion_tokens=_count(raw.get("output_tokens")),
                 cached_tokens=_count(given.get("cached_tokens")),
                 reasoning_tokens=_count(made.get("reasoning_tokens")),
                 cache_write_tokens=_count(given.get("cache_write_tokens")))


def _count(value: Any) -> int:
    return value if value.__class__ is int and value > 0 else 0


def wants_encrypted(body: dict[str, Any]) -> bool:
    include = body.get("include")
    return isinstance(include, list) and ENCRYPTED_INCLUDE in include


def client_items(items: list[dict[str, Any]], encrypted: bool) -> list[dict[str, Any]]:
    """Output items as the client sees them: no encrypted_content unless it asked."""
    if encrypted:
        return items
    return [{k: v for k, v in item.items() if k != "encrypted_content"}
            if item.get("type") == "reasoning" and "encrypted_content" in item else item
            for item in items]


# --- a chat completion as output items --------------------------------------------------------

def chat_output(message: dict[str, Any], *, incomplete: bool) -> list[dict[str, Any]]:
    """The output items of one chat message (see the table above); raises InvalidRequest
    for a message of the wrong shape (the caller makes it the upstream's fault)."""
    p = "choices[0].message"
    items = reasoning_items(message, p)
    parts: list[dict[str, Any]] = []
    text = _message_text(message.get("content"), f"{p}.content")
    if text:
        parts.append(output_text(text))
    refusal = opt_str(message.get("refusal"), f"{p}.refusal")
    if refusal:
        parts.append({"type": "refusal", "refusal": refusal})
    if parts:
        items.append(message_item(new_item_id("msg_"), parts,
                                  "incomplete" if incomplete else "completed"))
    for j, raw in enumerate(need_list(message.get("tool_calls") or [], f"{p}.tool_calls")):
        call = need_dict(raw, f"{p}.tool_calls[{j}]")
        function = need_dict(call.get("function"), f"{p}.tool_calls[{j}].function")
        items.append(function_call_item(
            new_item_id("fc_"), opt_str(call.get("id"), f"{p}.tool_calls[{j}].id")
            or new_item_id("call_"),
            opt_str(function.get("name"), f"{p}.tool_calls[{j}].function.name") or "",
            opt_str(function.get("arguments"), f"{p}.tool_calls[{j}].function.arguments")
            or "", "completed"))
    return items


def output_text(text: str) -> dict[str, Any]:
    return {"type": "output_text", "annotations": [], "logprobs": [], "text": text}


def message_item(item_id: str, content: list[dict[str, Any]], status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "message", "status": status, "content": content,
            "role": "assistant"}


def function_call_item(item_id: str, call_id: str, name: str, arguments: str,
                       status: str) -> dict[str, Any]:
    return {"id": item_id, "type": "function_call", "status": status,
            "arguments": arguments, "call_id": call_id, "name": name}


def reasoning_item(item_id: str, text: str, encrypted: str | None = None) -> dict[str, Any]:
    item: dict[str, Any] = {"id": item_id, "type": "reasoning",
                            "summary": [{"type": "summary_text", "text": text}] if text else []}
    if encrypted is not None:
        item["encrypted_content"] = encrypted
    return item


def reasoning_items(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    blocks = need_list(message.get("thinking_blocks") or [], f"{p}.thinking_blocks")
    items = [_block_item(need_dict(b, f"{p}.thinking_blocks[{j}]"))
             for j, b in enumerate(blocks)]
    if items:
        return items
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    if isinstance(reasoning, str) and reasoning:
        return [reasoning_item(new_item_id("rs_"), reasoning)]
    return []


def _block_item(block: dict[str, Any]) -> dict[str, Any]:
    """One Anthropic thinking block (as chat's thinking_blocks carry it) as a reasoning
    item that carries its signature."""
    if block.get("type") == "redacted_thinking":
        data = block.get("data")
        return reasoning_item(new_item_id("rs_"), "",
                              REDACTED_PREFIX + data if isinstance(data, str) else None)
    text = block.get("thinking")
    signature = block.get("signature")
    return reasoning_item(new_item_id("rs_"), text if isinstance(text, str) else "",
                          THINKING_PREFIX + signature
                          if isinstance(signature, str) and signature else None)


def thinking_block(item: dict[str, Any]) -> dict[str, Any] | None:
    """The Anthropic thinking block a reasoning item carries, if the proxy wrote it."""
    encrypted = item.get("encrypted_content")
    if not isinstance(encrypted, str):
        return None
    if encrypted.startswith(REDACTED_PREFIX):
        return {"type": "redacted_thinking", "data": encrypted[len(REDACTED_PREFIX):]}
    if not encrypted.startswith(THINKING_PREFIX):
        return None
    summary = item.get("summary")
    text = "".join(part.get("text", "") for part in summary
                   if isinstance(part, dict) and isinstance(part.get("text"), str)) \
        if isinstance(summary, list) else ""
    return {"type": "thinking", "thinking": text,
            "signature": encrypted[len(THINKING_PREFIX):]}


def _message_text(content: Any, p: str) -> str:
    """A chat message's content: a string, null, or (some upstreams) text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, raw in enumerate(need_list(content, p)):
        part = need_dict(raw, f"{p}[{j}]")
        if part.get("type") == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
    return "".join(texts)
