"""POST /messages/count_tokens counts against the key's request limits (one request from
requests_per_minute, a concurrency slot while it runs), on both quota backends."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import anthropic
import pytest

from anyrouter_proxy.config.model import Config
from tests.calls import post_json
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, anthropic_provider, sha256
from tests.fakes import Behaviour, FakeAnthropic
from tests.quota_backends import redis_server, state_section  # noqa: F401

StartProxy = Callable[[Config], Awaitable[Proxy]]

CLAUDE = "anthropic/claude"
COUNT = "/api/v1/messages/count_tokens"
BODY = {"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}


def config(config_factory: ConfigFactory, fake: FakeAnthropic, state: dict[str, Any],
           limits: dict[str, int]) -> Config:
    return config_factory(
        providers={"anthropic": anthropic_provider(fake)},
        models={CLAUDE: {"pricing": {"prompt": 3, "completion": 15},
                         "routes": [{"provider": "anthropic", "model": "claude-x"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10, "limits": limits}},
        state=state)


def count_calls(fake: FakeAnthropic) -> int:
    return sum(1 for r in fake.requests if r.path.endswith("/count_tokens"))


async def test_count_tokens_takes_from_the_requests_per_minute(
        config_factory: ConfigFactory, fake_anthropic: FakeAnthropic,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_anthropic, state_section,
                                     {"requests_per_minute": 2}))
    for remaining in ("1", "0"):
        status, headers, data = await post_json(proxy, COUNT, BODY)
        assert status == 200 and data == {"input_tokens": 42}
        assert headers["X-RateLimit-Limit"] == "2"
        assert headers["X-RateLimit-Remaining"] == remaining
    for _ in range(10):
        status, headers, data = await post_json(proxy, COUNT, BODY)
        assert status == 429, data
        assert data["error"]["code"] == "rate_limited"
        assert data["error"]["metadata"]["limit"] == "requests_per_minute"
        assert int(headers["Retry-After"]) >= 1
        assert headers["X-RateLimit-Limit"] == "2"
        assert headers["X-RateLimit-Remaining"] == "0"
        assert int(headers["X-RateLimit-Reset"]) > time.time()
    assert count_calls(fake_anthropic) == 2  # the refused ones never went upstream
    # The same bucket as the proxied requests.
    status, _, _ = await post_json(proxy, "/api/v1/messages", {**BODY, "max_tokens": 10})
    assert status == 429
    assert not [r for r in fake_anthropic.requests if r.path.endswith("/messages")]


async def test_the_anthropic_sdk_sees_the_429(
        config_factory: ConfigFactory, fake_anthropic: FakeAnthropic,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_anthropic, state_section,
                                     {"requests_per_minute": 1}))
    async with anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                        max_retries=0) as sdk:
        counted = await sdk.messages.count_tokens(model=CLAUDE, messages=BODY["messages"])
        assert counted.input_tokens == 42
        with pytest.raises(anthropic.RateLimitError) as info:
            await sdk.messages.count_tokens(model=CLAUDE, messages=BODY["messages"])
    assert info.value.response.headers["Retry-After"]
    assert count_calls(fake_anthropic) == 1


async def test_count_tokens_respects_the_concurrency_limit(
        config_factory: ConfigFactory, fake_anthropic: FakeAnthropic,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_anthropic, state_section,
                                     {"requests_per_minute": 100, "concurrent_requests": 1}))
    fake_anthropic.then(Behaviour(delay_s=0.5))
    slow = asyncio.create_task(post_json(proxy, "/api/v1/messages",
                                         {**BODY, "max_tokens": 10}))
    while not fake_anthropic.requests:  # the slow request holds the slot now
        await asyncio.sleep(0.01)
    status, headers, data = await post_json(proxy, COUNT, BODY)
    assert status == 429, data
    assert data["error"]["metadata"]["limit"] == "concurrent_requests"
    assert headers["Retry-After"]
    assert count_calls(fake_anthropic) == 0
    assert (await slow)[0] == 200
    # Its slot is given back, and so is count_tokens' own: more calls than the cap.
    deadline = time.monotonic() + 3
    admitted = 0
    while admitted < 3:
        status, _, data = await post_json(proxy, COUNT, BODY)
        if status == 200:
            admitted += 1
            continue
        assert data["error"]["metadata"]["limit"] == "concurrent_requests", data
        assert time.monotonic() < deadline, "a concurrency slot was never released"
        await asyncio.sleep(0.02)
    assert count_calls(fake_anthropic) == 3
