"""Features a provider bills beyond plain tokens, found in a request before it goes
upstream (pure logic, no I/O).

| in the request | billed | metered keys |
|---|---|---|
| a tool of type `web_search_*` (Anthropic) | `web_search` per search | if priced (*) |
| `web_search_options` (OpenAI) | `web_search` per search, at least 1 | if priced |
| `cache_control` anywhere (Anthropic prompt caching) | `cache_write` per 1M tokens | if priced |
| other server tools (`web_fetch_*`, `code_execution_*`, ...) | not priceable | refused |
| `service_tier` `priority` or `scale` (OpenAI) | a dearer tier | refused |
| `anthropic-beta` asking for `context-1m` | a dearer long-context tier | refused |
| audio output (`modalities` with "audio", `audio`) | audio tokens | refused |

(*) with `max_uses` added when the client gave none, so that the reservation bounds it.
Refused means 400 `unsupported_parameter` naming the field. Keys that are not metered are
never refused: their usage rows are priced by whatever the pricing says. Tools billed as
plain tokens (functions, custom tools, and Anthropic's client tools `bash_*`,
`text_editor_*`, `computer_*`, `memory_*`) are always allowed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .config.model import Pricing
from .errors import InvalidRequest
from .pricing import COST_DECIMALS, PER_TOKENS

CLIENT_TOOL_TYPES = frozenset({"function", "custom"})
CLIENT_TOOL_PREFIXES = ("bash_", "text_editor_", "computer_", "memory_")
WEB_SEARCH_PREFIX = "web_search_"
DEFAULT_MAX_SEARCHES = 5  # max_uses given to a web search tool that has none (metered keys)
PRIORITY_TIERS = frozenset({"priority", "scale"})
LONG_CONTEXT_BETA = "context-1m"


@dataclass(frozen=True, slots=True)
class Extras:
    """What a request may be billed for beyond its tokens."""

    searches: int = 0  # web searches it may run: reserved at pricing.web_search each
    min_searches: int = 0  # charged at least, when the provider reports no count
    cache_writes: bool = False  # its prompt may be written to the cache

    def reservation(self, pricings: Sequence[Pricing], prompt_tokens: int) -> float:
        """USD to reserve on top of the tokens: the dearest of the routes that may answer."""
        return max((self._worst(p, prompt_tokens) for p in pricings), default=0.0)

    def _worst(self, pricing: Pricing, prompt_tokens: int) -> float:
        total = pricing.request or 0.0
        total += self.searches * (pricing.web_search or 0.0)
        if self.cache_writes and pricing.cache_write is not None:
            # The prompt at max(prompt, cache_write): the base reservation has it at prompt.
            extra = max(0.0, pricing.cache_write - pricing.prompt)
            total += max(0, prompt_tokens) * extra / PER_TOKENS
        return round(total, COST_DECIMALS)


NO_EXTRAS = Extras()


def check_extras(body: dict[str, Any], headers: Mapping[str, str],
                 pricings: Sequence[Pricing], metered: bool) -> Extras:
    """The billed extras of a request that may be answered at `pricings`. For a metered
    key, raises 400 unsupported_parameter for an extra that is not priced on every route,
    and gives each web search tool a `max_uses` (in `body`) so that its cost is bounded."""
    min_searches = 1 if body.get("web_search_options") is not None else 0
    if not metered:  # nothing to refuse or bound: the usage row prices what happened
        return Extras(min_searches=min_searches) if min_searches else NO_EXTRAS
    _refuse_unpriceable(body, headers)
    searches = _search_tools(body.get("tools"), pricings) + min_searches
    if min_searches:
        _need(pricings, "web_search", "web_search_options", "web search")
    cache_writes = _has_cache_control(body)
    if cache_writes:
        _need(pricings, "cache_write", "cache_control", "prompt cache writes")
    if not (searches or cache_writes):
        return NO_EXTRAS
    return Extras(searches, min_searches, cache_writes)


def _refuse_unpriceable(body: dict[str, Any], headers: Mapping[str, str]) -> None:
    tier = body.get("service_tier")
    if isinstance(tier, str) and tier in PRIORITY_TIERS:
        raise _refused("service_tier", f"service_tier {tier!r} is billed above the "
                       "token price; leave it out or use 'auto' or 'default'")
    if LONG_CONTEXT_BETA in headers.get("anthropic-beta", ""):
        raise _refused("anthropic-beta", "the long-context beta (context-1m) is billed "
                       "above the token price")
    modalities = body.get("modalities")
    if isinstance(modalities, list) and "audio" in modalities:
        raise _refused("modalities", "audio output is billed above the token price")
    if body.get("audio") is not None:
        raise _refused("audio", "audio output is billed above the token price")


def _search_tools(tools: Any, pricings: Sequence[Pricing]) -> int:
    """Searches the tools may run; refuses server tools that cannot be priced."""
    searches = 0
    for i, tool in enumerate(tools if isinstance(tools, list) else ()):
        kind = tool.get("type") if isinstance(tool, dict) else None
        if not isinstance(kind, str) or kind in CLIENT_TOOL_TYPES \
                or kind.startswith(CLIENT_TOOL_PREFIXES):
            continue
        assert isinstance(tool, dict)
        if not kind.startswith(WEB_SEARCH_PREFIX):
            raise _refused(f"tools[{i}].type", f"the server tool {kind[:60]!r} is billed "
                           "by the provider beyond tokens")
        _need(pricings, "web_search", f"tools[{i}].type", "web search")
        uses = tool.get("max_uses")
        if not isinstance(uses, int) or isinstance(uses, bool) or uses < 1:
            if uses is not None:
                raise InvalidRequest(f"'tools[{i}].max_uses' must be a positive integer",
                                     param=f"tools[{i}].max_uses")
            uses = tool["max_uses"] = DEFAULT_MAX_SEARCHES
        searches += uses
    return searches


def _has_cache_control(body: dict[str, Any]) -> bool:
    """A `cache_control` at any depth (a hot loop: JSON gives only dicts and lists)."""
    stack: list[Any] = [body]
    push = stack.append
    while stack:
        node = stack.pop()
        if node.__class__ is dict:
            if node.get("cache_control") is not None:
                return True
            children = node.values()
        else:
            children = node
        for child in children:
            kind = child.__class__
            if kind is dict or kind is list:
                push(child)
    return False


def _need(pricings: Sequence[Pricing], field: str, param: str, what: str) -> None:
    if any(getattr(p, field) is None for p in pricings):
        raise _refused(param, f"{what} is billed beyond tokens and this model has no "
                       f"pricing.{field}")


def _refused(param: str, why: str) -> InvalidRequest:
    return InvalidRequest(f"Not available to keys with a spending limit: {why}",
                          code="unsupported_parameter", param=param)
