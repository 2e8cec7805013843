"""A Responses API request as a Chat Completions request (pure, no I/O): what any
provider that serves chat/completions gets for POST /responses.

| Responses | Chat Completions |
|---|---|
| instructions | a first system message |
| message items user / system / developer | user / system / system messages |
| input_text, input_image (image_url), input_file (file_data) parts | text, image_url, file parts |
| message items assistant (output_text, refusal parts) | assistant content |
| function_call items | assistant tool_calls (`call_id` -> id) |
| function_call_output items | role "tool" messages |
| reasoning items the proxy wrote for Anthropic | assistant thinking_blocks (Anthropic only) |
| tools of type function | tools {type: function, function: {name, ..., parameters}} |
| tool_choice auto, none, required, {type: function, name}, allowed_tools | chat's shape |
| parallel_tool_calls, temperature, top_p, user, safety_identifier, | the same |
| prompt_cache_key, service_tier |  |
| text.format json_object / json_schema {name, schema, strict, description} | response_format |
| text.verbosity | verbosity |
| reasoning.effort | reasoning_effort |
| max_output_tokens | max_completion_tokens with reasoning, else max_tokens |
| stream | stream |

Consecutive assistant-side items (reasoning, assistant messages, function calls) make one
assistant message. Dropped: reasoning.summary, include, metadata, store, truncation,
top_logprobs, max_tool_calls, and reasoning items no provider but their own can read.
Refused (400 unsupported_parameter): built-in tools (web_search, file_search,
code_interpreter, computer_use, image_generation, mcp, ...) and tool choices naming them,
`prompt` templates, item types that only OpenAI runs, and files or images by `file_id` or
`file_url` (they need OpenAI's Files API): these work on providers with `native_responses`.
Item references never get here: the proxy replaces them with its stored items first.
"""

from __future__ import annotations

from typing import Any

from .responses_output import thinking_block
from .shapes import bad_type, need_dict, need_list, need_str, opt_str, unsupported

NATIVE_ONLY = "runs only on providers with native_responses"
SAMPLING_FIELDS = ("temperature", "top_p", "parallel_tool_calls", "user", "safety_identifier",
                   "prompt_cache_key", "service_tier")
SYSTEM_ROLES = frozenset({"system", "developer"})


def responses_to_chat_request(body: dict[str, Any], items: list[dict[str, Any]], *,
                              signed_thinking: bool) -> dict[str, Any]:
    """`items`: the whole input (input_items of responses_input.py, history included).
    `signed_thinking`: the upstream takes Anthropic thinking blocks back (Anthropic)."""
    if body.get("prompt") is not None:
        raise unsupported("prompt", f"stored prompt templates live at OpenAI: it {NATIVE_ONLY}")
    messages: list[dict[str, Any]] = []
    instructions = opt_str(body.get("instructions"), "instructions")
    if instructions:
        messages.append({"role": "system", "content": instructions})
    messages.extend(_Messages(signed_thinking).build(items))
    out: dict[str, Any] = {"model": body.get("model"), "messages": messages}
    for name in SAMPLING_FIELDS:
        if body.get(name) is not None:
            out[name] = body[name]
    tools = _tools(body.get("tools"))
    if tools:
        out["tools"] = tools
    if body.get("tool_choice") is not None:
        out["tool_choice"] = _tool_choice(body["tool_choice"])
    _text(body.get("text"), out)
    reasoning = body.get("reasoning")
    effort = need_dict(reasoning, "reasoning").get("effort") if reasoning is not None else None
    if effort is not None:
        out["reasoning_effort"] = need_str(effort, "reasoning.effort")
    if body.get("max_output_tokens") is not None:
        reasoning_on = effort is not None and effort != "none"
        out["max_completion_tokens" if reasoning_on else "max_tokens"] = \
            body["max_output_tokens"]
    if body.get("stream") is True:
        out["stream"] = True
    return out


