"""billed_extras: what a request may be billed for beyond tokens, refused for metered keys
unless priced; and credits.request_cost charging those extras."""

from __future__ import annotations

from typing import Any

import pytest

from anyrouter_proxy.billed_extras import DEFAULT_MAX_SEARCHES, NO_EXTRAS, Extras, check_extras
from anyrouter_proxy.config.model import Pricing
from anyrouter_proxy.errors import InvalidRequest
from anyrouter_proxy.pricing import request_cost
from anyrouter_proxy.providers.anthropic_translate import anthropic_usage, openai_usage
from anyrouter_proxy.types import Usage

TOKENS = Pricing(prompt=3, completion=15)
PRICED = Pricing(prompt=3, completion=15, cache_write=3.75, web_search=0.01, request=0.002)
MSGS = [{"role": "user", "content": "hi"}]
SEARCH = {"type": "web_search_20250305", "name": "web_search"}


def refused(body: dict[str, Any], headers: dict[str, str] | None = None,
            pricings: tuple[Pricing, ...] = (TOKENS,)) -> InvalidRequest:
    with pytest.raises(InvalidRequest) as info:
        check_extras(body, headers or {}, pricings, metered=True)
    assert info.value.code == "unsupported_parameter"
    return info.value


@pytest.mark.parametrize(("body", "headers", "param"), [
    ({"tools": [SEARCH]}, {}, "tools[0].type"),
    ({"tools": [{"name": "f", "input_schema": {}}, {"type": "web_fetch_20250910"}]}, {},
     "tools[1].type"),
    ({"tools": [{"type": "code_execution_20250522", "name": "code_execution"}]}, {},
     "tools[0].type"),
    ({"tools": [{"type": "tool_search_tool_regex_20251119"}]}, {}, "tools[0].type"),
    ({"system": [{"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}, {},
     "cache_control"),
    ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}]},
     {}, "cache_control"),
    ({"service_tier": "priority"}, {}, "service_tier"),
    ({"service_tier": "scale"}, {}, "service_tier"),
    ({}, {"anthropic-beta": "files-api-2025-04-14,context-1m-2025-08-07"}, "anthropic-beta"),
    ({"modalities": ["text", "audio"]}, {}, "modalities"),
    ({"audio": {"voice": "alloy", "format": "wav"}}, {}, "audio"),
    ({"web_search_options": {}}, {}, "web_search_options"),
])
def test_each_unpriced_extra_is_refused_for_a_metered_key(
        body: dict[str, Any], headers: dict[str, str], param: str) -> None:
    error = refused({"messages": MSGS, **body}, headers)
    assert error.param == param
    assert error.status == 400
    # ...and never for a key without a spending limit.
    check_extras({"messages": MSGS, **body}, headers, (TOKENS,), metered=False)


@pytest.mark.parametrize("body", [
    {"service_tier": "priority"}, {"modalities": ["audio"]},
    {"tools": [{"type": "web_fetch_20250910"}]},
    {"tools": [{"type": "code_execution_20250825"}]},
])
def test_unpriceable_extras_are_refused_even_with_every_price(body: dict[str, Any]) -> None:
    refused({"messages": MSGS, **body}, pricings=(PRICED,))


def test_tools_billed_as_tokens_pass() -> None:
    tools = [{"name": "get_weather", "input_schema": {"type": "object"}},
             {"type": "custom", "name": "x", "input_schema": {}},
             {"type": "function", "function": {"name": "f"}},
             {"type": "bash_20250124", "name": "bash"},
             {"type": "text_editor_20250728", "name": "str_replace_based_edit_tool"},
             {"type": "computer_20250124", "name": "computer"},
             {"type": "memory_20250818", "name": "memory"}]
    body = {"messages": MSGS, "tools": tools, "service_tier": "auto",
            "modalities": ["text"]}
    assert check_extras(body, {"anthropic-beta": "token-efficient-tools-2025-02-19"},
                        (TOKENS,), metered=True) is NO_EXTRAS


def test_a_priced_web_search_gets_max_uses_and_is_reserved() -> None:
    body: dict[str, Any] = {"messages": MSGS, "tools": [dict(SEARCH), {**SEARCH, "max_uses": 2}]}
    extras = check_extras(body, {}, (PRICED,), metered=True)
    assert body["tools"][0]["max_uses"] == DEFAULT_MAX_SEARCHES  # goes upstream with it
    assert body["tools"][1]["max_uses"] == 2
    assert extras.searches == DEFAULT_MAX_SEARCHES + 2 and extras.min_searches == 0
    assert extras.reservation([PRICED], 1000) == pytest.approx(
        (DEFAULT_MAX_SEARCHES + 2) * 0.01 + 0.002)


