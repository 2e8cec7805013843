"""The proxy on `state: {backend: redis}` (docs/operations.md), end to end over real HTTP
against a real redis-server (tests/redis_server.py) with the official openai SDK.

The suite of limits and credits (tests/limits_suite.py) runs again
here unchanged on the Redis backend: its `config_for` is replaced by one that adds the
`state:` section. Then what only a shared backend has: two proxies ("replicas", in this
process) sharing one Redis get exactly N requests per minute and exactly the credit
between them, and Redis going away applies the documented policy.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.limits.redis_quota import RedisQuota
from anyrouter_proxy.server.state import LIMITER
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.limits_suite import (  # the limits and credits suite, run again on Redis
    CHAT,
    MAX_TOKENS,
    MESSAGES,
    MODEL,
    ConfigFor,
    StartProxy,
    exact_worst_case_reply,
    get,
    models,
    post,
    sdk,
    test_concurrency_slot_released_on_every_exit_path,
    test_concurrent_requests_rejects_at_once,
    test_credit_exhaustion_at_the_boundary,
    test_credit_refusal_gives_back_the_token_estimate,
    test_credits_and_key_info_shapes_and_isolation,
    test_default_limits_apply_to_keys_without_their_own,
    test_hundred_concurrent_requests_on_ten_requests_of_credit,
    test_insufficient_credits_402_through_openai_sdk,
    test_model_limits_inside_a_key,
    test_raising_credits_through_a_file_reload,
    test_raising_credits_through_a_reload,
    test_rate_limit_headers_on_success_count_down,
    test_reads_report_the_allowance_without_consuming_it,
    test_reload_changes_limits_in_place,
    test_requests_per_minute_429_through_openai_sdk,
    test_spend_survives_a_restart,
    test_stream_responses_carry_rate_limit_headers,
    test_streamed_requests_are_charged_too,
    test_tokens_per_minute_reserved_before_upstream,
    worst_case,
)
from tests.redis_server import RedisServer, running_redis_server

REDIS_RERUNS = (
    test_concurrency_slot_released_on_every_exit_path,
    test_concurrent_requests_rejects_at_once,
    test_credit_exhaustion_at_the_boundary,
    test_credit_refusal_gives_back_the_token_estimate,
    test_credits_and_key_info_shapes_and_isolation,
    test_default_limits_apply_to_keys_without_their_own,
    test_hundred_concurrent_requests_on_ten_requests_of_credit,
    test_insufficient_credits_402_through_openai_sdk,
    test_model_limits_inside_a_key,
    test_raising_credits_through_a_file_reload,
    test_raising_credits_through_a_reload,
    test_rate_limit_headers_on_success_count_down,
    test_reads_report_the_allowance_without_consuming_it,
    test_reload_changes_limits_in_place,
    test_requests_per_minute_429_through_openai_sdk,
    test_spend_survives_a_restart,
    test_stream_responses_carry_rate_limit_headers,
    test_streamed_requests_are_charged_too,
    test_tokens_per_minute_reserved_before_upstream,
)


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def config_for(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
               redis_url: str) -> ConfigFor:
    """limits_suite.config_for with `state: {backend: redis}` and a key prefix of
    this test's own."""
    state = {"backend": "redis", "url": redis_url, "timeout_s": 5,  # no flaky fallback
             "key_prefix": f"e2e{uuid.uuid4().hex[:10]}:"}

    def make(alice: dict[str, Any] | None = None, bob: dict[str, Any] | None = None,
             **sections: Any) -> Config:
        return config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models=models(),
            keys={"alice": {"key_sha256": sha256(ALICE_KEY), **(alice or {})},
                  "bob": {"key_sha256": sha256(BOB_KEY), **(bob or {})}},
            state={**state, **sections.pop("state", {})},
            **sections)

    return make


@pytest.fixture
def start_proxy(start_proxy: StartProxy) -> StartProxy:
    """conftest's start_proxy, checking that the proxy really runs on Redis."""
    async def start(config: Config) -> Proxy:
        proxy = await start_proxy(config)
        assert isinstance(proxy.gateway.quota, RedisQuota)
        return proxy

    return start


def quota_of(proxy: Proxy) -> RedisQuota:
    quota = proxy.gateway.quota
    assert isinstance(quota, RedisQuota)
    return quota


async def test_the_proxy_uses_redis_with_its_own_buckets_as_fallback(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for())
    quota = quota_of(proxy)
    assert quota.local.limiter is proxy.app[LIMITER]
    assert await quota.client.ping()


