"""Periodic budgets (`keys.NAME.budget: {usd, period}`) end to end over real HTTP: the
proxy on a socket with a FakeOpenAI upstream, its usage log in a real SQLite file, and
its state in this process or (the same tests again) in a real redis-server; the official
openai SDK where a user would use it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.limits.budget import window
from anyrouter_proxy.pricing import estimate_prompt_tokens
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.redis_server import RedisServer, running_redis_server

StartProxy = Callable[[Config], Awaitable[Proxy]]
ConfigFor = Callable[..., Config]

MODEL = "openai/gpt-4o-mini"
PROMPT_PRICE, COMPLETION_PRICE = 0.15, 0.60  # USD per 1M tokens
MESSAGES = [{"role": "user", "content": "hi"}]
MAX_TOKENS = 100
BODY: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
PROMPT_ESTIMATE = estimate_prompt_tokens(BODY)
WORST = (PROMPT_ESTIMATE * PROMPT_PRICE + MAX_TOKENS * COMPLETION_PRICE) / 1_000_000


def exact_reply() -> dict[str, Any]:
    """Usage equal to BODY's worst case: a settled request spends all it reserved."""
    return {"id": "chatcmpl-exact", "object": "chat.completion", "created": 0,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "finish_reason": "length",
                         "message": {"role": "assistant", "content": "ok"}}],
            "usage": {"prompt_tokens": PROMPT_ESTIMATE, "completion_tokens": MAX_TOKENS,
                      "total_tokens": PROMPT_ESTIMATE + MAX_TOKENS}}


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture(params=["memory", "redis"])
def state(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The `state:` section: this process, or a redis-server with a prefix of the test's."""
    if request.param == "memory":
        return {}
    server: RedisServer = request.getfixturevalue("redis_server")
    return {"backend": "redis", "url": server.url, "timeout_s": 5,  # no flaky fallback
            "key_prefix": f"budget{uuid.uuid4().hex[:10]}:"}


@pytest.fixture
def config_for(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
               state: dict[str, Any]) -> ConfigFor:
    """alice's and bob's key fields as given; the fake as provider `openai`."""

    def make(alice: dict[str, Any] | None = None, bob: dict[str, Any] | None = None,
             **override: Any) -> Config:
        pricing = {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE}
        return config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models={MODEL: {"pricing": pricing,
                            "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
            keys={"alice": {"key_sha256": sha256(ALICE_KEY), **(alice or {})},
                  "bob": {"key_sha256": sha256(BOB_KEY), **(bob or {})}},
            **({"state": {**state, **override}} if state or override else {}))

    return make


async def post(proxy: Proxy, body: dict[str, Any] = BODY,
               key: str = ALICE_KEY) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json=body, headers=auth(key)) as response:
        return response.status, await response.json()


async def get(proxy: Proxy, path: str, key: str = ALICE_KEY) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth(key)) as response:
        assert response.status == 200
        return await response.json()


async def scrape(proxy: Proxy) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """/metrics as {(sample name, sorted labels): value}."""
    async with aiohttp.ClientSession() as session, session.get(proxy.url("/metrics")) as r:
        text = await r.text()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def iso_utc(text: str) -> float:
    assert text.endswith("Z")
    return dt.datetime.fromisoformat(text).timestamp()


def add_usage_row(db: Path, key_name: str, cost: float, created_at: float) -> None:
    """A usage row written straight into the log, as an earlier run would have left it."""
    with sqlite3.connect(db) as conn:
        conn.execute(
            "INSERT INTO generations (id, created_at, key_name, endpoint, model, streamed, "
            "cancelled, status_code, tokens_prompt, tokens_completion, tokens_cached, "
            "tokens_reasoning, tokens_cache_write, usage_source, cost, latency_ms, attempts) "
            "VALUES (?, ?, ?, 'chat', ?, 0, 0, 200, 0, 0, 0, 0, 0, 'provider', ?, 1, '[]')",
            (f"gen-{uuid.uuid4().hex}", created_at, key_name, MODEL, cost))
    conn.close()


