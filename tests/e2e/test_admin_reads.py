"""An admin key (keys.NAME.admin: true) reads every key's generations and batches; other
keys read only their own, and no key cancels another key's batch."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import FakeOpenAI

ROOT_KEY = "sk-ar-test-root-0123456789abcdef0123456789ab"
MODEL = "openai/gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": 1.0, "completion": 2.0},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY)},
              "bob": {"key_sha256": sha256(BOB_KEY)},
              "root": {"key_sha256": sha256(ROOT_KEY), "admin": True}})
    return await start_proxy(config)


async def call(session: aiohttp.ClientSession, method: str, url: str, key: str,
               **kwargs: Any) -> tuple[int, Any]:
    async with session.request(method, url, headers=auth(key), **kwargs) as response:
        return response.status, await response.json()


async def test_generation_of_another_key(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                                headers=auth(ALICE_KEY)) as response:
            gen_id = response.headers["X-AnyRouter-Generation-Id"]
        url = proxy.url(f"/api/v1/generation/{gen_id}")
        status, body = await call(session, "GET", url, ROOT_KEY)
        assert status == 200 and body["data"]["id"] == gen_id
        status, body = await call(session, "GET", url, BOB_KEY)
        assert status == 404 and body["error"]["code"] == "generation_not_found"
        status, body = await call(session, "GET", proxy.url(f"/v1/generation?id={gen_id}"),
                                  ROOT_KEY)
        assert status == 200 and body["data"]["tokens_prompt"] == 11
        # Every row has a generation time, a non-stream answer too.
        assert body["data"]["generation_time"] is not None
        assert 0 <= body["data"]["generation_time"] <= body["data"]["latency"]


async def test_batch_of_another_key_read_but_not_cancelled(proxy: Proxy) -> None:
    batch = {"requests": [{"custom_id": "one", "method": "POST",
                           "url": "/v1/chat/completions", "body": CHAT}]}
    async with aiohttp.ClientSession() as session:
        status, created = await call(session, "POST", proxy.url("/api/v1/batch"), ALICE_KEY,
                                     json=batch)
        assert status == 200
        url = proxy.url(f"/api/v1/batch/{created['id']}")
        status, body = await call(session, "GET", url, ROOT_KEY)
        assert status == 200 and body["id"] == created["id"]
        status, body = await call(session, "GET", url + "/results", ROOT_KEY)
        assert status == 200 and body["data"][0]["custom_id"] == "one"
        status, body = await call(session, "GET", url, BOB_KEY)
        assert status == 404 and body["error"]["code"] == "batch_not_found"
        status, body = await call(session, "POST", url + "/cancel", ROOT_KEY)
        assert status == 404 and body["error"]["code"] == "batch_not_found"