async def test_provider_limits_hold_across_replicas_and_routing_skips_it(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, redis_url: str) -> None:
    config = config_factory(
        providers={"openai": openai_provider(fake_openai, limits={"requests_per_minute": 2}),
                   "backup": openai_provider(fake_backup)},
        models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"},
                                   {"provider": "backup", "model": "gpt-4o-mini"}]}},
        state={"backend": "redis", "url": redis_url, "timeout_s": 5,
               "key_prefix": f"e2e{uuid.uuid4().hex[:10]}:"})
    one, two = await start_proxy(config), await start_proxy(config)
    for i in range(6):
        status, headers, _ = await post(one if i % 2 else two, CHAT)
        assert status == 200
    assert len(fake_openai.requests) == 2
    assert len(fake_backup.requests) == 4
    assert headers["X-AnyRouter-Provider"] == "backup"


async def test_two_replicas_get_exactly_n_requests_per_minute_together(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    n = 8
    config = config_for(alice={"limits": {"requests_per_minute": n}})
    one, two = await start_proxy(config), await start_proxy(config)
    results = await asyncio.gather(*(post(one if i % 2 else two, CHAT) for i in range(3 * n)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == n
    assert statuses.count(429) == 2 * n
    assert len(fake_openai.requests) == n
    refused = [(headers, body) for status, headers, body in results if status == 429]
    for headers, body in refused:
        assert body["error"]["code"] == "rate_limited"
        assert headers["X-RateLimit-Limit"] == str(n)
        assert headers["X-RateLimit-Remaining"] == "0"
        assert int(headers["Retry-After"]) >= 1
    async with sdk(two) as client:  # and the SDK sees it as such on either replica
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)


async def test_two_replicas_hundred_concurrent_requests_on_ten_of_credit(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    worst = worst_case()
    config = config_for(alice={"credits": 10 * worst})
    one, two = await start_proxy(config), await start_proxy(config)
    fake_openai.then(*[Behaviour(delay_s=0.3, body=exact_worst_case_reply())
                       for _ in range(100)])
    body = {**CHAT, "max_tokens": MAX_TOKENS}
    results = await asyncio.gather(*(post(one if i % 2 else two, body) for i in range(100)))
    statuses = [status for status, _, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(402) == 90
    assert len(fake_openai.requests) == 10
    for proxy in (one, two):
        _, _, data = await get(proxy, "/api/v1/credits")
        assert data["data"]["total_usage"] <= data["data"]["total_credits"]  # $0.00 over
        assert data["data"]["total_usage"] == pytest.approx(10 * worst, rel=1e-9)
        _, _, info = await get(proxy, "/api/v1/auth/key")
        assert info["data"]["limit_remaining"] == pytest.approx(0, abs=1e-9)
        assert info["data"]["in_flight"] == 0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A redis-server of the test's own, to kill."""
    with running_redis_server() as server:
        yield server


async def test_redis_going_away_applies_the_policy_and_recovers(
        config_for: ConfigFor, start_proxy: StartProxy, own_redis: RedisServer) -> None:
    """Defaults: limits fail open to this replica's buckets, credits fail closed (503
    state_unavailable) for keys with credits; when Redis is back it is used again."""
    proxy = await start_proxy(config_for(
        alice={"credits": 1.0, "limits": {"requests_per_minute": 50}},
        bob={"limits": {"requests_per_minute": 3}},
        state={"url": own_redis.url}))
    quota = quota_of(proxy)
    quota.retry_s = 0.1
    assert (await post(proxy, CHAT))[0] == 200
    assert (await post(proxy, CHAT, BOB_KEY))[0] == 200

    own_redis.kill()
    status, headers, body = await post(proxy, CHAT)
    assert status == 503, body
    assert body["error"]["code"] == "state_unavailable"
    assert body["error"]["type"] == "service_unavailable"
    assert "Redis" in body["error"]["message"]
    assert headers["Retry-After"] == "1"
    async with sdk(proxy, BOB_KEY) as client:  # no credits: served on the local bucket
        for _ in range(3):  # which is this replica's own: it knows nothing of the first
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert quota.fallbacks["limits"] >= 4 and quota.refusals["credits"] == 1
    status, _, data = await get(proxy, "/api/v1/credits")
    assert status == 200 and data["data"]["total_usage"] > 0  # reads still answer

    own_redis.start()
    await asyncio.sleep(0.15)
    fallbacks = quota.fallbacks["limits"]
    assert (await post(proxy, CHAT))[0] == 200
    status, headers, _ = await post(proxy, CHAT, BOB_KEY)
    assert status == 200  # Redis again: a fresh shared bucket (that Redis kept nothing)
    assert headers["X-RateLimit-Remaining"] == "2"
    assert quota.fallbacks["limits"] == fallbacks
