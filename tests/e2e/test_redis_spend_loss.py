"""Redis loses its data (FLUSHALL) while requests are in flight: their spend still counts,
and every key's spend is rebuilt from the usage log, as both replicas (two proxies in this
process on one Redis and one usage database) report it on /credits and /auth/key."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.redis_server import RedisServer, running_redis_server

StartProxy = Callable[[Config], Awaitable[Proxy]]
MODEL = "openai/gpt-4o-mini"
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 500}
CREDITS = 1.0


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    with running_redis_server() as server:
        yield server


@pytest.fixture
def config(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
           own_redis: RedisServer) -> Config:
    return config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": CREDITS},
              "bob": {"key_sha256": sha256(BOB_KEY), "credits": CREDITS}},
        state={"backend": "redis", "url": own_redis.url, "timeout_s": 5})


async def chat(session: aiohttp.ClientSession, proxy: Proxy, key: str = ALICE_KEY) -> None:
    async with session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth(key)) as response:
        assert response.status == 200, await response.text()
        await response.read()


async def flushall(server: RedisServer) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.flushall()
    finally:
        await client.aclose()


def logged_spend(config: Config) -> dict[str, float]:
    db = sqlite3.connect(config.storage.sqlite_path)
    try:
        return dict(db.execute("SELECT key_name, SUM(cost) FROM generations GROUP BY 1"))
    finally:
        db.close()


async def reported(session: aiohttp.ClientSession, proxy: Proxy, key: str
                   ) -> tuple[float, float]:
    """(/credits total_usage, /auth/key limit_remaining) of the key on that proxy."""
    async with session.get(proxy.url("/api/v1/credits"), headers=auth(key)) as response:
        usage = (await response.json())["data"]["total_usage"]
    async with session.get(proxy.url("/api/v1/auth/key"), headers=auth(key)) as response:
        remaining = (await response.json())["data"]["limit_remaining"]
    return float(usage), float(remaining)


async def in_flight(fake: FakeOpenAI, count: int) -> None:
    while len(fake.requests) < count:
        await asyncio.sleep(0.01)


async def assert_rebuilt(session: aiohttp.ClientSession, proxies: list[Proxy],
                         config: Config) -> None:
    for proxy in proxies:
        await proxy.flush()
    spend = logged_spend(config)
    assert spend["alice"] > 0 and spend["bob"] > 0
    for replica, proxy in enumerate(proxies):
        for key, name in ((ALICE_KEY, "alice"), (BOB_KEY, "bob")):
            usage, remaining = await reported(session, proxy, key)
            assert usage == pytest.approx(spend[name], abs=1e-9), (replica, name)
            assert remaining == pytest.approx(CREDITS - spend[name], abs=1e-9), (replica, name)


async def test_flushall_with_requests_in_flight_on_two_replicas(
        config: Config, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        own_redis: RedisServer) -> None:
    one, two = await start_proxy(config), await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        for key in (ALICE_KEY, ALICE_KEY, BOB_KEY):  # spend the second replica never saw
            await chat(session, one, key)
        done = len(fake_openai.requests)
        fake_openai.then(*[Behaviour(delay_s=2.5) for _ in range(4)])
        slow = [asyncio.ensure_future(chat(session, proxy))
                for proxy in (one, two, one, two)]
        await in_flight(fake_openai, done + 4)  # all four have reserved their credit
        await flushall(own_redis)
        await asyncio.gather(*slow)
        await assert_rebuilt(session, [one, two], config)
        await chat(session, two)  # business as usual
        await assert_rebuilt(session, [one, two], config)


async def test_flushall_just_before_requests_settle(
        config: Config, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        own_redis: RedisServer) -> None:
    """They settle before the marker is next looked at: their settlements still count,
    and report that Redis lost its data, so the spend is rebuilt at once."""
    proxy = await start_proxy(config)
    async with aiohttp.ClientSession() as session:
        await chat(session, proxy, BOB_KEY)
        await chat(session, proxy)
        done = len(fake_openai.requests)
        fake_openai.then(*[Behaviour(delay_s=0.3) for _ in range(3)])
        slow = [asyncio.ensure_future(chat(session, proxy)) for _ in range(3)]
        await in_flight(fake_openai, done + 3)
        await flushall(own_redis)
        await asyncio.gather(*slow)
        await assert_rebuilt(session, [proxy], config)
