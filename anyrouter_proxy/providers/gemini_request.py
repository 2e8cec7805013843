"""OpenAI Chat Completions request -> Gemini `GenerateContentRequest` (pure, no I/O).

Shared by the gemini and vertex kinds (the same wire); Anthropic Messages reach it through
`anthropic_to_openai_request`. Raises only `InvalidRequest` (400, `param` naming the field).
generationConfig (caps, sampling, JSON output, thinking) is built in `gemini_generation.py`.

| OpenAI | Gemini |
|---|---|
| system / developer messages (anywhere) | systemInstruction.parts, in order |
| user text, image_url, file, input_audio | text; inlineData; fileData (URLs) |
| assistant content, tool_calls | role "model": text, functionCall {id, name, args} |
| tool call extra_content.google.thought_signature | the part's thoughtSignature |
| role "tool" messages | role "user": functionResponse {id, name, response} |
| consecutive messages of one role | one content |
| tools[].function {name, description, parameters} | functionDeclarations (JSON Schema) |
| tool_choice auto, none, required, {function} | functionCallingConfig AUTO, NONE, ANY |

A tool result that is a JSON object is the functionResponse's `response`; other content
becomes `{"output": ...}`. Images: data: URLs go inline; http(s) and gs:// URLs by
reference (`fileData`, the MIME type from the file extension, else image/jpeg): Gemini
fetches them, the proxy never does. A function call replayed without its thought
signature gets Google's documented placeholder (`skip_thought_signature_validator`) on
Gemini 3 and later models, which reject it otherwise.

Refused (400 unsupported_parameter): logprobs, top_logprobs, functions / function_call,
audio output, web_search_options, non-function tools, file parts by file_id. Dropped:
user, metadata, store, service_tier, logit_bias, parallel_tool_calls, prediction,
stream_options, function `strict`, image `detail`, message `name`, unknown fields.
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from ..errors import InvalidRequest
from .gemini_generation import generation_config
from .shapes import (
    bad_type,
    need_body,
    need_bool,
    need_dict,
    need_list,
    need_str,
    opt_str,
    unsupported,
)

DEFAULT_IMAGE_MIME = "image/jpeg"
AUDIO_MIMES = {"wav": "audio/wav", "mp3": "audio/mp3"}
SKIP_SIGNATURE = "skip_thought_signature_validator"  # Google's placeholder for replays
_DATA_URL = re.compile(r"^data:([^;,]+)(?:;[^;,]*)*;base64,(.*)$", re.DOTALL)
_SIGNED_MODELS = re.compile(r"(?:^|/)gemini-(\d+)")  # gemini-3* and later need signatures
MIN_SIGNED_MAJOR = 3
_TOOL_MODES = {"auto": "AUTO", "none": "NONE", "required": "ANY"}


def openai_to_gemini_request(body: dict[str, Any], *, model: str,
                             max_output: int | None = None) -> dict[str, Any]:
    """`model`: the upstream model (whether replayed calls need a signature);
    `max_output`: the most the gateway reserved for, per choice."""
    body = need_body(body)
    _refuse(body)
    system, contents = _contents(need_list(body.get("messages"), "messages"),
                                 signed=_needs_signatures(model))
    if not contents:
        raise InvalidRequest("'messages' needs at least one non-system message",
                             param="messages")
    out: dict[str, Any] = {"contents": contents}
    if system:
        out["systemInstruction"] = {"parts": system}
    declarations = _declarations(body.get("tools"))
    if declarations:
        out["tools"] = [{"functionDeclarations": declarations}]
    tool_config = _tool_config(body.get("tool_choice"), declarations)
    if tool_config is not None:
        out["toolConfig"] = tool_config
    config = generation_config(body, max_output)
    if config:
        out["generationConfig"] = config
    return out


def _refuse(body: dict[str, Any]) -> None:
    if body.get("logprobs") is not None and need_bool(body["logprobs"], "logprobs"):
        raise unsupported("logprobs", "log probabilities are not translated for Gemini")
    if body.get("top_logprobs") is not None:
        raise unsupported("top_logprobs", "log probabilities are not translated for Gemini")
    for name in ("functions", "function_call"):
        if body.get(name) is not None:
            raise unsupported(name, "deprecated; use tools and tool_choice")
    modalities = body.get("modalities")
    if body.get("audio") is not None or (isinstance(modalities, list) and "audio" in modalities):
        raise unsupported("audio" if body.get("audio") is not None else "modalities",
                          "audio output is not translated for Gemini")
    if body.get("web_search_options") is not None:
        raise unsupported("web_search_options", "use an OpenAI route for web search")


def _needs_signatures(model: str) -> bool:
    match = _SIGNED_MODELS.search(model)
    return match is not None and int(match.group(1)) >= MIN_SIGNED_MAJOR


# --- messages -----------------------------------------------------------------------------

def _contents(messages: list[Any], *, signed: bool,
              ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    names: dict[str, str] = {}  # tool call id -> function name, for the tool results
    for i, item in enumerate(messages):
        p = f"messages[{i}]"
        msg = need_dict(item, p)
        role = need_str(msg.get("role"), f"{p}.role")
        if role in ("system", "developer"):
            system.extend(_text_parts(msg.get("content"), p))
        elif role == "user":
            _append(contents, "user", _user_parts(msg.get("content"), p))
        elif role == "assistant":
            _append(contents, "model", _model_parts(msg, p, names, signed))
        elif role == "tool":
            _append(contents, "user", [_function_response(msg, p, names)])
        else:
            raise InvalidRequest(f"unknown role {role!r}", param=f"{p}.role")
    return system, contents


def _append(contents: list[dict[str, Any]], role: str, parts: list[dict[str, Any]]) -> None:
    """Consecutive messages of one role become one content; empty ones are left out."""
    if not parts:
        return
    if contents and contents[-1]["role"] == role:
        contents[-1]["parts"].extend(parts)
    else:
        contents.append({"role": role, "parts": parts})


def _text_parts(content: Any, p: str) -> list[dict[str, Any]]:
    """Text of a system / assistant / tool message: a string or text (refusal) parts."""
    if content is None:
        return []
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, item in enumerate(need_list(content, f"{p}.content")):
        part = need_dict(item, f"{p}.content[{j}]")
        kind = need_str(part.get("type"), f"{p}.content[{j}].type")
        if kind not in ("text", "refusal"):
            raise unsupported(f"{p}.content[{j}].type", f"{kind} parts are not accepted here")
        text = need_str(part.get(kind), f"{p}.content[{j}].{kind}")
        if text:
            parts.append({"text": text})
    return parts


def _user_parts(content: Any, p: str) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    parts = []
    for j, item in enumerate(need_list(content, f"{p}.content")):
        pp = f"{p}.content[{j}]"
        part = need_dict(item, pp)
        kind = need_str(part.get("type"), f"{pp}.type")
        if kind == "text":
            text = need_str(part.get("text"), f"{pp}.text")
            if text:
                parts.append({"text": text})
        elif kind == "image_url":
            parts.append(_image(part.get("image_url"), f"{pp}.image_url"))
        elif kind == "file":
            parts.append(_file(need_dict(part.get("file"), f"{pp}.file"), f"{pp}.file"))
        elif kind == "input_audio":
            parts.append(_audio(need_dict(part.get("input_audio"), f"{pp}.input_audio"),
                                f"{pp}.input_audio"))
        else:
            raise InvalidRequest(f"unknown content part type {kind!r}", param=f"{pp}.type")
    return parts


def _image(value: Any, p: str) -> dict[str, Any]:
    url = need_str(value.get("url"), f"{p}.url") if isinstance(value, dict) \
        else need_str(value, p)
    if url.startswith("data:"):
        mime, data = _data_url(url, p)
        return {"inlineData": {"mimeType": mime, "data": data}}
    if url.startswith(("http://", "https://", "gs://")):
        guessed = mimetypes.guess_type(urlsplit(url).path)[0]
        return {"fileData": {"mimeType": guessed or DEFAULT_IMAGE_MIME, "fileUri": url}}
    raise InvalidRequest("an image URL must be an http(s), gs:// or data: URL", param=p)


def _data_url(url: str, p: str) -> tuple[str, str]:
    """(MIME type, base64 data) of a data: URL."""
    match = _DATA_URL.match(url)
    if match is None:
        raise InvalidRequest("a data: URL must be base64-encoded (data:TYPE;base64,...)", param=p)
    return match.group(1), match.group(2)


def _file(file: dict[str, Any], p: str) -> dict[str, Any]:
    if file.get("file_data") is None:
        raise unsupported(f"{p}.file_id", "send the file inline as file_data")
    mime, data = _data_url(need_str(file["file_data"], f"{p}.file_data"), f"{p}.file_data")
    return {"inlineData": {"mimeType": mime, "data": data}}


def _audio(audio: dict[str, Any], p: str) -> dict[str, Any]:
    fmt = need_str(audio.get("format"), f"{p}.format")
    if fmt not in AUDIO_MIMES:
        raise bad_type(f"{p}.format", "'wav' or 'mp3'")
    return {"inlineData": {"mimeType": AUDIO_MIMES[fmt],
                           "data": need_str(audio.get("data"), f"{p}.data")}}


def _model_parts(msg: dict[str, Any], p: str, names: dict[str, str],
                 signed: bool) -> list[dict[str, Any]]:
    parts = _text_parts(msg.get("content"), p)
    calls = msg.get("tool_calls")
    for j, item in enumerate(need_list(calls, f"{p}.tool_calls") if calls is not None else []):
        part = _function_call(need_dict(item, f"{p}.tool_calls[{j}]"), f"{p}.tool_calls[{j}]")
        names[part["functionCall"]["id"]] = part["functionCall"]["name"]
        if j == 0 and signed and "thoughtSignature" not in part:
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _function_call(call: dict[str, Any], p: str) -> dict[str, Any]:
    if call.get("type", "function") != "function":
        raise unsupported(f"{p}.type", "only function tool calls")
    function = need_dict(call.get("function"), f"{p}.function")
    arguments = opt_str(function.get("arguments"), f"{p}.function.arguments") or ""
    try:
        args = orjson.loads(arguments) if arguments.strip() else {}
    except orjson.JSONDecodeError:
        raise bad_type(f"{p}.function.arguments", "a JSON object") from None
    part: dict[str, Any] = {"functionCall": {
        "id": need_str(call.get("id"), f"{p}.id"),
        "name": need_str(function.get("name"), f"{p}.function.name"),
        "args": need_dict(args, f"{p}.function.arguments")}}
    signature = _signature(call.get("extra_content"))
    if signature:
        part["thoughtSignature"] = signature
    return part


def _signature(extra: Any) -> str | None:
    """Google's `extra_content: {"google": {"thought_signature": ...}}` on a tool call."""
    google = extra.get("google") if isinstance(extra, dict) else None
    signature = google.get("thought_signature") if isinstance(google, dict) else None
    return signature if isinstance(signature, str) and signature else None


