"""The worst-case output of a request, and the cap that makes it so upstream (pure, no I/O).

`output_cap` reads a client body as the upstream will read it: every output cap field it
may carry, the number of choices, reasoning effort or a thinking budget, and the model's
own output limit when the client sets no cap. The credit reservation and the token-per-
minute estimate are made from it; `cap_openai_body` / `cap_anthropic_body` /
`cap_converse_body` (Bedrock) / `cap_gemini_body` then make sure the body sent upstream
carries an explicit cap no larger than the one reserved.

| client body | output tokens per choice |
|---|---|
| any of max_tokens, max_completion_tokens, max_output_tokens | the largest of them |
| Anthropic max_tokens (required) | it (thinking is part of it) |
| no cap, model with max_output_tokens | that limit |
| no cap otherwise | server.default_max_tokens (+ the thinking budget, if any) |

A cap above the model's `max_output_tokens` is lowered to it. The thinking budget is
`thinking.budget_tokens`, `reasoning.max_tokens`, or the budget of `reasoning_effort` /
`reasoning.effort` (EFFORT_BUDGETS). Choices are `n` (and `best_of`). A cap, a count of
choices or a budget that is not a positive integer is a 400 naming the field.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .errors import InvalidRequest
from .types import COMPLETIONS, EMBEDDINGS, MESSAGES

# reasoning_effort -> thinking budget in tokens (Anthropic's minimum is 1024).
EFFORT_BUDGETS: dict[str, int] = {
    "minimal": 1024, "low": 2048, "medium": 8192, "high": 16384, "xhigh": 32768, "max": 32768,
}
UNKNOWN_EFFORT_BUDGET = max(EFFORT_BUDGETS.values())  # an effort we do not know: the most
MAX_CAP = 10**9  # no model writes more; a larger integer is taken as this
OPENAI_CAP_FIELDS = ("max_tokens", "max_completion_tokens", "max_output_tokens")
CHOICE_FIELDS = ("n", "best_of")
# Upstream paths that write output, by wire -> the OpenAI field added when none is there
# (None: the request's own preference, OutputCap.field).
OPENAI_OUTPUT_PATHS: dict[str, str | None] = {
    "/chat/completions": None, "/completions": "max_tokens", "/responses": "max_output_tokens"}
ANTHROPIC_OUTPUT_PATHS = frozenset({"/messages"})
# Gemini wire (gemini and vertex kinds): the methods the path ends in (its query aside).
GEMINI_OUTPUT_METHODS = (":generateContent", ":streamGenerateContent")
_KNOWN_PATHS = sorted((*OPENAI_OUTPUT_PATHS, *ANTHROPIC_OUTPUT_PATHS), key=len, reverse=True)
# Bedrock's Converse operations (/model/{modelId}/converse, /converse-stream).
CONVERSE_PATH_ENDS = ("/converse", "/converse-stream")


@dataclass(frozen=True, slots=True)
class OutputCap:
    """What may come back: `tokens` per choice, `choices` of them."""

    tokens: int
    choices: int = 1
    # The OpenAI field to add when the body carries no cap: max_completion_tokens when the
    # client used it or asked for reasoning (OpenAI's reasoning models reject max_tokens).
    field: str = "max_tokens"

    @property
    def total(self) -> int:
        return self.tokens * self.choices


NO_OUTPUT = OutputCap(0)


def output_cap(endpoint: str, body: dict[str, Any], *, model_limit: int | None,
               default_max_tokens: int) -> OutputCap:
    """The worst-case output of `body` sent to `endpoint`; raises InvalidRequest (400)."""
    if endpoint == EMBEDDINGS:
        return NO_OUTPUT
    if endpoint == MESSAGES:
        return _anthropic_cap(body, model_limit)
    caps = [cap for name in OPENAI_CAP_FIELDS if (cap := _positive(body, name)) is not None]
    choices = max((c for name in CHOICE_FIELDS if (c := _positive(body, name)) is not None),
                  default=1)
    budget, reasoning = _reasoning_budget(body)
    if caps:
        tokens = max(caps)
    elif model_limit is not None:
        tokens = model_limit
    else:
        tokens = default_max_tokens + budget
    tokens = _within(tokens, model_limit)
    used_completion = body.get("max_completion_tokens") is not None
    chat = endpoint != COMPLETIONS  # legacy completions know only max_tokens
    field = "max_completion_tokens" if chat and (used_completion or reasoning) else "max_tokens"
    return OutputCap(tokens, choices, field)


def _anthropic_cap(body: dict[str, Any], model_limit: int | None) -> OutputCap:
    max_tokens = _positive(body, "max_tokens")
    if max_tokens is None:
        raise InvalidRequest("'max_tokens' is required and must be a positive integer",
                             param="max_tokens")
    thinking = body.get("thinking")
    enabled = False
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        enabled = True
        _positive(thinking, "budget_tokens", "thinking.budget_tokens")
    return OutputCap(_within(max_tokens, model_limit), 1,
                     "max_completion_tokens" if enabled else "max_tokens")


def _reasoning_budget(body: dict[str, Any]) -> tuple[int, bool]:
    """(thinking budget in tokens, whether reasoning was asked for) of an OpenAI body."""
    budgets: list[int] = []
    thinking = body.get("thinking")  # Anthropic's field, as LiteLLM accepts it
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budgets.append(_positive(thinking, "budget_tokens", "thinking.budget_tokens") or 0)
    effort = body.get("reasoning_effort")
    if isinstance(effort, str) and effort != "none":
        budgets.append(EFFORT_BUDGETS.get(effort, UNKNOWN_EFFORT_BUDGET))
    reasoning = body.get("reasoning")  # the Responses API's and OpenRouter's
    if isinstance(reasoning, dict) and reasoning.get("enabled") is not False:
        effort = reasoning.get("effort")
        if effort != "none":
            limit = _positive(reasoning, "max_tokens", "reasoning.max_tokens")
            budgets.append(limit or EFFORT_BUDGETS.get(
                effort if isinstance(effort, str) else "medium", UNKNOWN_EFFORT_BUDGET))
    return max(budgets, default=0), bool(budgets)


def _positive(body: dict[str, Any], name: str, param: str | None = None) -> int | None:
    """body[name] when it is a positive integer, None when absent or null; else a 400."""
    value = body.get(name)
    if value is None:
        return None
    if value.__class__ is not int or value < 1:  # not bool, not 16000.0, not "100"
        raise InvalidRequest(f"'{param or name}' must be a positive integer",
                             param=param or name)
    return int(value)


def _within(tokens: int, model_limit: int | None) -> int:
    return min(tokens, model_limit if model_limit is not None else MAX_CAP, MAX_CAP)


# --- the cap on the built upstream body ---------------------------------------------------

def cap_upstream_body(path: str, body: dict[str, Any], cap: OutputCap) -> None:
    """Make the body sent to upstream `path` carry a cap no larger than `cap` (in place);
    bodies that write no output (embeddings) are left alone. The path may sit below a
    prefix and carry a query (Azure: /openai/deployments/NAME/chat/completions?api-...)."""
    path = _wire_path(path)
    if path in ANTHROPIC_OUTPUT_PATHS:
        cap_anthropic_body(body, cap.tokens)
    elif path in OPENAI_OUTPUT_PATHS:
        cap_openai_body(body, cap, field=OPENAI_OUTPUT_PATHS[path])
    elif path.endswith(CONVERSE_PATH_ENDS):
        cap_converse_body(body, cap.tokens)
    elif path.endswith(GEMINI_OUTPUT_METHODS):
        cap_gemini_body(body, cap)


def _wire_path(path: str) -> str:
    """The endpoint path an upstream path ends in (the longest known), else the path."""
    path = path.split("?", 1)[0]
    for known in _KNOWN_PATHS:
        if path.endswith(known):
            return known
    return path


def cap_openai_body(body: dict[str, Any], cap: OutputCap, *, field: str | None = None) -> None:
    """Clamp every OpenAI cap field above `cap.tokens` (or not a positive integer) to it,
    add one (`field`, else `cap.field`) when there is none, and keep the choices to those
    reserved."""
    present = False
    for name in OPENAI_CAP_FIELDS:
        value = body.get(name)
        if value is None:
            continue
        present = True
        if value.__class__ is not int or not 0 < value <= cap.tokens:
            body[name] = cap.tokens
    if not present:
        body[field or cap.field] = cap.tokens
    for name in CHOICE_FIELDS:
        value = body.get(name)
        if value is not None and (value.__class__ is not int or not 0 < value <= cap.choices):
            body[name] = cap.choices


def cap_anthropic_body(body: dict[str, Any], tokens: int) -> None:
    """Anthropic's max_tokens no larger than `tokens`; a thinking budget that no longer fits
    below a lowered max_tokens shrinks with it (Anthropic wants budget < max_tokens)."""
    value = body.get("max_tokens")
    if value.__class__ is int and 0 < value <= tokens:
        return
    body["max_tokens"] = tokens
    thinking = body.get("thinking")
    if isinstance(thinking, dict):
        budget = thinking.get("budget_tokens")
        if budget.__class__ is int and budget >= tokens:
            body["thinking"] = {**thinking, "budget_tokens": max(tokens - 1, 0)}


def cap_gemini_body(body: dict[str, Any], cap: OutputCap) -> None:
    """generationConfig.maxOutputTokens (thinking included) no larger than `cap.tokens`,
    added when absent, and candidateCount no more than the choices reserved."""
    config = body.get("generationConfig")
    if not isinstance(config, dict):
        config = body["generationConfig"] = {}
    value = config.get("maxOutputTokens")
    if value.__class__ is not int or not 0 < value <= cap.tokens:
        config["maxOutputTokens"] = cap.tokens
    count = config.get("candidateCount")
    if count is not None and (count.__class__ is not int or not 0 < count <= cap.choices):
        config["candidateCount"] = cap.choices


def cap_converse_body(body: dict[str, Any], tokens: int) -> None:
    """Bedrock Converse: inferenceConfig.maxTokens no larger than `tokens` (added when
    absent); a Claude thinking budget in additionalModelRequestFields that no longer fits
    below it shrinks with it."""
    config = body.get("inferenceConfig")
    if not isinstance(config, dict):
        config = body["inferenceConfig"] = {}
    value = config.get("maxTokens")
    if value.__class__ is not int or not 0 < value <= tokens:
        config["maxTokens"] = value = tokens
    extra = body.get("additionalModelRequestFields")
    if isinstance(extra, dict) and isinstance(extra.get("thinking"), dict):
        budget = extra["thinking"].get("budget_tokens")
        if budget.__class__ is int and budget >= value:
            extra["thinking"] = {**extra["thinking"], "budget_tokens": max(value - 1, 0)}
