"""What the Gemini API and Vertex AI reject in a request body, written from Google's API
reference (GenerateContentRequest, Content, Part, GenerationConfig, Tool, ToolConfig,
EmbedContentRequest, CountTokensRequest, PredictRequest): unknown field names (the API's
"Invalid JSON payload received. Unknown name ..."), a Part with no or several data
fields, roles other than user and model, empty contents or parts, function responses
that do not answer the previous turn's function calls one for one, a JSON schema without
the JSON MIME type, and Gemini 3 function calls replayed without a thought signature.

Each check returns the error message Google would send (400 INVALID_ARGUMENT), or None.
"""

from __future__ import annotations

from typing import Any

GENERATE_FIELDS = {"contents", "systemInstruction", "tools", "toolConfig", "generationConfig",
                   "safetySettings", "cachedContent", "labels"}
CONTENT_FIELDS = {"role", "parts"}
PART_DATA = {"text", "inlineData", "fileData", "functionCall", "functionResponse",
             "executableCode", "codeExecutionResult"}
PART_FIELDS = PART_DATA | {"thought", "thoughtSignature", "videoMetadata", "mediaResolution"}
BLOB_FIELDS = {"mimeType", "data"}
FILE_DATA_FIELDS = {"mimeType", "fileUri", "displayName"}
FUNCTION_CALL_FIELDS = {"id", "name", "args"}
FUNCTION_RESPONSE_FIELDS = {"id", "name", "response", "parts", "willContinue", "scheduling"}
GENERATION_FIELDS = {"stopSequences", "responseMimeType", "responseSchema",
                     "responseJsonSchema", "responseModalities", "candidateCount",
                     "maxOutputTokens", "temperature", "topP", "topK", "seed",
                     "presencePenalty", "frequencyPenalty", "responseLogprobs", "logprobs",
                     "thinkingConfig", "mediaResolution", "speechConfig"}
THINKING_FIELDS = {"thinkingBudget", "includeThoughts", "thinkingLevel"}
TOOL_FIELDS = {"functionDeclarations", "googleSearch", "codeExecution", "urlContext",
               "googleSearchRetrieval"}
DECLARATION_FIELDS = {"name", "description", "parameters", "parametersJsonSchema",
                      "response", "responseJsonSchema", "behavior"}
TOOL_CONFIG_FIELDS = {"functionCallingConfig"}
CALLING_FIELDS = {"mode", "allowedFunctionNames"}
MODES = {"AUTO", "ANY", "NONE", "VALIDATED"}


def unknown(obj: Any, known: set[str], where: str) -> str | None:
    if not isinstance(obj, dict):
        return f"Invalid value at '{where}': expected an object"
    for name in obj:
        if name not in known:
            return f'Invalid JSON payload received. Unknown name "{name}" at \'{where}\': ' \
                   "Cannot find field."
    return None


def check_generate(body: Any, model: str) -> str | None:
    problem = unknown(body, GENERATE_FIELDS, "request")
    if problem:
        return problem
    contents = body.get("contents")
    if not isinstance(contents, list) or not contents:
        return "* GenerateContentRequest.contents: contents is not specified"
    for i, content in enumerate(contents):
        problem = check_content(content, f"contents[{i}]", system=False)
        if problem:
            return problem
    if "systemInstruction" in body:
        problem = check_content(body["systemInstruction"], "system_instruction", system=True)
        if problem:
            return problem
    return (check_turns(contents, model) or check_tools(body.get("tools"))
            or check_tool_config(body.get("toolConfig"))
            or check_generation(body.get("generationConfig")))


def check_content(content: Any, where: str, *, system: bool) -> str | None:
    problem = unknown(content, CONTENT_FIELDS, where)
    if problem:
        return problem
    role = content.get("role")
    if not system and role not in ("user", "model"):
        return f"Please use a valid role: user, model. ({where}.role)"
    parts = content.get("parts")
    if not isinstance(parts, list) or not parts:
        return f"* GenerateContentRequest.{where}.parts: contents.parts must not be empty."
    for j, part in enumerate(parts):
        problem = check_part(part, f"{where}.parts[{j}]")
        if problem:
            return problem
    return None


def check_part(part: Any, where: str) -> str | None:
    problem = unknown(part, PART_FIELDS, where)
    if problem:
        return problem
    data = [name for name in part if name in PART_DATA]
    if len(data) != 1:
        return f"* GenerateContentRequest.{where}.data: required oneof field 'data' must " \
               "have one initialized field"
    if "text" in part and not isinstance(part["text"], str):
        return f"Invalid value at '{where}.text'"
    nested = {"inlineData": BLOB_FIELDS, "fileData": FILE_DATA_FIELDS,
              "functionCall": FUNCTION_CALL_FIELDS,
              "functionResponse": FUNCTION_RESPONSE_FIELDS}
    kind = data[0]
    if kind in nested:
        problem = unknown(part[kind], nested[kind], f"{where}.{kind}")
        if problem:
            return problem
        if kind in ("functionCall", "functionResponse") and not part[kind].get("name"):
            return f"* GenerateContentRequest.{where}.{kind}.name: Name cannot be empty."
        if kind == "functionResponse" and not isinstance(part[kind].get("response"), dict):
            return f"Invalid value at '{where}.function_response.response'"
        if kind == "functionCall" and not isinstance(part[kind].get("args", {}), dict):
            return f"Invalid value at '{where}.function_call.args'"
    return None


