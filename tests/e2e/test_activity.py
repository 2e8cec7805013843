"""GET /activity over real HTTP on both usage-log backends: each key sees its own rows,
an admin key every key's, and the days asked for are the days answered."""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.state import STORE
from anyrouter_proxy.types import GenerationRecord, Usage
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.usage_backends import pg_cluster, storage  # noqa: F401  (fixtures)

ROOT_KEY = "sk-ar-test-root-0123456789abcdef0123456789ab"
MODEL = "openai/gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
MARCH_1 = dt.datetime(2024, 3, 1, 23, 59, 59, tzinfo=dt.UTC).timestamp()
MARCH_2 = dt.datetime(2024, 3, 2, 0, 0, 0, tzinfo=dt.UTC).timestamp()

StartProxy = Callable[[Config], Awaitable[Proxy]]


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                start_proxy: StartProxy, storage: dict[str, Any]) -> Proxy:  # noqa: F811
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": 1.0, "completion": 2.0},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY)},
              "bob": {"key_sha256": sha256(BOB_KEY)},
              "root": {"key_sha256": sha256(ROOT_KEY), "admin": True}},
        storage=storage)
    return await start_proxy(config)


def past(gen_id: str, key: str, at: float, cost: float) -> GenerationRecord:
    return GenerationRecord(id=gen_id, created_at=at, key_name=key, endpoint="chat",
                            model=MODEL, provider="openai", cost=cost, latency_ms=10.0,
                            usage=Usage(prompt_tokens=7, completion_tokens=3,
                                        reasoning_tokens=2, cached_tokens=1))


async def traffic(proxy: Proxy, fake: FakeOpenAI) -> None:
    """alice: two answers and one upstream failure today; bob: one answer today; and one
    row each at the edges of 2024-03-01 / 2024-03-02 (UTC)."""
    fake.then(Behaviour(), Behaviour(), Behaviour(status=400, body={"error": {
        "message": "bad", "type": "invalid_request_error"}}), Behaviour())
    async with aiohttp.ClientSession() as session:
        for key in (ALICE_KEY, ALICE_KEY, ALICE_KEY, BOB_KEY):
            async with session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                                    headers=auth(key)) as response:
                await response.read()
    store = proxy.app[STORE]
    store.record(past("gen-march-1", "alice", MARCH_1, 0.25))
    store.record(past("gen-march-2", "bob", MARCH_2, 0.5))
    await proxy.flush()


async def get(proxy: Proxy, api_key: str, path: str = "/api/v1/activity",
              **query: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), params=query, headers=auth(api_key)) as response:
        return response.status, await response.json()


async def test_each_key_sees_only_its_own_rows(proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    await traffic(proxy, fake_openai)
    today = dt.datetime.now(dt.UTC).date().isoformat()

    status, body = await get(proxy, ALICE_KEY)
    assert status == 200
    assert body["data"] == [{
        "date": today, "model": MODEL, "provider_name": "openai", "key_name": "alice",
        "requests": 3, "prompt_tokens": 22, "completion_tokens": 10, "reasoning_tokens": 0,
        "cached_tokens": 6, "usage": pytest.approx(2 * (11 * 1e-6 + 5 * 2e-6)),
        "errors": 1}]
    status, body = await get(proxy, BOB_KEY, "/v1/activity")
    assert status == 200
    assert [(r["key_name"], r["requests"], r["errors"]) for r in body["data"]] == [
        ("bob", 1, 0)]


async def test_another_keys_rows_need_an_admin_key(proxy: Proxy,
                                                   fake_openai: FakeOpenAI) -> None:
    await traffic(proxy, fake_openai)
    status, body = await get(proxy, ALICE_KEY, key="bob")
    assert status == 403
    assert body["error"]["type"] == "permission_error"
    assert body["error"]["code"] == "admin_required"
    assert body["error"]["param"] == "key"
    status, body = await get(proxy, ALICE_KEY, key="alice")
    assert status == 200 and {r["key_name"] for r in body["data"]} == {"alice"}


async def test_an_admin_key_sees_every_key_or_the_one_it_names(
        proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    await traffic(proxy, fake_openai)
    status, body = await get(proxy, ROOT_KEY)
    assert status == 200
    assert {r["key_name"]: r["requests"] for r in body["data"]} == {"alice": 3, "bob": 1}
    status, body = await get(proxy, ROOT_KEY, key="bob", since="2024-01-01")
    assert status == 200
    assert [(r["date"], r["key_name"]) for r in body["data"]] == [
        ("2024-03-02", "bob"), (dt.datetime.now(dt.UTC).date().isoformat(), "bob")]


async def test_since_and_until_are_utc_days_both_included(
        proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    await traffic(proxy, fake_openai)
    status, body = await get(proxy, ROOT_KEY, since="2024-03-01", until="2024-03-01")
    assert status == 200
    assert body["data"] == [{
        "date": "2024-03-01", "model": MODEL, "provider_name": "openai", "key_name": "alice",
        "requests": 1, "prompt_tokens": 7, "completion_tokens": 3, "reasoning_tokens": 2,
        "cached_tokens": 1, "usage": 0.25, "errors": 0}]
    status, body = await get(proxy, ROOT_KEY, since="2024-02-01", until="2024-03-02")
    assert [r["date"] for r in body["data"]] == ["2024-03-01", "2024-03-02"]
    status, body = await get(proxy, ROOT_KEY, date="2024-03-02")
    assert [(r["date"], r["usage"]) for r in body["data"]] == [("2024-03-02", 0.5)]
    # The default is the last 30 days: the 2024 rows are not in it.
    status, body = await get(proxy, ROOT_KEY)
    assert all(r["date"] > "2024-12-31" for r in body["data"]) and body["data"]


async def test_a_replaced_generation_is_counted_once(proxy: Proxy) -> None:
    store = proxy.app[STORE]
    store.record(past("gen-twice", "alice", MARCH_1, 0.25))
    await proxy.flush()
    again = past("gen-twice", "alice", MARCH_1, 0.75)
    again.status_code = 502
    store.record(again)
    await proxy.flush()
    status, body = await get(proxy, ALICE_KEY, date="2024-03-01")
    assert status == 200
    assert [(r["requests"], r["usage"], r["errors"]) for r in body["data"]] == [(1, 0.75, 1)]


@pytest.mark.parametrize(("query", "param"), [
    ({"since": "yesterday"}, "since"), ({"until": "2024-13-01"}, "until"),
    ({"since": "2024-03-02T00:00"}, "since"),
    ({"since": "2024-03-03", "until": "2024-03-02"}, "since")])
async def test_bad_days_are_400(proxy: Proxy, query: dict[str, str], param: str) -> None:
    status, body = await get(proxy, ALICE_KEY, **query)
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param


async def test_without_a_key_is_401(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/api/v1/activity")) as response:
        assert response.status == 401
        assert (await response.json())["error"]["code"] == "missing_api_key"