def _function_response(msg: dict[str, Any], p: str, names: dict[str, str]) -> dict[str, Any]:
    call_id = need_str(msg.get("tool_call_id"), f"{p}.tool_call_id")
    name = names.get(call_id) or opt_str(msg.get("name"), f"{p}.name")
    if not name:
        raise InvalidRequest(f"'{p}.tool_call_id' matches no tool call of an earlier "
                             "assistant message", param=f"{p}.tool_call_id")
    content = msg.get("content")
    if not isinstance(content, str | list):
        raise bad_type(f"{p}.content", "a string or a list")
    text = "".join(part["text"] for part in _text_parts(content, p))
    try:
        result = orjson.loads(text) if text else ""
    except orjson.JSONDecodeError:
        result = text
    response = result if isinstance(result, dict) else {"output": result}
    return {"functionResponse": {"id": call_id, "name": name, "response": response}}


# --- tools ------------------------------------------------------------------------------

def _declarations(value: Any) -> list[dict[str, Any]]:
    if value is None:
        return []
    declarations = []
    for i, item in enumerate(need_list(value, "tools")):
        p = f"tools[{i}]"
        tool = need_dict(item, p)
        if tool.get("type", "function") != "function":
            raise unsupported(f"{p}.type", "only function tools on Gemini routes")
        function = need_dict(tool.get("function"), f"{p}.function")
        declaration: dict[str, Any] = {"name": need_str(function.get("name"),
                                                        f"{p}.function.name")}
        description = opt_str(function.get("description"), f"{p}.function.description")
        if description:
            declaration["description"] = description
        parameters = function.get("parameters")
        if parameters is not None and need_dict(parameters, f"{p}.function.parameters"):
            declaration["parametersJsonSchema"] = parameters
        declarations.append(declaration)
    return declarations


def _tool_config(choice: Any, declarations: list[dict[str, Any]]) -> dict[str, Any] | None:
    if choice is None:
        return None
    if isinstance(choice, str):
        if choice not in _TOOL_MODES:
            raise bad_type("tool_choice", "'auto', 'none', 'required' or an object")
        config: dict[str, Any] = {"mode": _TOOL_MODES[choice]}
    else:
        named = need_dict(choice, "tool_choice")
        if named.get("type") != "function":
            raise unsupported("tool_choice.type", "only {type: function} tool choices")
        function = need_dict(named.get("function"), "tool_choice.function")
        config = {"mode": "ANY", "allowedFunctionNames": [
            need_str(function.get("name"), "tool_choice.function.name")]}
    if not declarations:
        if config["mode"] == "ANY":
            raise InvalidRequest("'tool_choice' needs 'tools'", param="tool_choice")
        return None
    return {"functionCallingConfig": config}
