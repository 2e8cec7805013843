"""OpenAI Chat Completions <-> Anthropic Messages: requests, responses, usage (pure, no I/O).

The two stream translators live in `anthropic_stream.py`; the Anthropic-client direction
(`anthropic_to_openai_request`, `openai_to_anthropic_response`) in `anthropic_client.py`.
Every function here raises only
`ProxyError`s: `InvalidRequest` (400, `param` naming the field) for a client body of the
wrong shape, `UpstreamError` (502, code `upstream_invalid_response`) for an upstream answer
of the wrong shape.

OpenAI request -> Anthropic request (`openai_to_anthropic_request`)

| OpenAI | Anthropic |
|---|---|
| system / developer messages (anywhere) | top-level `system` text blocks, in order |
| user parts text, image_url, file | text; image (data: URL -> base64, http(s) -> url); document |
| assistant `thinking_blocks` (signed) | thinking / redacted_thinking blocks, first |
| assistant content, tool_calls | text block, tool_use blocks (`arguments` parsed) |
| consecutive role "tool" messages | one user message of tool_result blocks |
| `cache_control` on a part, a tool, a message | kept (a message's goes on its last block) |
| tools[].function {name, description, parameters} | tools[] {name, description, input_schema} |
| tool_choice auto, none, required, {function} | {type: auto}, none, any, {type: tool, name} |
| parallel_tool_calls: false | tool_choice.disable_parallel_tool_use: true |
| stop (string or list) | stop_sequences |
| max_completion_tokens, else max_tokens | max_tokens (else `default_max_tokens`) |
| temperature (clamped to 0..1), top_p, top_k, stream | the same |
| user (else safety_identifier) | metadata.user_id |
| reasoning_effort (EFFORT_BUDGETS), or `thinking` | thinking {type: enabled, budget_tokens} |
| response_format json_schema, json_object | a response tool or output_config (structured.py) |

reasoning_effort with no max tokens given: max_tokens = budget + default_max_tokens. With an
explicit max_completion_tokens / max_tokens (which in OpenAI's API includes reasoning) the
budget shrinks to max - 1 and the limit is kept; below 1025 that is refused. Either way
max_tokens is then lowered to the gateway's reserved cap (`max_output`), and a budget that
no longer fits below it shrinks to max_tokens - 1.

Dropped or refused (OpenAI -> Anthropic)

| field | rule |
|---|---|
| n > 1 | refused (unsupported_parameter): one choice only |
| logprobs: true, top_logprobs | refused: Anthropic has no log probabilities |
| functions, function_call | refused: deprecated, use tools and tool_choice |
| audio, modalities "audio", input_audio parts | refused: no audio |
| web_search_options, non-function tools | refused |
| tool_choice allowed_tools / custom | refused |
| file parts by file_id | refused: needs OpenAI's Files API; send file_data |
| tool_choice required or {function}, no tools | refused (invalid_request) |
| max tokens <= 1024 with reasoning_effort | refused (invalid_request): no room to think |
| presence_penalty, frequency_penalty, seed | dropped: no counterpart |
| logit_bias, service_tier, store, metadata | dropped: no counterpart |
| prediction, prompt_cache_key, verbosity | dropped: no counterpart |
| stream_options | dropped: Anthropic streams always report usage |
| function `strict`, image `detail`, message `name` | dropped: no counterpart |
| temperature, top_p, top_k while thinking | dropped: Anthropic rejects them with thinking |
| reasoning_content, no signed thinking_blocks | dropped: Anthropic rejects unsigned thinking |
| empty assistant messages, empty text parts | dropped: Anthropic rejects empty blocks |
| unknown top-level fields | dropped |

Anthropic request -> OpenAI request (`anthropic_to_openai_request`)

| Anthropic | OpenAI |
|---|---|
| system (string, or text blocks joined by "\n") | first message, role system |
| text, image (base64 -> data: URL, or url) | content parts (a lone text block -> a string) |
| document (base64 -> file part, text -> text) | content parts |
| tool_use blocks | assistant tool_calls (`input` as a JSON string) |
| tool_result blocks | role "tool" messages, before the user's other blocks |
| tools {name, description, input_schema} | {type: function, function: {.., parameters}} |
| tool_choice auto, any, tool, none | auto, required, {type: function}, none |
| disable_parallel_tool_use: true | parallel_tool_calls: false |
| stop_sequences, temperature, top_p | stop, temperature, top_p |
| metadata.user_id | user |
| max_tokens (required) | max_tokens (max_completion_tokens when thinking) |
| thinking enabled, budget < 4096, < 16384, more | reasoning_effort low, medium, high |
| stream | stream + stream_options {include_usage: true} |
| output_config.format (or output_format) | response_format json_schema (json_format.py) |

Dropped or refused (Anthropic -> OpenAI)

| field | rule |
|---|---|
| top_k, cache_control, service_tier | dropped: no counterpart |
| thinking of type adaptive or disabled | dropped: the upstream's default applies |
| thinking, redacted_thinking history blocks | dropped: no input field for them |
| tool_result `is_error` | dropped (the content is kept) |
| images inside a tool_result | moved to a user message after the tool messages |
| unknown top-level fields | dropped |
| server tools (tool `type` not custom) | refused (unsupported_parameter) |
| mcp_servers, container | refused |
| file-id / url documents, other block types | refused |

Responses: Anthropic stop_reason end_turn, stop_sequence, pause_turn -> "stop"; max_tokens,
model_context_window_exceeded -> "length"; tool_use -> "tool_calls"; refusal ->
"content_filter". Back: stop -> end_turn, length -> max_tokens, tool_calls / function_call ->
tool_use, content_filter -> refusal. Server-tool and citation blocks of an Anthropic answer
are dropped. Anthropic's input_tokens exclude the cache: prompt_tokens = input_tokens +
cache_read_input_tokens + cache_creation_input_tokens, and back the other way.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.output_cap import EFFORT_BUDGETS, cap_anthropic_body
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
from anyrouter_proxy.providers.structured import (
    DEFAULT_STRUCTURED_MODE,
    anthropic_structured_output,
)
from anyrouter_proxy.providers.structured_answer import fold_response_tool
from anyrouter_proxy.types import Usage

MIN_THINKING_BUDGET = 1024
# thinking.budget_tokens -> reasoning_effort: below 4096 low, below 16384 medium, else high.
BUDGET_EFFORTS: tuple[tuple[int, str], ...] = ((4096, "low"), (16384, "medium"))

FINISH_REASONS: dict[str, str] = {
    "end_turn": "stop", "stop_sequence": "stop", "pause_turn": "stop",
    "max_tokens": "length", "model_context_window_exceeded": "length",
    "tool_use": "tool_calls", "refusal": "content_filter",
}
STOP_REASONS: dict[str, str] = {
    "stop": "end_turn", "length": "max_tokens", "tool_calls": "tool_use",
    "function_call": "tool_use", "content_filter": "refusal",
}
_DATA_URL = re.compile(r"^data:([^;,]+)(?:;[^;,]*)*;base64,(.*)$", re.DOTALL)
_TOOL_CHOICES = {"auto": "auto", "none": "none", "required": "any"}


# --- usage ------------------------------------------------------------------------------------

MAX_TOKEN_COUNT = 10**12  # no answer is larger; beyond it a count is garbage


def _count(value: Any) -> int:
    if value.__class__ is int:  # the usual case, first (six calls per answer)
        return value if 0 < value <= MAX_TOKEN_COUNT else (MAX_TOKEN_COUNT if value > 0 else 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0
    return min(int(value), MAX_TOKEN_COUNT) if math.isfinite(value) and value > 0 else 0


def anthropic_usage(usage: dict[str, Any]) -> Usage:
    """Anthropic `usage` -> Usage; prompt_tokens counts cache reads and writes too."""
    if not isinstance(usage, dict):
        return Usage()
    read = _count(usage.get("cache_read_input_tokens"))
    write = _count(usage.get("cache_creation_input_tokens"))
    details = usage.get("output_tokens_details")
    thinking = _count(details.get("thinking_tokens")) if isinstance(details, dict) else 0
    return Usage(prompt_tokens=_count(usage.get("input_tokens")) + read + write,
                 completion_tokens=_count(usage.get("output_tokens")),
                 cached_tokens=read, reasoning_tokens=thinking, cache_write_tokens=write,
                 web_search_requests=web_searches(usage))


def web_searches(usage: dict[str, Any]) -> int:
    """`usage.server_tool_use.web_search_requests`: Anthropic's count of billed searches
    (OpenAI-compatible upstreams such as OpenRouter report it in the same place)."""
    tools = usage.get("server_tool_use")
    return _count(tools.get("web_search_requests")) if isinstance(tools, dict) else 0


def openai_usage(usage: dict[str, Any] | None) -> Usage:
    """OpenAI `usage` -> Usage (prompt/completion details included); None -> zeros."""
    if not isinstance(usage, dict):
        return Usage()
    prompt = usage.get("prompt_tokens_details")
    prompt = prompt if isinstance(prompt, dict) else {}
    completion = usage.get("completion_tokens_details")
    completion = completion if isinstance(completion, dict) else {}
    write = _count(prompt.get("cache_write_tokens")) or _count(
        usage.get("cache_creation_input_tokens"))
    return Usage(prompt_tokens=_count(usage.get("prompt_tokens")),
                 completion_tokens=_count(usage.get("completion_tokens")),
                 cached_tokens=_count(prompt.get("cached_tokens")),
                 reasoning_tokens=_count(completion.get("reasoning_tokens")),
                 cache_write_tokens=write, web_search_requests=web_searches(usage))


def openai_usage_dict(usage: Usage) -> dict[str, Any]:
    prompt_details: dict[str, Any] = {"cached_tokens": usage.cached_tokens}
    if usage.cache_write_tokens:
        prompt_details["cache_write_tokens"] = usage.cache_write_tokens
    return {"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.prompt_tokens + usage.completion_tokens,
            "prompt_tokens_details": prompt_details,
            "completion_tokens_details": {"reasoning_tokens": usage.reasoning_tokens}}


def anthropic_usage_dict(usage: Usage) -> dict[str, Any]:
    fresh = usage.prompt_tokens - usage.cached_tokens - usage.cache_write_tokens
    return {"input_tokens": max(fresh, 0), "output_tokens": usage.completion_tokens,
            "cache_read_input_tokens": usage.cached_tokens,
            "cache_creation_input_tokens": usage.cache_write_tokens}


# --- OpenAI request -> Anthropic request -----------------------------------------------------

@dataclass(frozen=True, slots=True)
class AnthropicRequest:
    """An OpenAI chat body translated: the Anthropic body, and how to read the answer."""

    body: dict[str, Any]
    # The tool carrying a structured answer (response_format): its input is the answer's
    # content (`anthropic_to_openai_response` / `AnthropicToOpenAIStream` response_tool).
    response_tool: str | None = None


def openai_to_anthropic_request(
    body: dict[str, Any], *, upstream_model: str, default_max_tokens: int,
    max_output: int | None = None, structured_output: str = DEFAULT_STRUCTURED_MODE,
) -> dict[str, Any]:
    """The Anthropic body of `body`; see `translate_openai_request`."""
    return translate_openai_request(
        body, upstream_model=upstream_model, default_max_tokens=default_max_tokens,
        max_output=max_output, structured_output=structured_output).body


def translate_openai_request(
    body: dict[str, Any], *, upstream_model: str, default_max_tokens: int,
    max_output: int | None = None, structured_output: str = DEFAULT_STRUCTURED_MODE,
) -> AnthropicRequest:
    """`max_output`: the most the gateway reserved for; max_tokens (and a thinking budget
    that no longer fits) is lowered to it. `structured_output`: how a response_format is
    served, "tool" or "native" (structured.py)."""
    out = _anthropic_body(need_body(body), upstream_model, default_max_tokens, max_output)
    structured = anthropic_structured_output(body.get("response_format"), out,
                                             mode=structured_output)
    out.update(structured.fields)
    return AnthropicRequest(out, structured.response_tool)


def _anthropic_body(body: dict[str, Any], upstream_model: str, default_max_tokens: int,
                    max_output: int | None) -> dict[str, Any]:
    _refuse_openai_params(body)
    system, messages = _openai_messages(need_list(body.get("messages"), "messages"))
    if not messages:
        raise InvalidRequest("'messages' needs at least one non-system message", param="messages")
    out: dict[str, Any] = {"model": upstream_model, "messages": messages}
    if system:
        out["system"] = system
    max_param = "max_completion_tokens" if body.get("max_completion_tokens") is not None \
        else "max_tokens"
    explicit = body.get(max_param)
    max_tokens = None if explicit is None else need_int(explicit, max_param, minimum=1)
    thinking, out["max_tokens"] = _thinking(body, max_tokens, max_param, default_max_tokens)
    if thinking is not None:
        out["thinking"] = thinking
    if max_output is not None:
        cap_anthropic_body(out, max_output)
    _copy_sampling(body, out, thinking_on=thinking is not None)
    tools = None if body.get("tools") is None else _anthropic_tools(body["tools"])
    if tools:
        out["tools"] = tools
    choice = _anthropic_tool_choice(body, has_tools=bool(tools))
    if choice is not None:
        out["tool_choice"] = choice
    user = opt_str(body.get("user"), "user") or opt_str(
        body.get("safety_identifier"), "safety_identifier")
    if user:
        out["metadata"] = {"user_id": user}
    if body.get("stream") is not None:
        out["stream"] = need_bool(body["stream"], "stream")
    return out


def _refuse_openai_params(body: dict[str, Any]) -> None:
    if body.get("n") is not None and need_int(body["n"], "n", minimum=1) != 1:
        raise unsupported("n", "Anthropic returns one choice")
    if body.get("logprobs") is not None and need_bool(body["logprobs"], "logprobs"):
        raise unsupported("logprobs", "Anthropic has no log probabilities")
    if body.get("top_logprobs") is not None:
        raise unsupported("top_logprobs", "Anthropic has no log probabilities")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise unsupported(name, "deprecated; use tools and tool_choice")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise unsupported("audio" if body.get("audio") is not None else "modalities",
                           "Anthropic has no audio output")
    if body.get("web_search_options") is not None:
        raise unsupported("web_search_options", "use an OpenAI route for web search")


def _openai_messages(raw: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    tool_turn: list[dict[str, Any]] | None = None  # the user message gathering tool results
    for i, item in enumerate(raw):
        p = f"messages[{i}]"
        msg = need_dict(item, p)
        role = need_str(msg.get("role"), f"{p}.role")
        if role == "tool":
            if tool_turn is None:
                tool_turn = []
                out.append({"role": "user", "content": tool_turn})
            tool_turn.append(_tool_result(msg, p))
            continue
        tool_turn = None
        if role in ("system", "developer"):
            system.extend(_system_blocks(msg, p))
        elif role == "user":
            out.append({"role": "user", "content": _user_content(msg, p)})
        elif role == "assistant":
            blocks = _assistant_blocks(msg, p)
            if blocks:
                out.append({"role": "assistant", "content": blocks})
        else:
            raise InvalidRequest(f"unknown role {role!r}", param=f"{p}.role")
    return system, out


def _cache_control(src: dict[str, Any], block: dict[str, Any], p: str) -> dict[str, Any]:
    if src.get("cache_control") is not None:
        block["cache_control"] = need_dict(src["cache_control"], f"{p}.cache_control")
    return block


def _text_parts(content: Any, p: str, *, allow_images: bool) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks = []
    for j, item in enumerate(need_list(content, f"{p}.content")):
        blocks.append(_user_part(item, f"{p}.content[{j}]", allow_images=allow_images))
    return [b for b in blocks if b.get("type") != "text" or b["text"]]


def _system_blocks(msg: dict[str, Any], p: str) -> list[dict[str, Any]]:
    blocks = _text_parts(msg.get("content"), p, allow_images=False)
    if blocks:
        _cache_control(msg, blocks[-1], p)
    return blocks


def _user_content(msg: dict[str, Any], p: str) -> str | list[dict[str, Any]]:
    content = msg.get("content")
    if isinstance(content, str) and msg.get("cache_control") is None:
        return content
    if not isinstance(content, str | list):
        raise bad_type(f"{p}.content", "a string or a list")
    blocks = _text_parts(content, p, allow_images=True)
    if blocks:
        _cache_control(msg, blocks[-1], p)
    return blocks


def _user_part(item: Any, p: str, *, allow_images: bool) -> dict[str, Any]:
    part = need_dict(item, p)
    kind = need_str(part.get("type"), f"{p}.type")
    if kind == "text":
        block = {"type": "text", "text": need_str(part.get("text"), f"{p}.text")}
    elif kind == "image_url" and allow_images:
        block = _image_block(part.get("image_url"), f"{p}.image_url")
    elif kind == "file" and allow_images:
        block = _document_block(need_dict(part.get("file"), f"{p}.file"), f"{p}.file")
    elif kind in ("input_audio", "image_url", "file"):
        raise unsupported(f"{p}.type", f"{kind} parts are not accepted here")
    else:
        raise InvalidRequest(f"unknown content part type {kind!r}", param=f"{p}.type")
    return _cache_control(part, block, p)


def _data_url(url: str, p: str) -> tuple[str, str]:
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("a data: URL must be base64-encoded (data:TYPE;base64,...)", param=p)
    return match.group(1), match.group(2)


def _image_block(value: Any, p: str) -> dict[str, Any]:
    url = need_str(value.get("url"), f"{p}.url") if isinstance(value, dict) \
        else need_str(value, p)
    if url.startswith("data:"):
        media_type, data = _data_url(url, p)
        source = {"type": "base64", "media_type": media_type, "data": data}
    elif url.startswith(("http://", "https://")):
        source = {"type": "url", "url": url}
    else:
        raise InvalidRequest("an image URL must be an http(s) or data: URL", param=p)
    return {"type": "image", "source": source}


def _document_block(file: dict[str, Any], p: str) -> dict[str, Any]:
    if file.get("file_data") is None:
        raise unsupported(f"{p}.file_id", "send the file inline as file_data")
    media_type, data = _data_url(need_str(file["file_data"], f"{p}.file_data"), f"{p}.file_data")
    block: dict[str, Any] = {"type": "document",
                             "source": {"type": "base64", "media_type": media_type, "data": data}}
    title = opt_str(file.get("filename"), f"{p}.filename")
    if title:
        block["title"] = title
    return block


def _assistant_blocks(msg: dict[str, Any], p: str) -> list[dict[str, Any]]:
    blocks = _thinking_blocks(msg.get("thinking_blocks"), f"{p}.thinking_blocks")
    content = msg.get("content")
    if isinstance(content, list):
        for j, item in enumerate(content):
            part = need_dict(item, f"{p}.content[{j}]")
            kind = need_str(part.get("type"), f"{p}.content[{j}].type")
            if kind not in ("text", "refusal"):
                raise unsupported(f"{p}.content[{j}].type", "assistant parts are text")
            text = need_str(part.get(kind), f"{p}.content[{j}].{kind}")
            if text:
                block = {"type": "text", "text": text}
                blocks.append(_cache_control(part, block, f"{p}.content[{j}]"))
    elif content is not None and need_str(content, f"{p}.content"):
        blocks.append({"type": "text", "text": content})
    if msg.get("tool_calls") is not None:
        for j, call in enumerate(need_list(msg["tool_calls"], f"{p}.tool_calls")):
            blocks.append(tool_use_block(call, f"{p}.tool_calls[{j}]"))
    if blocks:
        _cache_control(msg, blocks[-1], p)
    return blocks


def _thinking_blocks(value: Any, p: str) -> list[dict[str, Any]]:
    """Signed thinking and redacted_thinking blocks, as LiteLLM returns them; others dropped."""
    if value is None:
        return []
    blocks = []
    for j, item in enumerate(need_list(value, p)):
        block = need_dict(item, f"{p}[{j}]")
        kind = block.get("type")
        if kind == "redacted_thinking":
            data = need_str(block.get("data"), f"{p}[{j}].data")
            blocks.append({"type": "redacted_thinking", "data": data})
        elif kind == "thinking":
            text = need_str(block.get("thinking"), f"{p}[{j}].thinking")
            signature = opt_str(block.get("signature"), f"{p}[{j}].signature")
            if signature:
                blocks.append({"type": "thinking", "thinking": text, "signature": signature})
        else:
            raise bad_type(f"{p}[{j}].type", "'thinking' or 'redacted_thinking'")
    return blocks


def tool_use_block(item: Any, p: str) -> dict[str, Any]:
    """An OpenAI tool call -> a tool_use block (`arguments` parsed; empty means {})."""
    call = need_dict(item, p)
    if call.get("type", "function") != "function":
        raise unsupported(f"{p}.type", "only function tool calls")
    function = need_dict(call.get("function"), f"{p}.function")
    arguments = opt_str(function.get("arguments"), f"{p}.function.arguments") or ""
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except (ValueError, RecursionError):  # deeply nested arguments too
        raise bad_type(f"{p}.function.arguments", "a JSON object") from None
    return {"type": "tool_use", "id": need_str(call.get("id"), f"{p}.id"),
            "name": need_str(function.get("name"), f"{p}.function.name"),
            "input": need_dict(parsed, f"{p}.function.arguments")}


def _tool_result(msg: dict[str, Any], p: str) -> dict[str, Any]:
    content = msg.get("content")
    if not isinstance(content, str | list):
        raise bad_type(f"{p}.content", "a string or a list")
    block: dict[str, Any] = {
        "type": "tool_result",
        "tool_use_id": need_str(msg.get("tool_call_id"), f"{p}.tool_call_id"),
        "content": content if isinstance(content, str)
        else _text_parts(content, p, allow_images=True),
    }
    return _cache_control(msg, block, p)


def _anthropic_tools(value: Any) -> list[dict[str, Any]]:
    tools = []
    for i, item in enumerate(need_list(value, "tools")):
        p = f"tools[{i}]"
        tool = need_dict(item, p)
        if tool.get("type", "function") != "function":
            raise unsupported(f"{p}.type", "only function tools")
        function = need_dict(tool.get("function"), f"{p}.function")
        schema = function.get("parameters")
        out: dict[str, Any] = {
            "name": need_str(function.get("name"), f"{p}.function.name"),
            "input_schema": {"type": "object", "properties": {}} if schema is None
            else need_dict(schema, f"{p}.function.parameters"),
        }
        description = opt_str(function.get("description"), f"{p}.function.description")
        if description:
            out["description"] = description
        tools.append(_cache_control(tool, out, p))
    return tools


def _anthropic_tool_choice(body: dict[str, Any], *, has_tools: bool) -> dict[str, Any] | None:
    raw = body.get("tool_choice")
    parallel = body.get("parallel_tool_calls")
    no_parallel = parallel is not None and not need_bool(parallel, "parallel_tool_calls")
    if raw is None:
        choice: dict[str, Any] = {"type": "auto"}
    elif isinstance(raw, str):
        if raw not in _TOOL_CHOICES:
            raise bad_type("tool_choice", "'auto', 'none', 'required' or an object")
        choice = {"type": _TOOL_CHOICES[raw]}
    else:
        named = need_dict(raw, "tool_choice")
        if named.get("type") != "function":
            raise unsupported("tool_choice.type", "only {type: function} tool choices")
        function = need_dict(named.get("function"), "tool_choice.function")
        choice = {"type": "tool", "name": need_str(function.get("name"),
                                                   "tool_choice.function.name")}
    if not has_tools:
        if choice["type"] in ("any", "tool"):
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    if no_parallel and choice["type"] != "none":
        choice["disable_parallel_tool_use"] = True
    elif raw is None:
        return None
    return choice


def _thinking(
    body: dict[str, Any], max_tokens: int | None, max_param: str, default_max_tokens: int,
) -> tuple[dict[str, Any] | None, int]:
    """(thinking, max_tokens): an explicit limit shrinks the budget, a default one grows."""
    if body.get("thinking") is not None:  # Anthropic's own field, as LiteLLM accepts it
        thinking = need_dict(body["thinking"], "thinking")
        if need_str(thinking.get("type"), "thinking.type") == "disabled":
            return None, max_tokens or default_max_tokens
        budget = thinking.get("budget_tokens")
        grown = budget + default_max_tokens if isinstance(budget, int) else default_max_tokens
        return thinking, max_tokens or grown
    effort = opt_str(body.get("reasoning_effort"), "reasoning_effort")
    if effort is None or effort == "none":
        return None, max_tokens or default_max_tokens
    if effort not in EFFORT_BUDGETS:
        raise bad_type("reasoning_effort", "one of none, " + ", ".join(EFFORT_BUDGETS))
    budget = EFFORT_BUDGETS[effort]
    if max_tokens is None:
        return {"type": "enabled", "budget_tokens": budget}, budget + default_max_tokens
    budget = min(budget, max_tokens - 1)
    if budget < MIN_THINKING_BUDGET:
        raise InvalidRequest(f"'{max_param}' must be more than {MIN_THINKING_BUDGET} when "
                             "reasoning_effort is set", param=max_param)
    return {"type": "enabled", "budget_tokens": budget}, max_tokens


def _copy_sampling(body: dict[str, Any], out: dict[str, Any], *, thinking_on: bool) -> None:
    if body.get("stop") is not None:
        stop = body["stop"]
        stops = [stop] if isinstance(stop, str) else need_list(stop, "stop")
        out["stop_sequences"] = [need_str(s, f"stop[{i}]") for i, s in enumerate(stops)]
        if not out["stop_sequences"]:
            del out["stop_sequences"]
    for name in ("temperature", "top_p"):
        if body.get(name) is not None:
            value = need_number(body[name], name)
            if not thinking_on:
                out[name] = min(max(value, 0.0), 1.0)
    if body.get("top_k") is not None:
        top_k = need_int(body["top_k"], "top_k", minimum=1)
        if not thinking_on:
            out["top_k"] = top_k


# --- Anthropic response -> OpenAI response ---------------------------------------------------

def anthropic_to_openai_response(
    resp: dict[str, Any], *, gen_id: str, model: str, created: int,
    response_tool: str | None = None,
) -> dict[str, Any]:
    """`response_tool`: the tool whose input is the answer (structured_answer.py)."""
    try:
        out = _anthropic_to_openai_response(resp, gen_id, model, created)
    except InvalidRequest as exc:
        raise upstream_invalid(exc) from exc
    return out if response_tool is None else fold_response_tool(out, response_tool)


def _anthropic_to_openai_response(
    resp: Any, gen_id: str, model: str, created: int,
) -> dict[str, Any]:
    resp = need_dict(resp, "response")
    texts: list[str] = []
    thinking: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    for i, item in enumerate(need_list(resp.get("content"), "content")):
        block = need_dict(item, f"content[{i}]")
        kind = block.get("type")
        if kind == "text":
            texts.append(need_str(block.get("text"), f"content[{i}].text"))
        elif kind == "thinking":
            thinking.append({"type": "thinking",
                             "thinking": need_str(block.get("thinking"), f"content[{i}].thinking"),
                             "signature": opt_str(block.get("signature"),
                                                   f"content[{i}].signature") or ""})
        elif kind == "redacted_thinking":
            data = need_str(block.get("data"), f"content[{i}].data")
            thinking.append({"type": "redacted_thinking", "data": data})
        elif kind == "tool_use":
            calls.append(openai_tool_call(block, f"content[{i}]"))
    message: dict[str, Any] = {"role": "assistant",
                               "content": "".join(texts) if texts or not calls else None,
                               "refusal": None}
    if calls:
        message["tool_calls"] = calls
    if thinking:
        message["thinking_blocks"] = thinking
    if any(b["type"] == "thinking" for b in thinking):
        message["reasoning_content"] = "".join(
            b["thinking"] for b in thinking if b["type"] == "thinking")
    stop = opt_str(resp.get("stop_reason"), "stop_reason")
    usage = anthropic_usage(resp.get("usage") or {})
    return {"id": gen_id, "object": "chat.completion", "created": created, "model": model,
            "choices": [{"index": 0, "message": message, "logprobs": None,
                         "finish_reason": FINISH_REASONS.get(stop or "", "stop")}],
            "usage": openai_usage_dict(usage)}


def openai_tool_call(block: dict[str, Any], p: str) -> dict[str, Any]:
    arguments = json.dumps(need_dict(block.get("input", {}), f"{p}.input"), ensure_ascii=False)
    return {"id": need_str(block.get("id"), f"{p}.id"), "type": "function",
            "function": {"name": need_str(block.get("name"), f"{p}.name"),
                         "arguments": arguments}}