class _Messages:
    """Input items -> chat messages, merging each run of assistant-side items."""

    def __init__(self, signed_thinking: bool) -> None:
        self.signed_thinking = signed_thinking
        self.out: list[dict[str, Any]] = []
        self.assistant: dict[str, Any] | None = None

    def build(self, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for i, item in enumerate(items):
            self._item(item, f"input[{i}]")
        return [m for m in self.out if m["role"] != "assistant" or m.get("content")
                or m.get("tool_calls") or m.get("thinking_blocks")]

    def _turn(self) -> dict[str, Any]:
        if self.assistant is None:
            self.assistant = {"role": "assistant", "content": None}
            self.out.append(self.assistant)
        return self.assistant

    def _item(self, item: dict[str, Any], p: str) -> None:
        kind = item.get("type")
        if kind == "message":
            role = need_str(item.get("role"), f"{p}.role")
            if role == "assistant":
                text = _assistant_text(item.get("content"), p)
                if text:
                    turn = self._turn()
                    turn["content"] = (turn["content"] or "") + text
                return
            if role not in ("user", *SYSTEM_ROLES):
                raise bad_type(f"{p}.role", "'user', 'assistant', 'system' or 'developer'")
            self.assistant = None
            self.out.append({"role": "system" if role in SYSTEM_ROLES else "user",
                             "content": _user_content(item.get("content"), p)})
        elif kind == "function_call":
            self._turn().setdefault("tool_calls", []).append({
                "id": need_str(item.get("call_id"), f"{p}.call_id"), "type": "function",
                "function": {"name": need_str(item.get("name"), f"{p}.name"),
                             "arguments": need_str(item.get("arguments"), f"{p}.arguments")}})
        elif kind == "function_call_output":
            self.assistant = None
            self.out.append({"role": "tool",
                             "tool_call_id": need_str(item.get("call_id"), f"{p}.call_id"),
                             "content": _tool_output(item.get("output"), f"{p}.output")})
        elif kind == "reasoning":
            block = thinking_block(item) if self.signed_thinking else None
            if block is not None:
                self._turn().setdefault("thinking_blocks", []).append(block)
        else:
            raise unsupported(f"{p}.type", f"{str(kind)[:60]!r} items: this item type "
                              f"{NATIVE_ONLY}")


def _user_content(content: Any, p: str) -> str | list[dict[str, Any]]:
    """Parts in chat's shape; text alone as one string (what every upstream reads)."""
    parts = [_user_part(need_dict(raw, f"{p}.content[{j}]"), f"{p}.content[{j}]")
             for j, raw in enumerate(need_list(content, f"{p}.content"))]
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _user_part(part: dict[str, Any], p: str) -> dict[str, Any]:
    kind = part.get("type")
    if kind in ("input_text", "output_text"):
        return {"type": "text", "text": need_str(part.get("text"), f"{p}.text")}
    if kind == "input_image":
        url = part.get("image_url")
        if not isinstance(url, str) or not url:
            raise unsupported(f"{p}.file_id", f"images by file_id need OpenAI's Files API: "
                              f"send image_url (http(s) or data: URL), or it {NATIVE_ONLY}")
        image: dict[str, Any] = {"url": url}
        if isinstance(part.get("detail"), str):
            image["detail"] = part["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file":
        data = part.get("file_data")
        if not isinstance(data, str) or not data:
            raise unsupported(f"{p}.file_id", f"files by file_id or file_url need OpenAI: "
                              f"send file_data, or it {NATIVE_ONLY}")
        file: dict[str, Any] = {"file_data": data}
        if isinstance(part.get("filename"), str):
            file["filename"] = part["filename"]
        return {"type": "file", "file": file}
    raise unsupported(f"{p}.type", f"{str(kind)[:60]!r} content parts")


def _assistant_text(content: Any, p: str) -> str:
    texts = []
    for j, raw in enumerate(need_list(content, f"{p}.content")):
        part = need_dict(raw, f"{p}.content[{j}]")
        kind = part.get("type")
        if kind in ("output_text", "input_text"):
            texts.append(need_str(part.get("text"), f"{p}.content[{j}].text"))
        elif kind == "refusal":
            texts.append(need_str(part.get("refusal"), f"{p}.content[{j}].refusal"))
        else:
            raise unsupported(f"{p}.content[{j}].type", "assistant parts are output_text "
                              "or refusal")
    return "".join(texts)


def _tool_output(output: Any, p: str) -> str | list[dict[str, Any]]:
    if isinstance(output, str):
        return output
    parts = [_user_part(need_dict(raw, f"{p}[{j}]"), f"{p}[{j}]")
             for j, raw in enumerate(need_list(output, p))]
    if all(part["type"] == "text" for part in parts):
        return "\n".join(part["text"] for part in parts)
    return parts


def _tools(value: Any) -> list[dict[str, Any]]:
    tools = []
    for i, raw in enumerate(need_list(value, "tools") if value is not None else []):
        p = f"tools[{i}]"
        tool = need_dict(raw, p)
        kind = tool.get("type")
        if kind != "function":
            raise unsupported(f"{p}.type", f"the tool type {str(kind)[:60]!r} {NATIVE_ONLY}")
        function: dict[str, Any] = {"name": need_str(tool.get("name"), f"{p}.name")}
        for name in ("description", "parameters", "strict"):
            if tool.get(name) is not None:
                function[name] = tool[name]
        tools.append({"type": "function", "function": function})
    return tools


def _tool_choice(value: Any) -> Any:
    if isinstance(value, str):
        if value not in ("auto", "none", "required"):
            raise bad_type("tool_choice", "'auto', 'none', 'required' or an object")
        return value
    choice = need_dict(value, "tool_choice")
    kind = choice.get("type")
    if kind == "function":
        return {"type": "function",
                "function": {"name": need_str(choice.get("name"), "tool_choice.name")}}
    if kind == "allowed_tools":
        named = []
        for j, raw in enumerate(need_list(choice.get("tools"), "tool_choice.tools")):
            tool = need_dict(raw, f"tool_choice.tools[{j}]")
            if tool.get("type") != "function":
                raise unsupported(f"tool_choice.tools[{j}].type", f"it {NATIVE_ONLY}")
            named.append({"type": "function", "function": {
                "name": need_str(tool.get("name"), f"tool_choice.tools[{j}].name")}})
        return {"type": "allowed_tools",
                "allowed_tools": {"mode": choice.get("mode", "auto"), "tools": named}}
    raise unsupported("tool_choice.type", f"the tool choice {str(kind)[:60]!r} {NATIVE_ONLY}")


def _text(value: Any, out: dict[str, Any]) -> None:
    if value is None:
        return
    text = need_dict(value, "text")
    if text.get("verbosity") is not None:
        out["verbosity"] = text["verbosity"]
    if text.get("format") is None:
        return
    fmt = need_dict(text["format"], "text.format")
    kind = need_str(fmt.get("type"), "text.format.type")
    if kind == "json_object":
        out["response_format"] = {"type": "json_object"}
    elif kind == "json_schema":
        schema: dict[str, Any] = {
            "name": need_str(fmt.get("name"), "text.format.name"),
            "schema": need_dict(fmt.get("schema"), "text.format.schema")}
        for name in ("strict", "description"):
            if fmt.get(name) is not None:
                schema[name] = fmt[name]
        out["response_format"] = {"type": "json_schema", "json_schema": schema}
    elif kind != "text":
        raise bad_type("text.format.type", "'text', 'json_object' or 'json_schema'")