def test_a_web_search_priced_on_one_route_only_is_refused() -> None:
    refused({"messages": MSGS, "tools": [SEARCH]}, pricings=(PRICED, TOKENS))


def test_max_uses_that_is_not_a_positive_integer_is_invalid() -> None:
    with pytest.raises(InvalidRequest) as info:
        check_extras({"messages": MSGS, "tools": [{**SEARCH, "max_uses": "many"}]}, {},
                     (PRICED,), metered=True)
    assert (info.value.code, info.value.param) == ("invalid_request", "tools[0].max_uses")


def test_a_key_without_credits_keeps_its_request_untouched() -> None:
    body: dict[str, Any] = {"messages": MSGS, "tools": [dict(SEARCH)]}
    assert check_extras(body, {}, (TOKENS,), metered=False) is NO_EXTRAS
    assert "max_uses" not in body["tools"][0]
    # OpenAI's searches are charged at least once, metered or not.
    extras = check_extras({"messages": MSGS, "web_search_options": {}}, {}, (TOKENS,),
                          metered=False)
    assert extras.min_searches == 1


def test_cache_writes_reserve_the_prompt_at_the_cache_write_price() -> None:
    body = {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "x", "cache_control": {"type": "ephemeral"}}]}]}
    extras = check_extras(body, {}, (PRICED,), metered=True)
    assert extras == Extras(cache_writes=True)
    # The base reservation has the prompt at 3; the extra brings it to 3.75, plus a request.
    assert extras.reservation([PRICED], 1_000_000) == pytest.approx(0.75 + 0.002)
    dearest = Pricing(prompt=1, completion=1, cache_write=10)
    assert extras.reservation([PRICED, dearest], 1_000_000) == pytest.approx(9)


def test_web_search_options_priced_reserve_one_search() -> None:
    extras = check_extras({"messages": MSGS, "web_search_options": {}}, {}, (PRICED,),
                          metered=True)
    assert (extras.searches, extras.min_searches) == (1, 1)
    assert extras.reservation([PRICED], 0) == pytest.approx(0.012)


def test_the_request_price_is_reserved_without_extras() -> None:
    assert NO_EXTRAS.reservation([PRICED, TOKENS], 500) == pytest.approx(0.002)
    assert NO_EXTRAS.reservation([TOKENS], 500) == 0


# --- charging -------------------------------------------------------------------------


def test_cache_writes_are_charged_at_cache_write() -> None:
    usage = Usage(prompt_tokens=1000, completion_tokens=100, cached_tokens=200,
                  cache_write_tokens=500)
    tokens = Pricing(prompt=3, completion=15, cached_prompt=0.3)
    # Unpriced, a cache write is a prompt token (what is charged for it without cache_write).
    assert request_cost(tokens, usage) == pytest.approx(
        (800 * 3 + 200 * 0.3 + 100 * 15) / 1e6)
    priced = Pricing(prompt=3, completion=15, cached_prompt=0.3, cache_write=3.75)
    assert request_cost(priced, usage) == pytest.approx(
        (300 * 3 + 200 * 0.3 + 500 * 3.75 + 100 * 15) / 1e6)


def test_web_searches_and_the_request_price_are_charged() -> None:
    usage = Usage(prompt_tokens=10, completion_tokens=10, web_search_requests=3)
    assert request_cost(PRICED, usage) == pytest.approx(
        (10 * 3 + 10 * 15) / 1e6 + 3 * 0.01 + 0.002)
    assert request_cost(TOKENS, usage) == pytest.approx((10 * 3 + 10 * 15) / 1e6)


def test_no_answer_costs_no_request_price() -> None:
    assert request_cost(PRICED, Usage(source="none")) == 0
    assert request_cost(PRICED, Usage(source="estimated")) == pytest.approx(0.002)


def test_anthropic_usage_counts_web_searches() -> None:
    usage = anthropic_usage({"input_tokens": 10, "output_tokens": 3,
                             "cache_creation_input_tokens": 40,
                             "server_tool_use": {"web_search_requests": 4}})
    assert (usage.prompt_tokens, usage.cache_write_tokens, usage.web_search_requests) == \
        (50, 40, 4)
    assert openai_usage({"prompt_tokens": 5, "completion_tokens": 1,
                         "server_tool_use": {"web_search_requests": 2}}
                        ).web_search_requests == 2
    assert anthropic_usage({"server_tool_use": "odd"}).web_search_requests == 0
