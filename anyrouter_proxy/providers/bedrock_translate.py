"""Anthropic Messages <-> Bedrock Converse: the request going out, the answer coming back,
usage and stop reasons (pure, no I/O).

Converse is shaped like Messages (system apart, user/assistant turns of content blocks, tool
use and results as blocks), so every client dialect reaches Bedrock through it: Anthropic
requests directly, OpenAI chat requests after `openai_to_anthropic_request`, and answers
back the same way (`anthropic_to_openai_response`, the Anthropic stream translators).
Raises only `ProxyError`s: `InvalidRequest` (400, `param` naming the field) for a client
body, `UpstreamError` (502 `upstream_invalid_response`) for an upstream answer.

Anthropic request -> Converse request (`anthropic_to_converse`)

| Anthropic | Converse |
|---|---|
| system (string or text blocks) | system [{text}] |
| text block | {text} (empty ones dropped: Bedrock rejects blank text) |
| image, base64 (png, jpeg, gif, webp) | {image: {format, source: {bytes}}} |
| document, base64 (DOCUMENT_FORMATS) | {document: {format, name, source: {bytes}}} |
| document, text | {document: {format: txt, name, source: {text}}} |
| tool_use | {toolUse: {toolUseId, name, input}} |
| tool_result (text/image/document, is_error) | {toolResult: {toolUseId, content, status}} |
| thinking (signed) | {reasoningContent: {reasoningText: {text, signature}}} |
| redacted_thinking | {reasoningContent: {redactedContent}} |
| cache_control on a block or a tool | a {cachePoint: {type: default}} after it (ttl kept) |
| tools {name, description, input_schema} | toolConfig.tools [{toolSpec: {.., inputSchema}}] |
| tool_choice auto, any, tool | toolConfig.toolChoice {auto: {}}, {any: {}}, {tool: {name}} |
| tool_choice none | no toolChoice; the tools are left out unless the history uses them |
| max_tokens | inferenceConfig.maxTokens (no more than the gateway reserved) |
| temperature, top_p, stop_sequences | inferenceConfig temperature, topP, stopSequences |
| thinking, top_k (Claude models only) | additionalModelRequestFields {thinking, top_k} |

Dropped: metadata, service_tier, disable_parallel_tool_use, anything unknown, and thinking
and top_k for models that are not Claude (a route model without "anthropic" in its id or
ARN). Refused with 400 `unsupported_parameter`: image and document URLs or file ids (Converse
takes bytes), server tools, mcp_servers, container.

Converse answer -> Anthropic message (`converse_to_anthropic`): text, toolUse,
reasoningContent back to text, tool_use, thinking / redacted_thinking blocks; stopReason
end_turn, tool_use, max_tokens, stop_sequence, model_context_window_exceeded kept,
guardrail_intervened and content_filtered -> refusal, anything else -> end_turn. Converse's
inputTokens leave out cache reads and writes, as Anthropic's input_tokens do: usage is
{input_tokens: inputTokens, output_tokens: outputTokens, cache_read_input_tokens:
cacheReadInputTokens, cache_creation_input_tokens: cacheWriteInputTokens}.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.output_cap import cap_converse_body
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

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg",
                 "image/gif": "gif", "image/webp": "webp"}
DOCUMENT_FORMATS = {
    "application/pdf": "pdf", "text/csv": "csv", "text/plain": "txt", "text/html": "html",
    "text/markdown": "md", "application/msword": "doc",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.ms-excel": "xls",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
}
STOP_REASONS = {"end_turn": "end_turn", "tool_use": "tool_use", "max_tokens": "max_tokens",
                "stop_sequence": "stop_sequence",
                "model_context_window_exceeded": "model_context_window_exceeded",
                "guardrail_intervened": "refusal", "content_filtered": "refusal"}
_NAME_CHARS = re.compile(r"[^A-Za-z0-9()\[\] -]+")  # what a Converse document name may hold
_TOOL_CHOICES = {"auto": "auto", "any": "any"}


def is_claude(model: str) -> bool:
    """A model id or inference-profile ARN of an Anthropic model (takes Claude's fields)."""
    return "anthropic" in model


# --- Anthropic request -> Converse request ---------------------------------------------------

def anthropic_to_converse(body: dict[str, Any], *, upstream_model: str,
                          max_output: int | None = None) -> dict[str, Any]:
    """`max_output`: the most the gateway reserved for; maxTokens is lowered to it."""
    body = need_body(body)
    for name in ("mcp_servers", "container"):
        if body.get(name) is not None:
            raise unsupported(name, "only on Anthropic routes")
    out: dict[str, Any] = {"messages": [_message(item, f"messages[{i}]") for i, item
                                        in enumerate(need_list(body.get("messages"),
                                                               "messages"))]}
    if body.get("system") is not None:
        system = _system(body["system"])
        if system:
            out["system"] = system
    out["inferenceConfig"] = _inference(body)
    tools = _tool_config(body, out["messages"])
    if tools is not None:
        out["toolConfig"] = tools
    extra = _claude_fields(body) if is_claude(upstream_model) else {}
    if extra:
        out["additionalModelRequestFields"] = extra
    if max_output is not None:
        cap_converse_body(out, max_output)
    return out


def _inference(body: dict[str, Any]) -> dict[str, Any]:
    if body.get("max_tokens") is None:
        raise InvalidRequest("'max_tokens' is required", param="max_tokens")
    max_tokens = need_int(body["max_tokens"], "max_tokens", minimum=1)
    config: dict[str, Any] = {"maxTokens": max_tokens}
    if body.get("temperature") is not None:
        config["temperature"] = need_number(body["temperature"], "temperature")
    if body.get("top_p") is not None:
        config["topP"] = need_number(body["top_p"], "top_p")
    if body.get("stop_sequences") is not None:
        stops = need_list(body["stop_sequences"], "stop_sequences")
        if stops:
            config["stopSequences"] = [need_str(s, f"stop_sequences[{i}]")
                                       for i, s in enumerate(stops)]
    return config


def _claude_fields(body: dict[str, Any]) -> dict[str, Any]:
    extra: dict[str, Any] = {}
    if body.get("thinking") is not None:
        thinking = need_dict(body["thinking"], "thinking")
        if need_str(thinking.get("type"), "thinking.type") != "disabled":
            extra["thinking"] = thinking
    if body.get("top_k") is not None:
        extra["top_k"] = need_int(body["top_k"], "top_k", minimum=1)
    return extra


def _cache_point(block: dict[str, Any], p: str) -> list[dict[str, Any]]:
    """The cachePoint that follows a block carrying cache_control (none otherwise)."""
    control = block.get("cache_control")
    if control is None:
        return []
    control = need_dict(control, f"{p}.cache_control")
    point: dict[str, Any] = {"type": "default"}
    ttl = opt_str(control.get("ttl"), f"{p}.cache_control.ttl")
    if ttl:
        point["ttl"] = ttl
    return [{"cachePoint": point}]


def _system(value: Any) -> list[dict[str, Any]]:
    if isinstance(value, str):
        return [{"text": value}] if value else []
    out: list[dict[str, Any]] = []
    for i, item in enumerate(need_list(value, "system")):
        p = f"system[{i}]"
        block = need_dict(item, p)
        if block.get("type") != "text":
            raise bad_type(f"{p}.type", "'text'")
        text = need_str(block.get("text"), f"{p}.text")
        if text:
            out.append({"text": text})
        out.extend(_cache_point(block, p))
    return out


def _message(item: Any, p: str) -> dict[str, Any]:
    message = need_dict(item, p)
    role = need_str(message.get("role"), f"{p}.role")
    if role not in ("user", "assistant"):
        raise bad_type(f"{p}.role", "'user' or 'assistant'")
    content = message.get("content")
    if isinstance(content, str):
        return {"role": role, "content": [{"text": content}] if content else []}
    blocks: list[dict[str, Any]] = []
    for j, raw in enumerate(need_list(content, f"{p}.content")):
        bp = f"{p}.content[{j}]"
        block = need_dict(raw, bp)
        blocks.extend(_block(block, bp))
        blocks.extend(_cache_point(block, bp))
    return {"role": role, "content": blocks}


def _block(block: dict[str, Any], p: str) -> list[dict[str, Any]]:
    kind = need_str(block.get("type"), f"{p}.type")
    if kind == "text":
        text = need_str(block.get("text"), f"{p}.text")
        return [{"text": text}] if text else []
    if kind == "image":
        return [{"image": _image(block, p)}]
    if kind == "document":
        return [{"document": _document(block, p)}]
    if kind == "tool_use":
        return [{"toolUse": {"toolUseId": need_str(block.get("id"), f"{p}.id"),
                             "name": need_str(block.get("name"), f"{p}.name"),
                             "input": need_dict(block.get("input", {}), f"{p}.input")}}]
    if kind == "tool_result":
        return [{"toolResult": _tool_result(block, p)}]
    if kind == "thinking":
        text = need_str(block.get("thinking"), f"{p}.thinking")
        reasoning: dict[str, Any] = {"text": text}
        signature = opt_str(block.get("signature"), f"{p}.signature")
        if signature:
            reasoning["signature"] = signature
        return [{"reasoningContent": {"reasoningText": reasoning}}]
    if kind == "redacted_thinking":
        data = need_str(block.get("data"), f"{p}.data")
        return [{"reasoningContent": {"redactedContent": data}}]
    raise unsupported(f"{p}.type", f"{kind} blocks cannot be sent to Bedrock")


def _source(block: dict[str, Any], p: str) -> dict[str, Any]:
    source = need_dict(block.get("source"), f"{p}.source")
    kind = need_str(source.get("type"), f"{p}.source.type")
    if kind not in ("base64", "text"):
        raise unsupported(f"{p}.source.type", "Bedrock takes the bytes: send base64 data")
    return source


def _image(block: dict[str, Any], p: str) -> dict[str, Any]:
    source = _source(block, p)
    media = need_str(source.get("media_type"), f"{p}.source.media_type")
    image_format = IMAGE_FORMATS.get(media.lower())
    if source["type"] != "base64" or image_format is None:
        raise unsupported(f"{p}.source", "images are png, jpeg, gif or webp, base64")
    return {"format": image_format,
            "source": {"bytes": need_str(source.get("data"), f"{p}.source.data")}}


def _document(block: dict[str, Any], p: str) -> dict[str, Any]:
    source = _source(block, p)
    title = opt_str(block.get("title"), f"{p}.title") or ""
    name = " ".join(_NAME_CHARS.sub("-", title).split())[:200] or "document"
    if source["type"] == "text":
        return {"format": "txt", "name": name,
                "source": {"text": need_str(source.get("data"), f"{p}.source.data")}}
    media = need_str(source.get("media_type"), f"{p}.source.media_type")
    document_format = DOCUMENT_FORMATS.get(media.lower())
    if document_format is None:
        raise unsupported(f"{p}.source.media_type", f"Bedrock reads no {media} documents")
    return {"format": document_format, "name": name,
            "source": {"bytes": need_str(source.get("data"), f"{p}.source.data")}}


def _tool_result(block: dict[str, Any], p: str) -> dict[str, Any]:
    content = block.get("content", "")
    if isinstance(content, str):
        parts: list[dict[str, Any]] = [{"text": content}]
    else:
        parts = []
        for k, raw in enumerate(need_list(content, f"{p}.content")):
            part = need_dict(raw, f"{p}.content[{k}]")
            kind = part.get("type")
            if kind not in ("text", "image", "document"):
                raise unsupported(f"{p}.content[{k}].type", "tool results hold text, images "
                                  "and documents")
            parts.extend(_block(part, f"{p}.content[{k}]") or [{"text": ""}])
    result: dict[str, Any] = {"toolUseId": need_str(block.get("tool_use_id"),
                                                    f"{p}.tool_use_id"), "content": parts}
    if block.get("is_error") is not None and need_bool(block["is_error"], f"{p}.is_error"):
        result["status"] = "error"
    return result


def _tool_config(body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    tools: list[dict[str, Any]] = []
    for i, raw in enumerate(need_list(body.get("tools") or [], "tools")):
        p = f"tools[{i}]"
        tool = need_dict(raw, p)
        if tool.get("type") not in (None, "custom"):
            raise unsupported(f"{p}.type", "Bedrock runs no server tools")
        spec: dict[str, Any] = {"name": need_str(tool.get("name"), f"{p}.name"),
                                "inputSchema": {"json": need_dict(
                                    tool.get("input_schema", {"type": "object"}),
                                    f"{p}.input_schema")}}
        description = opt_str(tool.get("description"), f"{p}.description")
        if description:
            spec["description"] = description
        tools.append({"toolSpec": spec})
        tools.extend(_cache_point(tool, p))
    if not tools:
        return None
    choice = need_dict(body.get("tool_choice") or {"type": "auto"}, "tool_choice")
    kind = need_str(choice.get("type"), "tool_choice.type")
    if kind == "none":  # Converse has no "none": leave the tools out when it can
        used = any("toolUse" in block or "toolResult" in block
                   for message in messages for block in message["content"])
        return {"tools": tools} if used else None
    if kind == "tool":
        return {"tools": tools, "toolChoice": {"tool": {"name": need_str(
            choice.get("name"), "tool_choice.name")}}}
    if kind not in _TOOL_CHOICES:
        raise bad_type("tool_choice.type", "'auto', 'any', 'tool' or 'none'")
    return {"tools": tools, "toolChoice": {_TOOL_CHOICES[kind]: {}}}


# --- Converse answer -> Anthropic message ----------------------------------------------------

def converse_usage(usage: Any) -> dict[str, Any]:
    """Converse TokenUsage -> Anthropic usage (cache reads and writes apart, as both keep
    them)."""
    usage = usage if isinstance(usage, dict) else {}
    return {"input_tokens": usage.get("inputTokens", 0),
            "output_tokens": usage.get("outputTokens", 0),
            "cache_read_input_tokens": usage.get("cacheReadInputTokens", 0),
            "cache_creation_input_tokens": usage.get("cacheWriteInputTokens", 0)}


def stop_reason(value: Any) -> str:
    return STOP_REASONS.get(value, "end_turn") if isinstance(value, str) else "end_turn"


def message_id() -> str:
    """Converse answers carry no id: an Anthropic-style one of our own."""
    return f"msg_bdrk_{uuid.uuid4().hex}"


def converse_to_anthropic(data: Any, *, model: str) -> dict[str, Any]:
    try:
        return _converse_to_anthropic(data, model)
    except InvalidRequest as exc:
        raise upstream_invalid(exc) from exc


def _converse_to_anthropic(data: Any, model: str) -> dict[str, Any]:
    data = need_dict(data, "response")
    output = need_dict(data.get("output"), "output")
    message = need_dict(output.get("message"), "output.message")
    blocks = []
    for i, raw in enumerate(need_list(message.get("content"), "output.message.content")):
        block = _answer_block(need_dict(raw, f"content[{i}]"), f"content[{i}]")
        if block is not None:
            blocks.append(block)
    return {"id": message_id(), "type": "message", "role": "assistant", "model": model,
            "content": blocks, "stop_reason": stop_reason(data.get("stopReason")),
            "stop_sequence": None, "usage": converse_usage(data.get("usage"))}


def _answer_block(block: dict[str, Any], p: str) -> dict[str, Any] | None:
    if "text" in block:
        return {"type": "text", "text": need_str(block["text"], f"{p}.text")}
    if "toolUse" in block:
        use = need_dict(block["toolUse"], f"{p}.toolUse")
        return {"type": "tool_use", "id": need_str(use.get("toolUseId"), f"{p}.toolUseId"),
                "name": need_str(use.get("name"), f"{p}.name"),
                "input": need_dict(use.get("input", {}), f"{p}.input")}
    if "reasoningContent" in block:
        reasoning = need_dict(block["reasoningContent"], f"{p}.reasoningContent")
        if "redactedContent" in reasoning:
            return {"type": "redacted_thinking",
                    "data": need_str(reasoning["redactedContent"], f"{p}.redactedContent")}
        text = need_dict(reasoning.get("reasoningText"), f"{p}.reasoningText")
        return {"type": "thinking", "thinking": need_str(text.get("text"), f"{p}.text"),
                "signature": opt_str(text.get("signature"), f"{p}.signature") or ""}
    return None  # citations, guard content, images: nothing a chat client reads
