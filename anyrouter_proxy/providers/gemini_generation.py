"""generationConfig of a Gemini request, from an OpenAI Chat Completions body (pure).

| OpenAI | generationConfig |
|---|---|
| max_completion_tokens, max_tokens, max_output_tokens | maxOutputTokens (the largest) |
| n | candidateCount |
| temperature, top_p, top_k, seed | temperature, topP, topK, seed |
| presence_penalty, frequency_penalty | presencePenalty, frequencyPenalty |
| stop (string or list) | stopSequences |
| response_format json_object | responseMimeType application/json |
| response_format json_schema | the same + responseJsonSchema (JSON Schema as given) |
| thinking {type: enabled, budget_tokens} (LiteLLM's) | thinkingConfig (below) |
| reasoning {effort, max_tokens, exclude} (OpenRouter's) | the same |
| reasoning_effort | thinkingBudget (EFFORT_BUDGETS), includeThoughts: true |
| reasoning_effort none, thinking disabled | thinkingBudget 0 |

maxOutputTokens is at most the reserved cap, which it is when the client gave none. It
counts thinking, so a budget that does not fit below it shrinks to maxOutputTokens - 1.
"""

from __future__ import annotations

from typing import Any

from ..output_cap import EFFORT_BUDGETS, OPENAI_CAP_FIELDS
from .shapes import bad_type, need_dict, need_int, need_list, need_number, need_str

JSON_MIME = "application/json"
_SAMPLING = (("temperature", "temperature"), ("top_p", "topP"),
             ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"))


def generation_config(body: dict[str, Any], max_output: int | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    caps = [need_int(body[name], name, minimum=1) for name in OPENAI_CAP_FIELDS
            if body.get(name) is not None]
    tokens = max(caps) if caps else max_output
    if tokens is not None:
        config["maxOutputTokens"] = min(tokens, max_output) if max_output else tokens
    if body.get("n") is not None and need_int(body["n"], "n", minimum=1) != 1:
        config["candidateCount"] = body["n"]
    for name, field in _SAMPLING:
        if body.get(name) is not None:
            config[field] = need_number(body[name], name)
    if body.get("top_k") is not None:
        config["topK"] = need_int(body["top_k"], "top_k", minimum=1)
    if body.get("seed") is not None:
        config["seed"] = need_int(body["seed"], "seed", minimum=-(2**31))
    stop = body.get("stop")
    if stop is not None:
        stops = [stop] if isinstance(stop, str) else need_list(stop, "stop")
        if stops:
            config["stopSequences"] = [need_str(s, f"stop[{i}]") for i, s in enumerate(stops)]
    config.update(_response_format(body.get("response_format")))
    thinking = _thinking(body, config.get("maxOutputTokens"))
    if thinking is not None:
        config["thinkingConfig"] = thinking
    return config


def _response_format(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    fmt = need_dict(value, "response_format")
    kind = need_str(fmt.get("type"), "response_format.type")
    if kind == "text":
        return {}
    if kind == "json_object":
        return {"responseMimeType": JSON_MIME}
    if kind != "json_schema":
        raise bad_type("response_format.type", "'text', 'json_object' or 'json_schema'")
    spec = need_dict(fmt.get("json_schema"), "response_format.json_schema")
    schema = spec.get("schema")
    if schema is None:
        return {"responseMimeType": JSON_MIME}
    return {"responseMimeType": JSON_MIME,
            "responseJsonSchema": need_dict(schema, "response_format.json_schema.schema")}


def _thinking(body: dict[str, Any], max_tokens: int | None) -> dict[str, Any] | None:
    """thinkingConfig from the first of thinking, reasoning, reasoning_effort given; the
    budget stays below maxOutputTokens (which counts thinking)."""
    budget, include = _thinking_budget(body)
    if budget is None:
        return None
    if max_tokens is not None and budget >= max_tokens:
        budget = max(max_tokens - 1, 0)
    config: dict[str, Any] = {"thinkingBudget": budget}
    if budget and include:
        config["includeThoughts"] = True
    return config


def _thinking_budget(body: dict[str, Any]) -> tuple[int | None, bool]:
    """(thinking budget in tokens, whether to return the thoughts); None: not asked."""
    if body.get("thinking") is not None:  # Anthropic's field, as LiteLLM accepts it
        thinking = need_dict(body["thinking"], "thinking")
        kind = need_str(thinking.get("type"), "thinking.type")
        if kind == "disabled":
            return 0, False
        if kind == "enabled":
            return need_int(thinking.get("budget_tokens"), "thinking.budget_tokens"), True
        return None, False
    if body.get("reasoning") is not None:  # OpenRouter's
        reasoning = need_dict(body["reasoning"], "reasoning")
        if reasoning.get("enabled") is False or reasoning.get("effort") == "none":
            return 0, False
        include = reasoning.get("exclude") is not True
        if reasoning.get("max_tokens") is not None:
            return need_int(reasoning["max_tokens"], "reasoning.max_tokens"), include
        return _effort_budget(reasoning.get("effort") or "medium", "reasoning.effort"), include
    if body.get("reasoning_effort") is not None:
        effort = need_str(body["reasoning_effort"], "reasoning_effort")
        return (0, False) if effort == "none" else (_effort_budget(effort,
                                                                   "reasoning_effort"), True)
    return None, False


def _effort_budget(effort: Any, param: str) -> int:
    if not isinstance(effort, str) or effort not in EFFORT_BUDGETS:
        raise bad_type(param, "one of none, " + ", ".join(EFFORT_BUDGETS))
    return EFFORT_BUDGETS[effort]
