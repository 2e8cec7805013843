"""Anthropic Messages client <-> OpenAI-compatible upstream: the request going out and the
answer coming back (pure, no I/O). The mapping tables are in `anthropic_translate.py`,
which also holds the other direction; the shape checks are in `shapes.py`."""

from __future__ import annotations

import uuid
from typing import Any

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.providers.anthropic_translate import (
    BUDGET_EFFORTS,
    STOP_REASONS,
    anthropic_usage_dict,
    openai_tool_call,
    openai_usage,
    tool_use_block,
)
from anyrouter_proxy.providers.json_format import openai_response_format
from anyrouter_proxy.providers.shapes import (
    bad_type,
    need_body,
    need_bool,
    need_dict,
    need_int,
    need_list,
    need_number,
    need_str,
    opt_str,
    unsupported,
    upstream_invalid,
)

# --- Anthropic request -> OpenAI request -----------------------------------------------------

def anthropic_to_openai_request(body: dict[str, Any], *, upstream_model: str,
                                max_output: int | None = None) -> dict[str, Any]:
    """`max_output`: the most the gateway reserved for; max_tokens is lowered to it."""
    body = need_body(body)
    if body.get("max_tokens") is None:
        raise InvalidRequest("'max_tokens' is required", param="max_tokens")
    max_tokens = need_int(body["max_tokens"], "max_tokens", minimum=1)
    if max_output is not None:
        max_tokens = min(max_tokens, max_output)
    for name in ("mcp_servers", "container"):
        if body.get(name) is not None:
            raise unsupported(name, "only on Anthropic routes")
    messages = _openai_system(body.get("system"))
    for i, item in enumerate(need_list(body.get("messages"), "messages")):
        messages.extend(_openai_turn(item, f"messages[{i}]"))
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    effort = _effort(body.get("thinking"))
    out["max_completion_tokens" if effort else "max_tokens"] = max_tokens
    if effort:
        out["reasoning_effort"] = effort
    if body.get("stop_sequences") is not None:
        stops = need_list(body["stop_sequences"], "stop_sequences")
        out["stop"] = [need_str(s, f"stop_sequences[{i}]") for i, s in enumerate(stops)]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            out[name] = need_number(body[name], name)
    if body.get("top_k") is not None:
        need_int(body["top_k"], "top_k")
    tools = None if body.get("tools") is None else _openai_tools(body["tools"])
    if tools:
        out["tools"] = tools
    if body.get("tool_choice") is not None and out.get("tools"):
        out.update(_openai_tool_choice(need_dict(body["tool_choice"], "tool_choice")))
    if body.get("metadata") is not None:
        metadata = need_dict(body["metadata"], "metadata")
        user = opt_str(metadata.get("user_id"), "metadata.user_id")
        if user:
            out["user"] = user
    response_format = openai_response_format(body)
    if response_format is not None:
        out["response_format"] = response_format
    if body.get("stream") is not None and need_bool(body["stream"], "stream"):
        out["stream"] = True
        out["stream_options"] = {"include_usage": True}
    return out


def _effort(value: Any) -> str | None:
    if value is None:
        return None
    thinking = need_dict(value, "thinking")
    if need_str(thinking.get("type"), "thinking.type") != "enabled":
        return None
    budget = need_int(thinking.get("budget_tokens"), "thinking.budget_tokens")
    return next((effort for limit, effort in BUDGET_EFFORTS if budget < limit), "high")


