"""Cost arithmetic: what a request costs at a model's prices, its worst case before it
runs, and a pessimistic estimate of a prompt's tokens. Pure functions, no I/O; the
credit ledger (limits/credits.py), the providers and the gateway use them."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .config.model import Pricing
from .types import Usage

PER_TOKENS = 1_000_000  # routes.yaml prices are USD per 1M tokens
COST_DECIMALS = 10
CHARS_PER_TOKEN = 3  # a pessimistic tokenizer: English averages about 4 chars a token
MESSAGE_OVERHEAD_TOKENS = 4  # role and separators per chat message (OpenAI's figure)
REPLY_PRIMING_TOKENS = 3
IMAGE_TOKENS = 1600  # a large image on OpenAI (high detail) or Anthropic stays below this
IMAGE_PART_TYPES = frozenset({"image_url", "image", "input_image", "image_file"})
PROMPT_FIELDS = frozenset({
    "messages", "system", "prompt", "suffix", "input", "instructions",
    "tools", "functions", "tool_choice", "response_format", "text",
})


def request_cost(pricing: Pricing, usage: Usage) -> float:
    """USD for one request from the usage the upstream reported (OpenAI-style counts).

    `prompt_tokens` includes `cached_tokens` and `cache_write_tokens`, and
    `completion_tokens` includes `reasoning_tokens`; cached tokens are billed at
    `cached_prompt`, cache writes at `cache_write` and reasoning tokens at `reasoning` when
    those are priced, otherwise at the plain rate. Each web search costs `web_search`, and
    an answered request (usage source other than "none") `request` on top.
    """
    prompt = max(0, usage.prompt_tokens)
    cached = min(max(0, usage.cached_tokens), prompt)
    written = 0 if pricing.cache_write is None else \
        min(max(0, usage.cache_write_tokens), prompt - cached)
    uncached = prompt - cached - written
    cached_price = pricing.prompt if pricing.cached_prompt is None else pricing.cached_prompt
    completion = max(0, usage.completion_tokens)
    if pricing.reasoning is None:
        output = completion * pricing.completion
    else:
        reasoning = min(max(0, usage.reasoning_tokens), completion)
        output = reasoning * pricing.reasoning + (completion - reasoning) * pricing.completion
    total = (uncached * pricing.prompt + cached * cached_price + output
             + written * (pricing.cache_write or 0.0)) / PER_TOKENS
    total += max(0, usage.web_search_requests) * (pricing.web_search or 0.0)
    if pricing.request and usage.source != "none":
        total += pricing.request
    return round(total, COST_DECIMALS)


def worst_case_cost(pricing: Pricing, prompt_tokens: int, output_tokens: int) -> float:
    """The most a request may cost: prompt estimate x prompt price + its worst-case output
    (every choice at its cap, see output_cap.py) x the dearer of the output prices."""
    output_price = max(pricing.completion, pricing.reasoning or 0.0)
    total = (max(0, prompt_tokens) * pricing.prompt + max(0, output_tokens) * output_price
             ) / PER_TOKENS
    return round(total, COST_DECIMALS)


def estimate_prompt_tokens(body: Mapping[str, Any]) -> int:
    """A cheap, pessimistic prompt size without a tokenizer; never raises.

    Walks the prompt-bearing fields of the body (chat `messages`, Anthropic `system`,
    legacy `prompt`, embeddings `input`, tool definitions, ...): every string counts
    len / 3 tokens (rounded up over the whole body), every number 1 token (so token-id
    arrays count exactly), every image part a flat `IMAGE_TOKENS` instead of its base64
    or URL length, plus `MESSAGE_OVERHEAD_TOKENS` per message and `REPLY_PRIMING_TOKENS`.
    """
    try:
        chars = tokens = 0
        # A body has a few fields, the prompt-bearing ones are many: walk the body's.
        stack: list[Any] = [value for name, value in body.items() if name in PROMPT_FIELDS]
        messages = body.get("messages")
        if isinstance(messages, list):
            tokens += REPLY_PRIMING_TOKENS + MESSAGE_OVERHEAD_TOKENS * len(messages)
        while stack:
            node = stack.pop()
            kind = node.__class__
            if kind is not str and kind is not dict and kind is not list:
                kind = _json_kind(node)  # rare: JSON gives exactly these (a hot loop)
            if kind is str:
                chars += len(node) if node.isascii() else len(node.encode("utf-8"))
            elif kind is dict:
                part = node.get("type")
                if part.__class__ is str and part in IMAGE_PART_TYPES:
                    tokens += IMAGE_TOKENS
                else:
                    stack.extend(node.values())
            elif kind is list:
                stack.extend(node)
            elif kind is int:
                tokens += 1
        return tokens + -(-chars // CHARS_PER_TOKEN)
    except Exception:  # an odd shape must not fail the request here; upstream judges it
        return 0


def _json_kind(node: Any) -> type | None:
    """What `estimate_prompt_tokens` counts `node` as: str, dict or list for their kin,
    int for any number, None for the rest."""
    if node is None:
        return None
    if isinstance(node, int | float):  # numbers before the Mapping ABC's slower check
        return int
    if isinstance(node, str):
        return str
    if isinstance(node, list | tuple):
        return list
    return dict if isinstance(node, Mapping) else None