async def test_budget_exceeded_402_through_openai_sdk(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for(alice={"budget": {"usd": 2 * WORST,
                                                           "period": "day"}}))
    fake_openai.then(*[Behaviour(body=exact_reply()) for _ in range(2)])
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    try:
        for _ in range(2):
            await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                 max_tokens=MAX_TOKENS)
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(model=MODEL, messages=MESSAGES,
                                                 max_tokens=MAX_TOKENS)
    finally:
        await client.close()
    assert len(fake_openai.requests) == 2  # the third never went upstream
    exc = caught.value
    assert exc.status_code == 402
    assert exc.code == "budget_exceeded" and exc.type == "insufficient_credits"
    error = exc.response.json()["error"]
    tomorrow = window("day", time.time()).end
    resets_at = dt.datetime.fromtimestamp(tomorrow, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert error["message"].startswith(
        "Budget exceeded for key alice: $0.00 of its daily budget of $0.0001")
    assert f" remaining until it resets at {resets_at}, this request may cost up to $0.0000" \
        in error["message"]
    assert error["param"] is None
    meta = error["metadata"]
    assert meta["key"] == "alice" and meta["period"] == "day"
    assert meta["usd"] == pytest.approx(2 * WORST)
    assert meta["spent"] == pytest.approx(2 * WORST) and meta["remaining"] == 0
    assert meta["requested"] == pytest.approx(WORST)
    assert iso_utc(meta["resets_at"]) == tomorrow
    assert iso_utc(meta["period_start"]) == window("day", time.time()).start
    await proxy.flush()  # refused, yet in the log: a usage row and an audit event
    with sqlite3.connect(proxy.config.storage.sqlite_path) as db:
        refused = db.execute("SELECT status_code, error_code, cost FROM generations "
                             "WHERE status_code = 402").fetchall()
        events = db.execute("SELECT key_name FROM audit WHERE event = 'budget_exceeded'"
                            ).fetchall()
    db.close()
    assert refused == [(402, "budget_exceeded", 0.0)] and events == [("alice",)]
    # bob has no budget and is not affected
    status, _ = await post(proxy, key=BOB_KEY)
    assert status == 200


async def test_fifty_concurrent_requests_never_spend_past_the_budget(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    budget = 10 * WORST
    proxy = await start_proxy(config_for(alice={"budget": {"usd": budget, "period": "week"},
                                                "credits": 100.0}))
    fake_openai.then(*[Behaviour(delay_s=0.2, body=exact_reply()) for _ in range(50)])
    results = await asyncio.gather(*(post(proxy) for _ in range(50)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 10
    assert statuses.count(402) == 40
    assert {body["error"]["code"] for status, body in results if status == 402} == \
        {"budget_exceeded"}
    assert len(fake_openai.requests) == 10
    data = (await get(proxy, "/api/v1/credits"))["data"]
    assert data["budget"]["spent"] == pytest.approx(budget, rel=1e-9)  # $0.00 over
    assert data["budget"]["spent"] <= budget + 1e-12
    assert data["budget"]["reserved"] == 0 and data["budget"]["remaining"] == 0
    assert data["total_usage"] == pytest.approx(budget, rel=1e-9)


async def test_restart_reloads_the_periods_spend_and_not_the_last_periods(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        state: dict[str, Any]) -> None:
    alice = {"budget": {"usd": 3 * WORST, "period": "week"}}
    config = config_for(alice=alice)
    first = await start_proxy(config)
    fake_openai.then(*[Behaviour(body=exact_reply()) for _ in range(2)])
    for _ in range(2):
        assert (await post(first))[0] == 200
    await first.server.close()  # runs the app's cleanup: the usage log is flushed and closed
    week = window("week", time.time())
    add_usage_row(config.storage.sqlite_path, "alice", 5.0, week.start - 0.5)  # last week

    # A new Redis prefix: as if Redis had lost everything, the log is all there is.
    second = await start_proxy(config_for(alice=alice, **(
        {"key_prefix": f"budget{uuid.uuid4().hex[:10]}:"} if state else {})))
    data = (await get(second, "/api/v1/credits"))["data"]
    assert data["total_usage"] == pytest.approx(5.0 + 2 * WORST, rel=1e-9)  # lifetime
    assert data["budget"]["spent"] == pytest.approx(2 * WORST, rel=1e-9)  # this week only
    assert data["budget"]["remaining"] == pytest.approx(WORST, rel=1e-9)
    fake_openai.then(Behaviour(body=exact_reply()))
    assert (await post(second))[0] == 200
    status, body = await post(second)
    assert status == 402 and body["error"]["code"] == "budget_exceeded"
    assert len(fake_openai.requests) == 3


async def test_credits_and_key_info_report_the_budget(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(
        alice={"credits": 5.0, "budget": {"usd": 1.5, "period": "month"}}))
    assert (await post(proxy))[0] == 200
    spent = (await get(proxy, "/api/v1/credits"))["data"]["total_usage"]
    assert spent > 0
    month = window("month", time.time())
    expected = {"usd": 1.5, "period": "month",
                "period_start": dt.datetime.fromtimestamp(month.start, dt.UTC)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "resets_at": dt.datetime.fromtimestamp(month.end, dt.UTC)
                .strftime("%Y-%m-%dT%H:%M:%SZ"),
                "spent": spent, "reserved": 0, "remaining": pytest.approx(1.5 - spent)}
    credits = (await get(proxy, "/api/v1/credits"))["data"]
    assert credits == {"total_credits": 5.0, "total_usage": spent, "budget": expected}
    info = (await get(proxy, "/api/v1/auth/key"))["data"]
    assert info["budget"] == expected
    assert info["label"] == "alice" and info["usage"] == spent and info["limit"] == 5.0
    assert info["limit_remaining"] == pytest.approx(5.0 - spent)
    assert (await get(proxy, "/api/v1/key"))["data"]["budget"] == expected
    # a key without a budget: null, every other field as before
    bob = (await get(proxy, "/api/v1/credits", BOB_KEY))["data"]
    assert bob == {"total_credits": None, "total_usage": 0, "budget": None}
    assert (await get(proxy, "/api/v1/auth/key", BOB_KEY))["data"]["budget"] is None


async def test_metrics_gauge_budget_remaining_per_key(
        config_for: ConfigFor, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_for(alice={"budget": {"usd": 2.0, "period": "day"}}))
    assert (await post(proxy))[0] == 200
    spent = (await get(proxy, "/api/v1/credits"))["data"]["budget"]["spent"]
    samples = await scrape(proxy)
    gauge = "anyrouter_key_budget_remaining_usd"
    assert samples[(gauge, (("key", "alice"),))] == pytest.approx(2.0 - spent)
    assert not any(name == gauge and labels == (("key", "bob"),) for name, labels in samples)
    assert not any(name == "anyrouter_rejections_total" for name, _ in samples)
    proxy.gateway.reconfigure(config_for(alice={"budget": {"usd": spent, "period": "day"}}))
    status, _ = await post(proxy)
    assert status == 402
    samples = await scrape(proxy)
    assert samples[(gauge, (("key", "alice"),))] == 0
    assert samples[("anyrouter_rejections_total",
                    (("key", "alice"), ("reason", "budget_exceeded")))] == 1


async def test_a_budget_added_by_a_reload_counts_the_period_so_far(
        config_for: ConfigFor, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_for())
    fake_openai.then(*[Behaviour(body=exact_reply()) for _ in range(2)])
    for _ in range(2):
        assert (await post(proxy))[0] == 200
    proxy.gateway.reconfigure(config_for(alice={"budget": {"usd": 2.5 * WORST,
                                                           "period": "day"}}))
    status, body = await post(proxy)
    assert status == 402 and body["error"]["code"] == "budget_exceeded"
    assert body["error"]["metadata"]["spent"] == pytest.approx(2 * WORST, rel=1e-9)
    proxy.gateway.reconfigure(config_for(alice={"budget": {"usd": 3 * WORST,
                                                           "period": "day"}}))
    fake_openai.then(Behaviour(body=exact_reply()))
    assert (await post(proxy))[0] == 200


async def test_two_replicas_together_never_pass_the_budget(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy,
        redis_server: RedisServer) -> None:
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY),
                        "budget": {"usd": 10 * WORST, "period": "day"}}},
        state={"backend": "redis", "url": redis_server.url, "timeout_s": 5,
               "key_prefix": f"budget{uuid.uuid4().hex[:10]}:"})
    one, two = await start_proxy(config), await start_proxy(config)
    fake_openai.then(*[Behaviour(delay_s=0.2, body=exact_reply()) for _ in range(60)])
    results = await asyncio.gather(*(post(one if i % 2 else two) for i in range(60)))
    statuses = [status for status, _ in results]
    assert statuses.count(200) == 10 and statuses.count(402) == 50
    assert len(fake_openai.requests) == 10
    for proxy in (one, two):
        budget = (await get(proxy, "/api/v1/auth/key"))["data"]["budget"]
        assert budget["spent"] == pytest.approx(10 * WORST, rel=1e-9)
        assert budget["remaining"] == 0 and budget["reserved"] == 0
    status, body = await post(one)
    assert status == 402 and body["error"]["code"] == "budget_exceeded"