def _openai_system(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    if isinstance(value, str):
        return [{"role": "system", "content": value}] if value else []
    texts = []
    for i, item in enumerate(need_list(value, "system")):
        block = need_dict(item, f"system[{i}]")
        if block.get("type") != "text":
            raise bad_type(f"system[{i}].type", "'text'")
        texts.append(need_str(block.get("text"), f"system[{i}].text"))
    return [{"role": "system", "content": "\n".join(texts)}] if texts else []


def _openai_turn(item: Any, p: str) -> list[dict[str, Any]]:
    msg = need_dict(item, p)
    role = msg.get("role")
    if role not in ("user", "assistant"):
        raise bad_type(f"{p}.role", "'user' or 'assistant'")
    content = msg.get("content")
    if isinstance(content, str):
        return [{"role": role, "content": content}]
    blocks = [need_dict(b, f"{p}.content[{j}]")
              for j, b in enumerate(need_list(content, f"{p}.content"))]
    if role == "assistant":
        return [_openai_assistant(blocks, p)]
    tools: list[dict[str, Any]] = []
    parts: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        bp = f"{p}.content[{j}]"
        if block.get("type") == "tool_result":
            tools.append(_openai_tool_message(block, bp, parts))
        else:
            parts.append(_openai_part(block, bp))
    if not parts:
        return tools
    if len(parts) == 1 and parts[0]["type"] == "text":
        return [*tools, {"role": "user", "content": parts[0]["text"]}]
    return [*tools, {"role": "user", "content": parts}]


def _openai_part(block: dict[str, Any], p: str) -> dict[str, Any]:
    kind = block.get("type")
    if kind == "text":
        return {"type": "text", "text": need_str(block.get("text"), f"{p}.text")}
    if kind not in ("image", "document"):
        raise unsupported(f"{p}.type", f"{kind!r} blocks cannot be translated for this route")
    source = need_dict(block.get("source"), f"{p}.source")
    source_type = source.get("type")
    if kind == "image" and source_type == "url":
        return {"type": "image_url", "image_url": {"url": need_str(source.get("url"),
                                                                     f"{p}.source.url")}}
    if kind == "document" and source_type == "text":
        return {"type": "text", "text": need_str(source.get("data"), f"{p}.source.data")}
    if source_type != "base64":
        raise unsupported(f"{p}.source.type", f"{source_type!r} sources")
    url = (f"data:{need_str(source.get('media_type'), f'{p}.source.media_type')};base64,"
           f"{need_str(source.get('data'), f'{p}.source.data')}")
    if kind == "image":
        return {"type": "image_url", "image_url": {"url": url}}
    title = opt_str(block.get("title"), f"{p}.title") or "document.pdf"
    return {"type": "file", "file": {"filename": title, "file_data": url}}


def _openai_tool_message(
    block: dict[str, Any], p: str, parts: list[dict[str, Any]],
) -> dict[str, Any]:
    """A tool_result -> a role "tool" message; its images go to `parts` (the user message)."""
    content = block.get("content", "")
    texts = []
    if isinstance(content, str):
        texts.append(content)
    else:
        for k, item in enumerate(need_list(content, f"{p}.content")):
            part = _openai_part(need_dict(item, f"{p}.content[{k}]"), f"{p}.content[{k}]")
            if part["type"] == "text":
                texts.append(part["text"])
            else:
                parts.append(part)
    return {"role": "tool", "tool_call_id": need_str(block.get("tool_use_id"), f"{p}.tool_use_id"),
            "content": "\n".join(texts)}


def _openai_assistant(blocks: list[dict[str, Any]], p: str) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, block in enumerate(blocks):
        kind = block.get("type")
        if kind == "text":
            texts.append(need_str(block.get("text"), f"{p}.content[{j}].text"))
        elif kind == "tool_use":
            calls.append(openai_tool_call(block, f"{p}.content[{j}]"))
        elif kind not in ("thinking", "redacted_thinking"):
            raise unsupported(f"{p}.content[{j}].type", f"{kind!r} blocks in assistant turns")
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return message


def _openai_tools(value: Any) -> list[dict[str, Any]]:
    tools = []
    for i, item in enumerate(need_list(value, "tools")):
        p = f"tools[{i}]"
        tool = need_dict(item, p)
        if tool.get("type", "custom") not in ("custom", None):
            raise unsupported(f"{p}.type", "server tools run only on Anthropic routes")
        function: dict[str, Any] = {
            "name": need_str(tool.get("name"), f"{p}.name"),
            "parameters": need_dict(tool.get("input_schema"), f"{p}.input_schema"),
        }
        description = opt_str(tool.get("description"), f"{p}.description")
        if description:
            function["description"] = description
        tools.append({"type": "function", "function": function})
    return tools


def _openai_tool_choice(choice: dict[str, Any]) -> dict[str, Any]:
    kind = choice.get("type")
    out: dict[str, Any]
    if kind == "tool":
        name = need_str(choice.get("name"), "tool_choice.name")
        out = {"tool_choice": {"type": "function", "function": {"name": name}}}
    elif kind in ("auto", "any", "none"):
        out = {"tool_choice": {"auto": "auto", "any": "required", "none": "none"}[kind]}
    else:
        raise bad_type("tool_choice.type", "'auto', 'any', 'tool' or 'none'")
    no_parallel = choice.get("disable_parallel_tool_use")
    if no_parallel is not None and need_bool(no_parallel, "tool_choice.disable_parallel_tool_use") \
            and kind != "none":
        out["parallel_tool_calls"] = False
    return out


# --- OpenAI response -> Anthropic response ---------------------------------------------------

def message_id(upstream_id: Any) -> str:
    """An Anthropic-style id derived from an OpenAI id (`msg_` + it), or a fresh one."""
    if isinstance(upstream_id, str) and upstream_id:
        return upstream_id if upstream_id.startswith("msg_") else f"msg_{upstream_id}"
    return f"msg_{uuid.uuid4().hex}"


def openai_to_anthropic_response(resp: dict[str, Any], *, model: str) -> dict[str, Any]:
    try:
        return _openai_to_anthropic_response(resp, model)
    except InvalidRequest as exc:
        raise upstream_invalid(exc) from exc


def _openai_to_anthropic_response(resp: Any, model: str) -> dict[str, Any]:
    resp = need_dict(resp, "response")
    choices = need_list(resp.get("choices"), "choices")
    if not choices:
        raise InvalidRequest("'choices' is empty", param="choices")
    choice = need_dict(choices[0], "choices[0]")
    message = need_dict(choice.get("message"), "choices[0].message")
    p = "choices[0].message"
    blocks = reasoning_blocks(message, p)
    text = _upstream_text(message.get("content"), f"{p}.content")
    refusal = opt_str(message.get("refusal"), f"{p}.refusal")
    for piece in (text, refusal):
        if piece:
            blocks.append({"type": "text", "text": piece})
    for j, call in enumerate(need_list(message.get("tool_calls") or [], f"{p}.tool_calls")):
        blocks.append(tool_use_block(call, f"{p}.tool_calls[{j}]"))
    finish = opt_str(choice.get("finish_reason"), "choices[0].finish_reason")
    stop = "refusal" if refusal else STOP_REASONS.get(finish or "", "end_turn")
    return {"id": message_id(resp.get("id")), "type": "message", "role": "assistant",
            "model": model, "content": blocks, "stop_reason": stop, "stop_sequence": None,
            "usage": anthropic_usage_dict(openai_usage(resp.get("usage")))}


def reasoning_blocks(message: dict[str, Any], p: str) -> list[dict[str, Any]]:
    """Thinking blocks of an OpenAI-shaped message: its thinking_blocks, else its reasoning."""
    blocks = []
    for j, item in enumerate(need_list(message.get("thinking_blocks") or [],
                                       f"{p}.thinking_blocks")):
        bp = f"{p}.thinking_blocks[{j}]"
        block = need_dict(item, bp)
        if block.get("type") == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": need_str(block.get("data"),
                                                                         f"{bp}.data")})
        else:
            blocks.append({"type": "thinking",
                           "thinking": opt_str(block.get("thinking"), f"{bp}.thinking") or "",
                           "signature": opt_str(block.get("signature"), f"{bp}.signature")
                           or ""})
    if blocks:
        return blocks
    reasoning = message.get("reasoning_content", message.get("reasoning"))
    if isinstance(reasoning, str) and reasoning:
        return [{"type": "thinking", "thinking": reasoning, "signature": ""}]
    return []



def _upstream_text(content: Any, p: str) -> str:
    """An OpenAI message's content: a string, null, or (some upstreams) text parts."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, item in enumerate(need_list(content, p)):
        part = need_dict(item, f"{p}[{j}]")
        if part.get("type") == "text":
            texts.append(need_str(part.get("text"), f"{p}[{j}].text"))
    return "".join(texts)