def check_turns(contents: list[dict[str, Any]], model: str) -> str | None:
    """A model turn's function calls are answered one for one by the next turn, and on
    Gemini 3 a turn's first function call carries its thought signature."""
    for i, content in enumerate(contents):
        calls = [p for p in content["parts"] if "functionCall" in p]
        if not calls or content["role"] != "model":
            continue
        if model.startswith("gemini-3") and "thoughtSignature" not in calls[0]:
            return f"Function call `{calls[0]['functionCall']['name']}` in the {i + 1}. " \
                   "content block is missing a `thought_signature`."
        following = contents[i + 1]["parts"] if i + 1 < len(contents) else []
        answers = [p["functionResponse"] for p in following if "functionResponse" in p]
        if i + 1 < len(contents) and len(answers) != len(calls):
            return "Please ensure that the number of function response parts is equal to " \
                   "the number of function call parts of the function call turn."
        names = sorted(c["functionCall"]["name"] for c in calls)
        if answers and sorted(a["name"] for a in answers) != names:
            return "Function response names do not match the function call names."
    return None


def check_tools(tools: Any) -> str | None:
    for i, tool in enumerate(tools or []):
        problem = unknown(tool, TOOL_FIELDS, f"tools[{i}]")
        if problem:
            return problem
        for j, declaration in enumerate(tool.get("functionDeclarations", [])):
            problem = unknown(declaration, DECLARATION_FIELDS,
                              f"tools[{i}].function_declarations[{j}]")
            if problem:
                return problem
            if "parameters" in declaration and "parametersJsonSchema" in declaration:
                return "parameters and parameters_json_schema are mutually exclusive"
    return None


def check_tool_config(config: Any) -> str | None:
    if config is None:
        return None
    problem = unknown(config, TOOL_CONFIG_FIELDS, "tool_config") or unknown(
        config.get("functionCallingConfig", {}), CALLING_FIELDS,
        "tool_config.function_calling_config")
    if problem:
        return problem
    mode = config.get("functionCallingConfig", {}).get("mode")
    return None if mode is None or mode in MODES else f"Invalid value for mode: {mode}"


def check_generation(config: Any) -> str | None:
    if config is None:
        return None
    problem = unknown(config, GENERATION_FIELDS, "generation_config") or unknown(
        config.get("thinkingConfig", {}), THINKING_FIELDS, "generation_config.thinking_config")
    if problem:
        return problem
    if ("responseJsonSchema" in config or "responseSchema" in config) \
            and config.get("responseMimeType") != "application/json":
        return "response_mime_type must be application/json when a response schema is set"
    temperature = config.get("temperature")
    if temperature is not None and not 0 <= temperature <= 2:
        return "* GenerateContentRequest.generation_config.temperature: must be between 0 and 2"
    return None


def check_embed(body: Any, model: str, *, batch: bool) -> str | None:
    if batch:
        problem = unknown(body, {"requests"}, "request")
        requests = body.get("requests") if isinstance(body, dict) else None
        if problem or not isinstance(requests, list) or not requests:
            return problem or "requests must not be empty"
        for i, request in enumerate(requests):
            if request.get("model") != f"models/{model}":
                return f"* BatchEmbedContentsRequest.requests[{i}].model: the model must " \
                       f"be the same as the one in the URL (models/{model})"
            problem = check_embed(request, model, batch=False)
            if problem:
                return problem
        return None
    problem = unknown(body, {"model", "content", "taskType", "title", "outputDimensionality"},
                      "request")
    if problem:
        return problem
    return check_content({"role": "user", **body.get("content", {})}, "content", system=True)


def check_predict(body: Any) -> str | None:
    problem = unknown(body, {"instances", "parameters"}, "request")
    instances = body.get("instances") if isinstance(body, dict) else None
    if problem or not isinstance(instances, list) or not instances:
        return problem or "instances must not be empty"
    for i, instance in enumerate(instances):
        problem = unknown(instance, {"content", "task_type", "title"}, f"instances[{i}]")
        if problem or not isinstance(instance.get("content"), str):
            return problem or f"instances[{i}].content must be a string"
    return unknown(body.get("parameters", {}), {"outputDimensionality", "autoTruncate"},
                   "parameters")
