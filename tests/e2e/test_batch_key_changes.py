"""An async batch follows its key: each item looks the key up again right before it runs,
so a key disabled, expired, removed or with its credits lowered by a config reload (or
before a restart resumes the batch) sends no further item upstream."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.reload import reload_config
from anyrouter_proxy.server.state import BATCHES
from anyrouter_proxy.storage.batches import BatchRecord
from tests.calls import post_json
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

MODEL = "openai/gpt-4o-mini"
ITEMS = 10

# What the key becomes, and the answer every item not yet started then gets.
CHANGES = {
    "disabled": ({"credits": 10, "disabled": True}, 403, "key_disabled"),
    "expired": ({"credits": 10, "expires_at": "2020-01-01T00:00:00Z"}, 401, "key_expired"),
    "removed": (None, 401, "invalid_api_key"),
    "credits_lowered": ({"credits": 0.000001}, 402, "insufficient_credits"),
}


def config_with(config_factory: ConfigFactory, fake: FakeOpenAI,
                alice: dict[str, Any] | None) -> Config:
    keys: dict[str, Any] = {"bob": {"key_sha256": sha256(BOB_KEY)}}
    if alice is not None:
        keys["alice"] = {"key_sha256": sha256(ALICE_KEY), **alice}
    return config_factory(
        providers={"openai": openai_provider(fake)},
        models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys=keys, batch={"max_concurrency": 1}, server={"shutdown_grace_s": 5})


def items() -> list[dict[str, Any]]:
    return [{"custom_id": f"i{n}", "method": "POST", "url": "/v1/chat/completions",
             "body": {"model": MODEL, "max_tokens": 50,
                      "messages": [{"role": "user", "content": f"i{n}"}]}}
            for n in range(ITEMS)]


async def start_batch(proxy: Proxy) -> str:
    status, _, body = await post_json(proxy, "/api/v1/batch",
                                      {"requests": items(), "mode": "async"})
    assert status == 202, body
    batch_id: str = body["id"]
    return batch_id


async def wait_for(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def finished(proxy: Proxy, batch_id: str) -> BatchRecord:
    """The batch once done, read from its store (the key may no longer read it)."""
    deadline = time.monotonic() + 10
    while True:
        loaded = await proxy.app[BATCHES].store.load(batch_id)
        if loaded is not None and loaded[0].status == "completed":
            return loaded[0]
        assert time.monotonic() < deadline, "the batch never finished"
        await asyncio.sleep(0.05)


def assert_refused(batch: BatchRecord, first_refused: int, status: int, code: str) -> None:
    results = batch.results
    assert all(r is not None for r in results)
    for result in results[:first_refused]:
        assert result is not None and result["response"]["status_code"] == 200
    for result in results[first_refused:]:
        assert result is not None and result["error"] is None, result
        response = result["response"]
        assert response["status_code"] == status, response
        assert response["body"]["error"]["code"] == code
        assert set(response["body"]["error"]) >= {"message", "type", "code", "param"}


@pytest.mark.parametrize("change", CHANGES)
async def test_a_reload_mid_batch_stops_the_items_not_yet_started(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy,
        change: str) -> None:
    alice, status, code = CHANGES[change]
    proxy = await start_proxy(config_with(config_factory, fake_openai, {"credits": 10}))
    fake_openai.then(Behaviour(delay_s=0.3))  # i0 is upstream while the config changes
    batch_id = await start_batch(proxy)
    await wait_for(lambda: len(fake_openai.requests) == 1)
    config_with(config_factory, fake_openai, alice)  # rewrites routes.yaml, then SIGHUP
    assert reload_config(proxy.app) is True
    batch = await finished(proxy, batch_id)
    assert len(fake_openai.requests) == 1  # i1..i9 never went upstream
    assert_refused(batch, 1, status, code)


@pytest.mark.parametrize("change", ["disabled", "credits_lowered"])
async def test_a_resumed_batch_checks_the_key_of_the_new_config(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy,
        change: str) -> None:
    alice, status, code = CHANGES[change]
    first = await start_proxy(config_with(config_factory, fake_openai, {"credits": 10}))
    fake_openai.then(Behaviour(delay_s=0.3))
    batch_id = await start_batch(first)
    await wait_for(lambda: len(fake_openai.requests) == 1)
    await first.server.close()  # i0 finishes within the grace; i1..i9 stay pending
    assert len(fake_openai.requests) == 1

    second = await start_proxy(config_with(config_factory, fake_openai, alice))
    batch = await finished(second, batch_id)
    assert len(fake_openai.requests) == 1
    assert_refused(batch, 1, status, code)


async def test_raised_credits_let_the_remaining_items_run(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    """The other way round: the items use the key as it is now, credits included."""
    proxy = await start_proxy(config_with(config_factory, fake_openai, {"credits": 10}))
    fake_openai.then(Behaviour(delay_s=0.3))
    batch_id = await start_batch(proxy)
    await wait_for(lambda: len(fake_openai.requests) == 1)
    config_with(config_factory, fake_openai, {"credits": 20})
    assert reload_config(proxy.app) is True
    batch = await finished(proxy, batch_id)
    assert len(fake_openai.requests) == ITEMS
    assert [r["response"]["status_code"] for r in batch.results if r is not None] == \
        [200] * ITEMS
