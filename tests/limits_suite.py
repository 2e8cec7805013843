"""The limits and credits suite end to end: per-key limits, allow-lists and credits over
real HTTP. Its tests are collected where they are imported: all of them on this
process's buckets by tests/e2e/test_limits_credits.py, the backend-neutral ones again on
Redis by tests/e2e/test_redis_state.py (which overrides `config_for` and `start_proxy`).

The proxy runs on a real socket with a FakeOpenAI upstream; where a user would use the
official openai SDK, so do these tests (429 and 402 must reach it intact).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from anyrouter_proxy.server.reload import reload_config
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import USAGE, Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

MODEL = "openai/gpt-4o-mini"
OTHER_MODEL = "other/model"
# gpt-4o-mini's list prices, USD per 1M tokens.
PROMPT_PRICE, COMPLETION_PRICE, CACHED_PRICE = 0.15, 0.60, 0.075
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
MAX_TOKENS = 100


def models() -> dict[str, Any]:
    pricing = {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE,
               "cached_prompt": CACHED_PRICE}
    return {
        MODEL: {"pricing": pricing, "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
        OTHER_MODEL: {"pricing": pricing, "routes": [{"provider": "openai", "model": "other"}]},
    }


ConfigFor = Callable[..., Config]


@pytest.fixture
def config_for(config_factory: ConfigFactory, fake_openai: FakeOpenAI) -> ConfigFor:
    """A config with the fake as provider `openai`; alice's and bob's key fields as given."""

    def make(alice: dict[str, Any] | None = None, bob: dict[str, Any] | None = None,
             **sections: Any) -> Config:
        return config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models=models(),
            keys={"alice": {"key_sha256": sha256(ALICE_KEY), **(alice or {})},
                  "bob": {"key_sha256": sha256(BOB_KEY), **(bob or {})}},
            **sections)

    return make


@contextlib.asynccontextmanager
async def sdk(proxy: Proxy, key: str = ALICE_KEY) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def post(proxy: Proxy, body: dict[str, Any], key: str = ALICE_KEY,
               path: str = "/api/v1/chat/completions") -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url(path), json=body, headers=auth(key)) as response:
        raw = await response.read()
        data = json.loads(raw) if response.content_type == "application/json" else raw
        return response.status, dict(response.headers), data


async def get(proxy: Proxy, path: str, key: str = ALICE_KEY) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth(key)) as response:
        return response.status, dict(response.headers), await response.json()


def worst_case(max_tokens: int = MAX_TOKENS, messages: list[Any] = MESSAGES) -> float:
    """The reservation: prompt estimate x prompt price + max_tokens x completion price."""
    prompt = estimate_prompt_tokens({"model": MODEL, "messages": messages,
                                     "max_tokens": max_tokens})
    return (prompt * PROMPT_PRICE + max_tokens * COMPLETION_PRICE) / 1_000_000


def exact_worst_case_reply(max_tokens: int = MAX_TOKENS) -> dict[str, Any]:
    """An upstream answer whose real usage is exactly the request's worst case, so that a
    settled request spends all it reserved and the credit arithmetic is exact."""
    prompt = estimate_prompt_tokens({"messages": MESSAGES})
    return {"id": "chatcmpl-exact", "object": "chat.completion", "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": prompt, "completion_tokens": max_tokens,
                      "total_tokens": prompt + max_tokens}}


async def eventually_admitted(proxy: Proxy, key: str = ALICE_KEY) -> None:
    """Poll briefly until a plain request is admitted again (a slot may be released a
    moment after the client saw its answer end)."""
    deadline = time.monotonic() + 3
    while True:
        status, _, body = await post(proxy, CHAT, key)
        if status == 200:
            return
        assert status == 429 and body["error"]["metadata"]["limit"] == "concurrent_requests", \
            (status, body)
        assert time.monotonic() < deadline, "the concurrency slot was never released"
        await asyncio.sleep(0.02)


# -- rate limits ------------------------------------------------------------------------


async def test_requests_per_minute_429_through_openai_sdk(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"requests_per_minute": 2}}))
    async with sdk(proxy) as client:
        for _ in range(2):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    exc = caught.value
    assert exc.status_code == 429
    assert exc.code == "rate_limited"
    assert exc.type == "rate_limit_error"
    assert "requests_per_minute" in exc.message
    headers = exc.response.headers
    assert int(headers["Retry-After"]) >= 1
    assert headers["X-RateLimit-Limit"] == "2"
    assert headers["X-RateLimit-Remaining"] == "0"
    assert int(headers["X-RateLimit-Reset"]) > time.time()
    assert exc.response.headers["Content-Type"].startswith("application/json")
    assert len(fake_openai.requests) == 2  # the third never went upstream


async def test_rate_limit_headers_on_success_count_down(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"requests_per_minute": 3}}))
    async with sdk(proxy) as client:
        seen = []
        for _ in range(3):
            raw = await client.chat.completions.with_raw_response.create(
                model=MODEL, messages=MESSAGES)
            seen.append((raw.headers["X-RateLimit-Limit"], raw.headers["X-RateLimit-Remaining"]))
            assert int(raw.headers["X-RateLimit-Reset"]) >= int(time.time())
    assert seen == [("3", "2"), ("3", "1"), ("3", "0")]


async def test_stream_responses_carry_rate_limit_headers(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"requests_per_minute": 4}}))
    async with sdk(proxy) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True)
        assert raw.headers["Content-Type"].startswith("text/event-stream")
        assert raw.headers["X-RateLimit-Limit"] == "4"
        assert raw.headers["X-RateLimit-Remaining"] == "3"
        assert int(raw.headers["X-RateLimit-Reset"]) >= int(time.time())
        assert [c async for c in raw.parse()]


async def test_tokens_per_minute_reserved_before_upstream(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    """Two concurrent requests whose estimates (prompt + max_tokens) do not both fit the
    bucket: the second is refused before it goes upstream, and the first one's estimate
    is given back down to its real usage once it ends."""
    estimate = estimate_prompt_tokens(CHAT) + MAX_TOKENS
    tpm = estimate + estimate // 2  # room for one estimate, not two
    proxy = await start_proxy(config_for(alice={"limits": {"tokens_per_minute": tpm}}))
    fake_openai.then(Behaviour(delay_s=0.5))
    body = {**CHAT, "max_tokens": MAX_TOKENS}
    first = asyncio.ensure_future(post(proxy, body))
    while not fake_openai.requests:
        await asyncio.sleep(0.01)
    status, headers, error = await post(proxy, body)
    assert status == 429
    assert error["error"]["code"] == "rate_limited"
    assert "tokens_per_minute" in error["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    assert "X-RateLimit-Limit" in headers
    assert len(fake_openai.requests) == 1
    status, _, _ = await first
    assert status == 200
    # Settled to the real usage (USAGE: 16 tokens), so another estimate fits again.
    status, _, _ = await post(proxy, body)
    assert status == 200
    assert len(fake_openai.requests) == 2


async def test_concurrent_requests_rejects_at_once(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"concurrent_requests": 1}}))
    fake_openai.then(Behaviour(delay_s=1.0))
    slow = asyncio.ensure_future(post(proxy, CHAT))
    while not fake_openai.requests:
        await asyncio.sleep(0.01)
    started = time.monotonic()
    async with sdk(proxy) as client:
        with pytest.raises(openai.RateLimitError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert time.monotonic() - started < 0.5  # refused, not queued behind the slow one
    assert "concurrent_requests" in caught.value.message
    assert int(caught.value.response.headers["Retry-After"]) >= 1
    assert len(fake_openai.requests) == 1
    status, _, _ = await slow
    assert status == 200
    await eventually_admitted(proxy)


async def _disconnect_mid_stream(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.then(Behaviour(chunks=50, chunk_delay_s=0.1))
    async with aiohttp.ClientSession() as session:
        response = await session.post(proxy.url("/api/v1/chat/completions"),
                                      json={**CHAT, "stream": True}, headers=auth())
        assert response.status == 200
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()


async def _disconnect_before_first_event(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.then(Behaviour(first_event_delay_s=5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                response = await session.post(proxy.url("/api/v1/chat/completions"),
                                              json={**CHAT, "stream": True}, headers=auth())
                await response.read()


async def _disconnect_non_stream(proxy: Proxy, fake: FakeOpenAI) -> None:
    fake.then(Behaviour(delay_s=5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                                   headers=auth())


async def _stream_to_end(proxy: Proxy, behaviour: Behaviour, fake: FakeOpenAI) -> bytes:
    fake.then(behaviour)
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json={**CHAT, "stream": True},
            headers=auth()) as response:
        assert response.status == 200
        return await response.read()


async def _stream_error_event(proxy: Proxy, fake: FakeOpenAI) -> None:
    raw = await _stream_to_end(proxy, Behaviour(error_event_after=1), fake)
    assert b'"error"' in raw and raw.endswith(b"data: [DONE]\n\n")


async def _stream_dropped(proxy: Proxy, fake: FakeOpenAI) -> None:
    raw = await _stream_to_end(proxy, Behaviour(drop_after=2), fake)
    assert b'"error"' in raw


async def _stream_without_done(proxy: Proxy, fake: FakeOpenAI) -> None:
    raw = await _stream_to_end(proxy, Behaviour(no_done=True), fake)
    assert b"upstream_invalid_response" in raw


async def _plain(proxy: Proxy, fake: FakeOpenAI, behaviour: Behaviour | None,
                 expected: int) -> None:
    if behaviour is not None:
        fake.then(behaviour)
    status, _, _ = await post(proxy, CHAT)
    assert status == expected


async def _upstream_500(proxy: Proxy, fake: FakeOpenAI) -> None:
    # A 500 for the first try and for every retry (server.retries).
    fake.then(*[Behaviour(status=500) for _ in range(proxy.config.server.retries + 1)])
    await _plain(proxy, fake, None, 502)


EXIT_PATHS: dict[str, Callable[[Proxy, FakeOpenAI], Awaitable[None]]] = {
    "success": lambda p, f: _plain(p, f, None, 200),
    "upstream_500": _upstream_500,
    "upstream_400_passthrough": lambda p, f: _plain(
        p, f, Behaviour(status=400, body={"error": {"message": "bad temperature",
                                                    "type": "invalid_request_error",
                                                    "param": "temperature", "code": None}}),
        400),
    "client_disconnect_mid_stream": _disconnect_mid_stream,
    "client_disconnect_before_first_event": _disconnect_before_first_event,
    "client_disconnect_non_stream": _disconnect_non_stream,
    "stream_error_event": _stream_error_event,
    "stream_dropped_by_upstream": _stream_dropped,
    "stream_without_done": _stream_without_done,
}


@pytest.mark.parametrize("path", list(EXIT_PATHS))
async def test_concurrency_slot_released_on_every_exit_path(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        path: str) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"concurrent_requests": 1}}))
    await EXIT_PATHS[path](proxy, fake_openai)
    await eventually_admitted(proxy)
    status, _, info = await get(proxy, "/api/v1/auth/key")
    assert status == 200 and info["data"]["in_flight"] == 0


async def test_reads_report_the_allowance_without_consuming_it(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(alice={"limits": {"requests_per_minute": 5}}))
    reads = ("/api/v1/models", "/api/v1/models/count", "/api/v1/models/openai/gpt-4o-mini",
             "/api/v1/credits", "/api/v1/auth/key", "/api/v1/key", "/api/v1/providers",
             "/v1/models")

    async def remaining_after_reads() -> set[str]:
        seen = set()
        for path in reads * 2:
            status, headers, _ = await get(proxy, path)
            assert status == 200, path
            assert headers["X-RateLimit-Limit"] == "5", path
            assert int(headers["X-RateLimit-Reset"]) >= int(time.time()) - 1
            seen.add(headers["X-RateLimit-Remaining"])
        return seen

    assert await remaining_after_reads() == {"5"}
    status, headers, _ = await post(proxy, CHAT)
    assert status == 200 and headers["X-RateLimit-Remaining"] == "4"
    assert await remaining_after_reads() == {"4"}
    # An authenticated error on a read also reports, and does not consume.
    status, headers, _ = await get(proxy, "/api/v1/generation/gen-doesnotexist")
    assert status == 404 and headers["X-RateLimit-Remaining"] == "4"


async def test_default_limits_apply_to_keys_without_their_own(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(
        alice={"limits": {"requests_per_minute": 7}},
        server={"default_limits": {"requests_per_minute": 2}}))
    _, headers, _ = await get(proxy, "/api/v1/credits", BOB_KEY)
    assert headers["X-RateLimit-Limit"] == "2"
    _, headers, _ = await get(proxy, "/api/v1/credits", ALICE_KEY)
    assert headers["X-RateLimit-Limit"] == "7"
    for _ in range(2):
        assert (await post(proxy, CHAT, BOB_KEY))[0] == 200
    status, _, body = await post(proxy, CHAT, BOB_KEY)
    assert status == 429 and "requests_per_minute" in body["error"]["message"]
    _, _, info = await get(proxy, "/api/v1/auth/key", BOB_KEY)
    assert info["data"]["rate_limit"] == {"requests": 2, "interval": "1m"}


async def test_model_limits_inside_a_key(config_for: ConfigFor, start_proxy: StartProxy,
                                         fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(
        alice={"model_limits": {MODEL: {"requests_per_minute": 1}}}))
    assert (await post(proxy, CHAT))[0] == 200
    status, headers, body = await post(proxy, CHAT)
    assert status == 429
    assert body["error"]["code"] == "rate_limited"
    assert MODEL in body["error"]["message"]
    assert "requests_per_minute" in body["error"]["message"]
    assert int(headers["Retry-After"]) >= 1
    # Other models of the same key keep their own allowance.
    assert (await post(proxy, {**CHAT, "model": OTHER_MODEL}))[0] == 200
    assert len(fake_openai.requests) == 2


async def test_provider_at_its_limit_is_skipped_by_routing(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai, limits={"requests_per_minute": 1}),
                   "backup": openai_provider(fake_backup)},
        models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"},
                                   {"provider": "backup", "model": "gpt-4o-mini"}]}}))
    for _ in range(3):
        status, headers, _ = await post(proxy, CHAT)
        assert status == 200
    assert len(fake_openai.requests) == 1
    assert len(fake_backup.requests) == 2
    assert headers["X-AnyRouter-Provider"] == "backup"


# -- keys -------------------------------------------------------------------------------


async def test_allow_list_refuses_other_models(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(alice={"models": ["openai/*"]}))
    async with sdk(proxy) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model=OTHER_MODEL, messages=MESSAGES)
        assert caught.value.status_code == 403
        assert caught.value.code == "model_not_allowed"
        assert OTHER_MODEL in caught.value.message
        assert fake_openai.requests == []
        completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert completion.choices[0].message.content
    async with sdk(proxy, BOB_KEY) as client:  # no allow-list: every model
        await client.chat.completions.create(model=OTHER_MODEL, messages=MESSAGES)
    assert len(fake_openai.requests) == 2


async def test_disabled_key_is_403(config_for: ConfigFor, start_proxy: StartProxy,
                                   fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(bob={"disabled": True}))
    async with sdk(proxy, BOB_KEY) as client:
        with pytest.raises(openai.PermissionDeniedError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.code == "key_disabled"
        with pytest.raises(openai.PermissionDeniedError):
            await client.models.list()
    assert fake_openai.requests == []
    async with sdk(proxy) as client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)


@pytest.mark.parametrize("expired", ["2020-01-01T00:00:00Z", dt.date(2020, 1, 1)],
                         ids=["date-time", "unquoted-yaml-date"])
async def test_expired_key_is_401(config_for: ConfigFor, start_proxy: StartProxy,
                                  fake_openai: FakeOpenAI, expired: Any) -> None:
    proxy = await start_proxy(config_for(bob={"expires_at": expired},
                                         alice={"expires_at": "2999-01-01T00:00:00Z"}))
    async with sdk(proxy, BOB_KEY) as client:
        with pytest.raises(openai.AuthenticationError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        assert caught.value.status_code == 401
        assert caught.value.type == "authentication_error"
    assert fake_openai.requests == []
    async with sdk(proxy) as client:
        await client.chat.completions.create(model=MODEL, messages=MESSAGES)
    assert len(fake_openai.requests) == 1


# -- credits ----------------------------------------------------------------------------


async def test_insufficient_credits_402_through_openai_sdk(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    # Without max_tokens the reservation uses default_max_tokens (4096): ~$0.00246.
    proxy = await start_proxy(config_for(alice={"credits": 0.001}))
    async with sdk(proxy) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES)
        exc = caught.value
        assert exc.status_code == 402
        assert exc.code == "insufficient_credits"
        assert exc.type == "insufficient_credits"
        assert "X-RateLimit-Limit" in exc.response.headers
        assert fake_openai.requests == []
        # A request whose worst case fits the credit goes through.
        await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                             max_tokens=MAX_TOKENS)
    assert len(fake_openai.requests) == 1


async def test_credit_refusal_gives_back_the_token_estimate(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    # Without max_tokens the estimate is prompt + 4096 tokens, and the cost ~$0.00246.
    proxy = await start_proxy(config_for(
        alice={"credits": 0.001, "limits": {"tokens_per_minute": 4200}}))
    status, _, body = await post(proxy, CHAT)
    assert status == 402, body
    # Nothing was spent: a small request fits both the credit and the token bucket.
    status, _, body = await post(proxy, {**CHAT, "max_tokens": MAX_TOKENS})
    assert status == 200, body
    assert len(fake_openai.requests) == 1


async def test_credit_exhaustion_at_the_boundary(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    n = 3
    worst = worst_case()
    credits = n * worst
    proxy = await start_proxy(config_for(alice={"credits": credits}))
    fake_openai.then(*[Behaviour(body=exact_worst_case_reply()) for _ in range(n + 1)])
    async with sdk(proxy) as client:
        for _ in range(n):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                 max_tokens=MAX_TOKENS)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                 max_tokens=MAX_TOKENS)
    assert caught.value.status_code == 402
    body = caught.value.body
    assert isinstance(body, dict)
    assert body["metadata"]["requested"] == pytest.approx(worst, rel=1e-9)
    assert len(fake_openai.requests) == n
    _, _, data = await get(proxy, "/api/v1/credits")
    assert data["data"]["total_credits"] == pytest.approx(credits)
    assert data["data"]["total_usage"] == pytest.approx(credits, rel=1e-9)
    assert data["data"]["total_usage"] <= data["data"]["total_credits"]
    _, _, info = await get(proxy, "/api/v1/auth/key")
    assert info["data"]["limit_remaining"] == pytest.approx(0, abs=1e-12)


async def test_hundred_concurrent_requests_on_ten_requests_of_credit(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    worst = worst_case()
    credits = 10 * worst
    proxy = await start_proxy(config_for(alice={"credits": credits}))
    fake_openai.then(*[Behaviour(delay_s=0.5, body=exact_worst_case_reply())
                       for _ in range(100)])
    async with sdk(proxy) as client:
        results = await asyncio.gather(*(
            client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                           max_tokens=MAX_TOKENS)
            for _ in range(100)), return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, openai.APIStatusError) and r.status_code == 402]
    assert len(ok) <= 10
    assert len(ok) == 10  # the real cost equals the reservation: exactly 10 fit
    assert len(ok) + len(refused) == 100, [r for r in results if isinstance(r, BaseException)
                                           and r not in refused][:3]
    assert len(fake_openai.requests) == len(ok)
    _, _, data = await get(proxy, "/api/v1/credits")
    total_usage, total_credits = data["data"]["total_usage"], data["data"]["total_credits"]
    assert total_usage <= total_credits  # overspend: $0.00
    assert total_usage == pytest.approx(10 * worst, rel=1e-9)


def expected_cost(usage: dict[str, Any]) -> float:
    cached = usage.get("prompt_tokens_details", {}).get("cached_tokens", 0)
    uncached = usage["prompt_tokens"] - cached
    return (uncached * PROMPT_PRICE + cached * CACHED_PRICE
            + usage["completion_tokens"] * COMPLETION_PRICE) / 1_000_000


async def test_usage_cost_is_the_pricing_arithmetic(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for())
    cost = expected_cost(USAGE)
    assert cost == pytest.approx(4.425e-6)  # 8 x 0.15 + 3 x 0.075 + 5 x 0.60, per 1M
    costs = []
    async with sdk(proxy) as client:
        for _ in range(3):
            completion = await client.chat.completions.create(model=MODEL, messages=MESSAGES)
            assert completion.usage is not None
            usage = completion.usage.model_dump()
            assert usage["cost"] == pytest.approx(cost, rel=1e-9)
            costs.append(usage["cost"])
    _, _, data = await get(proxy, "/api/v1/credits")
    assert data["data"]["total_usage"] == pytest.approx(sum(costs), rel=1e-9)
    assert data["data"]["total_credits"] is None  # unlimited key


async def test_streamed_requests_are_charged_too(config_for: ConfigFor,
                                                 start_proxy: StartProxy,
                                                 fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for())
    fake_openai.then(Behaviour(chunks=4))
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                      stream=True)
        chunks = [c async for c in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    # The fake's stream usage: USAGE's prompt side, one completion token per chunk.
    cost = expected_cost({**USAGE, "completion_tokens": 4})
    _, _, data = await get(proxy, "/api/v1/credits")
    assert data["data"]["total_usage"] == pytest.approx(cost, rel=1e-9)


async def test_stream_usage_chunk_carries_cost(config_for: ConfigFor,
                                               start_proxy: StartProxy,
                                               fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for())
    fake_openai.then(Behaviour(chunks=4))
    async with sdk(proxy) as client:
        stream = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, stream=True,
            stream_options={"include_usage": True})
        chunks = [c async for c in stream]
    usage = [c.usage for c in chunks if c.usage is not None]
    assert len(usage) == 1
    cost = expected_cost({**USAGE, "completion_tokens": 4})
    assert usage[0].model_dump().get("cost") == pytest.approx(cost, rel=1e-9)


async def test_spend_survives_a_restart(config_for: ConfigFor, start_proxy: StartProxy,
                                        fake_openai: FakeOpenAI) -> None:
    credits = 2 * worst_case()
    config = config_for(alice={"credits": credits})
    first = await start_proxy(config)
    fake_openai.then(*[Behaviour(body=exact_worst_case_reply()) for _ in range(2)])
    for _ in range(2):
        assert (await post(first, {**CHAT, "max_tokens": MAX_TOKENS}))[0] == 200
    assert (await post(first, CHAT, BOB_KEY))[0] == 200
    _, _, before_alice = await get(first, "/api/v1/credits")
    _, _, before_bob = await get(first, "/api/v1/credits", BOB_KEY)
    assert before_alice["data"]["total_usage"] == pytest.approx(credits, rel=1e-9)
    assert before_bob["data"]["total_usage"] == pytest.approx(expected_cost(USAGE), rel=1e-9)
    await first.server.close()  # runs the app's cleanup: the usage log is flushed and closed

    second = await start_proxy(config_for(alice={"credits": credits}))
    _, _, after_alice = await get(second, "/api/v1/credits")
    _, _, after_bob = await get(second, "/api/v1/credits", BOB_KEY)
    assert after_alice["data"]["total_usage"] == pytest.approx(
        before_alice["data"]["total_usage"], rel=1e-9)
    assert after_bob["data"]["total_usage"] == pytest.approx(
        before_bob["data"]["total_usage"], rel=1e-9)
    status, _, body = await post(second, {**CHAT, "max_tokens": MAX_TOKENS})
    assert status == 402 and body["error"]["code"] == "insufficient_credits"
    assert len(fake_openai.requests) == 3


async def test_raising_credits_through_a_reload(config_for: ConfigFor, start_proxy: StartProxy,
                                                fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(alice={"credits": 0.001}))
    status, _, body = await post(proxy, CHAT)
    assert status == 402 and body["error"]["code"] == "insufficient_credits"
    assert fake_openai.requests == []
    proxy.gateway.reconfigure(config_for(alice={"credits": 5.0}))
    status, _, _ = await post(proxy, CHAT)
    assert status == 200
    _, _, data = await get(proxy, "/api/v1/credits")
    assert data["data"]["total_credits"] == 5.0
    assert data["data"]["total_usage"] == pytest.approx(expected_cost(USAGE), rel=1e-9)
    # ...and lowering them takes effect as well, spend included.
    proxy.gateway.reconfigure(config_for(alice={"credits": 0.000001}))
    status, _, _ = await post(proxy, CHAT)
    assert status == 402
    _, _, info = await get(proxy, "/api/v1/auth/key")
    assert info["data"]["limit"] == 0.000001
    assert info["data"]["limit_remaining"] == 0


async def test_raising_credits_through_a_file_reload(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    """The SIGHUP path: routes.yaml is edited, then reloaded from the file."""
    proxy = await start_proxy(config_for(alice={"credits": 0.001}))
    assert (await post(proxy, CHAT))[0] == 402
    config_for(alice={"credits": 5.0})  # rewrites routes.yaml in place
    assert reload_config(proxy.app) is True
    assert (await post(proxy, CHAT))[0] == 200
    _, _, data = await get(proxy, "/api/v1/credits")
    assert data["data"]["total_credits"] == 5.0


async def test_reload_changes_limits_in_place(config_for: ConfigFor,
                                              start_proxy: StartProxy) -> None:
    """A reload resizes the bucket keeping its used fraction (ratelimit.TokenBucket.resize):
    an exhausted key stays exhausted but refills at the new rate, here 1 request per 0.6 s
    instead of 1 per minute."""
    proxy = await start_proxy(config_for(alice={"limits": {"requests_per_minute": 1}}))
    assert (await post(proxy, CHAT))[0] == 200
    status, headers, _ = await post(proxy, CHAT)
    assert status == 429 and int(headers["Retry-After"]) > 30
    proxy.gateway.reconfigure(config_for(alice={"limits": {"requests_per_minute": 100}}))
    _, headers, _ = await get(proxy, "/api/v1/credits")
    assert headers["X-RateLimit-Limit"] == "100"
    deadline = time.monotonic() + 3
    while (status := (await post(proxy, CHAT))[0]) == 429:
        assert time.monotonic() < deadline, "the new rate was not applied"
        await asyncio.sleep(0.1)
    assert status == 200
    _, _, info = await get(proxy, "/api/v1/auth/key")
    assert info["data"]["rate_limit"] == {"requests": 100, "interval": "1m"}


async def test_credits_and_key_info_shapes_and_isolation(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(
        alice={"credits": 25, "models": ["openai/*"],
               "limits": {"requests_per_minute": 60, "tokens_per_minute": 200000,
                          "concurrent_requests": 8}}))
    texts: list[str] = []

    async def fetch(path: str, key: str) -> Any:
        async with aiohttp.ClientSession() as session, session.get(
                proxy.url(path), headers=auth(key)) as response:
            text = await response.text()
            texts.append(text)
            assert response.status == 200, text
            return json.loads(text)["data"]

    for _ in range(2):
        status, _, body = await post(proxy, CHAT)
        assert status == 200
        texts.append(json.dumps(body))
    spent = 2 * expected_cost(USAGE)

    credits = await fetch("/api/v1/credits", ALICE_KEY)
    assert set(credits) == {"total_credits", "total_usage", "budget"}
    assert credits["budget"] is None  # alice has no periodic budget
    assert credits["total_credits"] == 25
    assert credits["total_usage"] == pytest.approx(spent, rel=1e-9)

    for path in ("/api/v1/auth/key", "/api/v1/key", "/v1/auth/key"):
        info = await fetch(path, ALICE_KEY)
        assert info["label"] == "alice"
        assert info["usage"] == pytest.approx(spent, rel=1e-9)
        assert info["limit"] == 25
        assert info["limit_remaining"] == pytest.approx(25 - spent, rel=1e-9)
        assert info["rate_limit"] == {"requests": 60, "interval": "1m"}
        assert info["limits"] == {"requests_per_minute": 60, "tokens_per_minute": 200000,
                                  "concurrent_requests": 8}

    bob_credits = await fetch("/api/v1/credits", BOB_KEY)
    assert bob_credits == {"total_credits": None, "total_usage": 0, "budget": None}
    bob = await fetch("/api/v1/auth/key", BOB_KEY)
    assert bob["label"] == "bob"
    assert (bob["usage"], bob["limit"], bob["limit_remaining"]) == (0, None, None)
    assert bob["rate_limit"] == {"requests": 1000, "interval": "1m"}  # the default limits
    assert "alice" not in json.dumps(bob) and "alice" not in json.dumps(bob_credits)

    # Errors too: a refused request's envelope.
    status, _, body = await post(proxy, {**CHAT, "model": OTHER_MODEL})
    assert status == 403
    texts.append(json.dumps(body))
    for secret in (ALICE_KEY, BOB_KEY, sha256(ALICE_KEY), sha256(BOB_KEY)):
        assert all(secret not in text for text in texts)
