"""Features billed beyond tokens over real HTTP: refused with 400 for a key with credits
unless priced, never passed upstream at the token price; priced ones charged on the usage
row, /generation and /credits."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import pytest

from anyrouter_proxy.billed_extras import DEFAULT_MAX_SEARCHES
from anyrouter_proxy.config.model import Config
from tests.calls import generation, get_json, post_json
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    openai_provider,
    sha256,
)
from tests.fakes import USAGE, Behaviour, FakeAnthropic, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

CLAUDE, CLAUDE_PRICED = "anthropic/claude", "anthropic/claude-priced"
GPT, GPT_SEARCH = "openai/gpt", "openai/gpt-search"
TOKENS = {"prompt": 3, "completion": 15}
PRICED = {"prompt": 3, "completion": 15, "cache_write": 3.75, "web_search": 0.01,
          "request": 0.002}
GPT_PRICES = {"prompt": 1, "completion": 2, "web_search": 0.03, "request": 0.001}
MSGS = [{"role": "user", "content": "hi"}]
CAROL_KEY = "sk-ar-test-carol-0123456789abcdef0123456789"
SEARCH_TOOL = {"type": "web_search_20250305", "name": "web_search"}
CACHED_SYSTEM = [{"type": "text", "text": "You are terse.",
                  "cache_control": {"type": "ephemeral"}}]
# The fake Anthropic's usage: 20 fresh input tokens, 5 read from the cache, 7 output.
FRESH, READ, OUTPUT = 20, 5, 7


def anthropic_cost(pricing: dict[str, float], written: int = 0, searches: int = 0) -> float:
    write_price = pricing.get("cache_write", pricing["prompt"])
    tokens = ((FRESH + READ) * pricing["prompt"] + written * write_price
              + OUTPUT * pricing["completion"]) / 1e6
    return tokens + searches * pricing.get("web_search", 0) + pricing.get("request", 0)


@pytest.fixture
def make_config(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_anthropic: FakeAnthropic) -> Callable[..., Config]:
    def make(credits: float = 10.0, **sections: Any) -> Config:
        return config_factory(
            providers={"openai": openai_provider(fake_openai),
                       "anthropic": anthropic_provider(fake_anthropic)},
            models={
                CLAUDE: {"pricing": TOKENS,
                         "routes": [{"provider": "anthropic", "model": "claude-x"}]},
                CLAUDE_PRICED: {"pricing": PRICED,
                                "routes": [{"provider": "anthropic", "model": "claude-x"}]},
                GPT: {"pricing": {"prompt": 1, "completion": 2},
                      "routes": [{"provider": "openai", "model": "gpt-x"}]},
                GPT_SEARCH: {"pricing": GPT_PRICES,
                             "routes": [{"provider": "openai", "model": "gpt-search-x"}]}},
            keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": credits},
                  "bob": {"key_sha256": sha256(BOB_KEY)},
                  "carol": {"key_sha256": sha256(CAROL_KEY),
                            "budget": {"usd": 5, "period": "day"}}},
            **sections)
    return make


@pytest.fixture
async def proxy(make_config: Callable[..., Config], start_proxy: StartProxy) -> Proxy:
    return await start_proxy(make_config())


@pytest.fixture
async def claude_sdk(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                   max_retries=0)
    yield sdk
    await sdk.close()


def message(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": MSGS, **extra}


def chat(model: str, **extra: Any) -> dict[str, Any]:
    return {"model": model, "max_tokens": 100, "messages": MSGS, **extra}


REFUSED = [
    ("/messages", message(CLAUDE, tools=[SEARCH_TOOL]), {}, "tools[0].type"),
    ("/messages", message(CLAUDE_PRICED, tools=[{"type": "web_fetch_20250910",
                                                 "name": "web_fetch"}]), {}, "tools[0].type"),
    ("/messages", message(CLAUDE_PRICED, tools=[{"type": "code_execution_20250825",
                                                 "name": "code_execution"}]),
     {}, "tools[0].type"),
    ("/messages", message(CLAUDE, system=CACHED_SYSTEM), {}, "cache_control"),
    ("/chat/completions", chat(CLAUDE, messages=[{"role": "user", "content": [
        {"type": "text", "text": "hi", "cache_control": {"type": "ephemeral"}}]}]),
     {}, "cache_control"),
    ("/messages", message(CLAUDE_PRICED), {"anthropic-beta": "context-1m-2025-08-07"},
     "anthropic-beta"),
    ("/chat/completions", chat(GPT_SEARCH, service_tier="priority"), {}, "service_tier"),
    ("/chat/completions", chat(GPT, service_tier="scale"), {}, "service_tier"),
    ("/chat/completions", chat(GPT, modalities=["text", "audio"]), {}, "modalities"),
    ("/chat/completions", chat(GPT, audio={"voice": "alloy", "format": "wav"}), {}, "audio"),
    ("/chat/completions", chat(GPT, web_search_options={}), {}, "web_search_options"),
]


@pytest.mark.parametrize(("path", "body", "headers", "param"), REFUSED)
async def test_extras_not_priced_are_refused_for_a_credit_key_before_upstream(
        proxy: Proxy, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic, path: str,
        body: dict[str, Any], headers: dict[str, str], param: str) -> None:
    status, response_headers, data = await post_json(proxy, f"/api/v1{path}", body,
                                                     headers=headers)
    assert status == 400, data
    assert data["error"]["code"] == "unsupported_parameter"
    assert data["error"]["type"] == "invalid_request_error"
    assert data["error"]["param"] == param
    assert fake_openai.requests == [] and fake_anthropic.requests == []
    row = await generation(proxy, response_headers["X-AnyRouter-Generation-Id"])
    assert row["total_cost"] == 0
    # The same request on a key without credits goes through (it is not metered).
    status, _, data = await post_json(proxy, f"/api/v1{path}", body, key=BOB_KEY,
                                      headers=headers)
    assert status == 200, data


async def test_a_key_with_a_budget_is_refused_too(
        proxy: Proxy, fake_anthropic: FakeAnthropic) -> None:
    status, _, data = await post_json(proxy, "/api/v1/messages",
                                      message(CLAUDE, system=CACHED_SYSTEM), key=CAROL_KEY)
    assert status == 400, data
    assert data["error"]["param"] == "cache_control"
    assert fake_anthropic.requests == []


async def test_the_anthropic_sdk_gets_the_refusal(claude_sdk: anthropic.AsyncAnthropic,
                                                  fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        await claude_sdk.messages.create(model=CLAUDE, max_tokens=50, messages=MSGS,
                                         tools=[SEARCH_TOOL])  # type: ignore[list-item]
    assert info.value.status_code == 400
    body = info.value.body
    assert isinstance(body, dict) and body["error"]["param"] == "tools[0].type"
    assert fake_anthropic.requests == []


async def test_a_key_without_credits_pays_what_is_priced(
        proxy: Proxy, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.then(Behaviour(usage={"cache_creation_input_tokens": 100,
                                         "server_tool_use": {"web_search_requests": 2}}))
    status, headers, data = await post_json(
        proxy, "/api/v1/messages",
        message(CLAUDE, system=CACHED_SYSTEM, tools=[dict(SEARCH_TOOL)]), key=BOB_KEY)
    assert status == 200, data
    assert "max_uses" not in fake_anthropic.requests[0].body["tools"][0]  # untouched
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"], BOB_KEY)
    # Unpriced: cache writes at the prompt price, searches at nothing.
    assert row["total_cost"] == pytest.approx(anthropic_cost(TOKENS, written=100))


async def test_priced_searches_and_cache_writes_are_charged(
        proxy: Proxy, claude_sdk: anthropic.AsyncAnthropic,
        fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.then(Behaviour(usage={"cache_creation_input_tokens": 100,
                                         "server_tool_use": {"web_search_requests": 3}}))
    raw = await claude_sdk.messages.with_raw_response.create(
        model=CLAUDE_PRICED, max_tokens=100, messages=MSGS,  # type: ignore[arg-type]
        system=CACHED_SYSTEM, tools=[SEARCH_TOOL])  # type: ignore[arg-type,list-item]
    await raw.parse()
    sent = fake_anthropic.requests[0].body
    assert sent["tools"][0]["max_uses"] == DEFAULT_MAX_SEARCHES
    assert sent["system"][0]["cache_control"] == {"type": "ephemeral"}
    expected = anthropic_cost(PRICED, written=100, searches=3)
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["total_cost"] == pytest.approx(expected, rel=1e-9)
    _, _, credits = await get_json(proxy, "/api/v1/credits")
    assert credits["data"]["total_usage"] == pytest.approx(expected, rel=1e-9)


async def test_searches_of_a_stream_are_charged(
        proxy: Proxy, claude_sdk: anthropic.AsyncAnthropic,
        fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.then(Behaviour(usage={"server_tool_use": {"web_search_requests": 2}}))
    async with claude_sdk.messages.stream(
            model=CLAUDE_PRICED, max_tokens=100, messages=MSGS,  # type: ignore[arg-type]
            tools=[{**SEARCH_TOOL, "max_uses": 4}]) as stream:  # type: ignore[list-item]
        async for _ in stream:
            pass
        gen_id = stream.response.headers["X-AnyRouter-Generation-Id"]
    assert fake_anthropic.requests[0].body["tools"][0]["max_uses"] == 4
    row = await generation(proxy, gen_id)
    assert row["total_cost"] == pytest.approx(anthropic_cost(PRICED, searches=2), rel=1e-9)


async def test_openai_web_search_is_charged_one_search_at_least(
        proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    status, headers, data = await post_json(
        proxy, "/api/v1/chat/completions", chat(GPT_SEARCH, web_search_options={}))
    assert status == 200, data
    assert fake_openai.requests[0].body["web_search_options"] == {}
    tokens = (USAGE["prompt_tokens"] * 1 + USAGE["completion_tokens"] * 2) / 1e6
    expected = tokens + 0.03 + 0.001
    assert data["usage"]["cost"] == pytest.approx(expected, rel=1e-9)
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert row["total_cost"] == pytest.approx(expected, rel=1e-9)
    # A count the upstream reports is used as it is.
    fake_openai.then(Behaviour(usage={"server_tool_use": {"web_search_requests": 2}}))
    status, headers, data = await post_json(
        proxy, "/api/v1/chat/completions", chat(GPT_SEARCH, web_search_options={}))
    assert data["usage"]["cost"] == pytest.approx(tokens + 2 * 0.03 + 0.001, rel=1e-9)


async def test_the_request_price_is_charged_per_answer_only(
        make_config: Callable[..., Config], start_proxy: StartProxy,
        fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(make_config(server={"retries": 0}))
    status, headers, data = await post_json(proxy, "/api/v1/chat/completions",
                                            chat(GPT_SEARCH))
    assert status == 200
    tokens = (USAGE["prompt_tokens"] * 1 + USAGE["completion_tokens"] * 2) / 1e6
    assert data["usage"]["cost"] == pytest.approx(tokens + 0.001, rel=1e-9)
    fake_openai.then(Behaviour(status=500))
    status, headers, data = await post_json(proxy, "/api/v1/chat/completions",
                                            chat(GPT_SEARCH))
    assert status == 502, data
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert row["total_cost"] == 0


async def test_the_reservation_covers_every_search_the_request_may_run(
        make_config: Callable[..., Config], start_proxy: StartProxy,
        fake_anthropic: FakeAnthropic) -> None:
    """Five searches (the max_uses the proxy adds) at $0.01 do not fit in $0.04 of credit,
    two do: the reservation bounds what the upstream may spend."""
    proxy = await start_proxy(make_config(credits=0.04))
    status, _, data = await post_json(proxy, "/api/v1/messages",
                                      message(CLAUDE_PRICED, tools=[SEARCH_TOOL]))
    assert status == 402, data
    assert data["error"]["code"] == "insufficient_credits"
    assert fake_anthropic.requests == []
    status, _, data = await post_json(
        proxy, "/api/v1/messages", message(CLAUDE_PRICED, tools=[{**SEARCH_TOOL,
                                                                  "max_uses": 2}]))
    assert status == 200, data
    assert len(fake_anthropic.requests) == 1


async def test_models_list_the_extra_prices(proxy: Proxy) -> None:
    status, _, data = await get_json(proxy, f"/api/v1/models/{CLAUDE_PRICED}")
    assert status == 200
    prices = data["pricing"]
    assert prices["request"] == "0.002"
    assert prices["web_search"] == "0.01"
    assert prices["input_cache_write"] == "0.00000375"
