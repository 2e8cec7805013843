"""model_limits apply to the model that answers: a fallback model (the `models` list, or
the only one left after X-AnyRouter-Provider or provider.only) takes from its own limits,
and is skipped like a provider at its limits when they are exhausted; on both quota
backends."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from anyrouter_proxy.config.model import Config, Limits
from tests.calls import post_json
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.quota_backends import redis_server, state_section  # noqa: F401

StartProxy = Callable[[Config], Awaitable[Proxy]]

PRIMARY, FALLBACK = "main/model", "spare/model"
CHAT = "/api/v1/chat/completions"
MSGS = [{"role": "user", "content": "hi"}]
PRICING = {"prompt": 1, "completion": 2}


def config(config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
           state: dict[str, Any], model_limits: dict[str, Any]) -> Config:
    return config_factory(
        providers={"openai": openai_provider(fake_openai, circuit={"failures": 1000}),
                   "backup": openai_provider(fake_backup)},
        models={PRIMARY: {"pricing": PRICING,
                          "routes": [{"provider": "openai", "model": "main"}]},
                FALLBACK: {"pricing": PRICING,
                           "routes": [{"provider": "backup", "model": "spare"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10,
                        "limits": {"requests_per_minute": 100},
                        "model_limits": model_limits}},
        server={"retries": 0}, state=state)


def body(**extra: Any) -> dict[str, Any]:
    return {"model": PRIMARY, "models": [FALLBACK], "messages": MSGS, "max_tokens": 20,
            **extra}


async def test_a_fallback_model_is_skipped_at_its_requests_per_minute(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_openai, fake_backup, state_section,
                                     {FALLBACK: {"requests_per_minute": 2}}))
    fake_openai.then(*[Behaviour(status=500)] * 5)  # the primary fails every time
    for _ in range(2):
        status, headers, data = await post_json(proxy, CHAT, body())
        assert status == 200, data
        assert headers["X-AnyRouter-Provider"] == "backup"
    for _ in range(3):
        status, _, data = await post_json(proxy, CHAT, body())
        assert status == 502, data  # the primary's failure: the fallback was skipped
    assert len(fake_backup.requests) == 2
    assert len(fake_openai.requests) == 5
    # The primary's own limits were not touched by the fallback's attempts.
    fake_openai.script.clear()
    status, _, _ = await post_json(proxy, CHAT, body())
    assert status == 200 and len(fake_openai.requests) == 6


async def test_skipped_everywhere_is_503_naming_the_model(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_openai, fake_backup, state_section,
                                     {FALLBACK: {"requests_per_minute": 1}}))
    fake_openai.then(Behaviour(status=500))
    assert (await post_json(proxy, CHAT, body()))[0] == 200  # answered by the fallback
    # The primary's only provider has its circuit open now, the fallback is at its limits.
    board = proxy.gateway.board
    for _ in range(1000):
        board.get("openai").failure(board.clock())
    status, _, data = await post_json(proxy, CHAT, body())
    assert status == 503, data
    assert "spare/model: at its model_limits" in data["error"]["message"]
    assert len(fake_backup.requests) == 1
    # As the first model of a request, the fallback model is refused at its limits.
    status, _, data = await post_json(proxy, CHAT, body(model=FALLBACK, models=[PRIMARY]))
    assert status == 429, data
    assert data["error"]["metadata"]["pattern"] == FALLBACK


@pytest.mark.parametrize("steer", ["header", "provider_only"])
async def test_a_model_reached_by_steering_takes_from_its_own_limits(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, state_section: dict[str, Any],  # noqa: F811
        steer: str) -> None:
    """Only the fallback model's route is left: its model_limits are the request's."""
    proxy = await start_proxy(config(config_factory, fake_openai, fake_backup, state_section,
                                     {FALLBACK: {"requests_per_minute": 1},
                                      PRIMARY: {"requests_per_minute": 1}}))
    headers = {"X-AnyRouter-Provider": "backup"} if steer == "header" else {}
    extra = {} if steer == "header" else {"provider": {"only": ["backup"]}}
    status, answer_headers, data = await post_json(proxy, CHAT, body(**extra),
                                                   headers=headers)
    assert status == 200, data
    assert answer_headers["X-AnyRouter-Provider"] == "backup"
    status, _, data = await post_json(proxy, CHAT, body(**extra), headers=headers)
    assert status == 429, data
    assert data["error"]["metadata"]["pattern"] == FALLBACK
    assert len(fake_backup.requests) == 1
    # The primary's limit is intact: it was never going to answer those.
    status, _, data = await post_json(proxy, CHAT, {"model": PRIMARY, "messages": MSGS})
    assert status == 200, data
    assert fake_openai.requests and len(fake_openai.requests) == 1


async def test_a_fallback_models_concurrency_slot_is_held_and_given_back(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(config(config_factory, fake_openai, fake_backup, state_section,
                                     {FALLBACK: {"concurrent_requests": 1}}))
    fake_openai.then(*[Behaviour(status=500)] * 2)
    fake_backup.then(Behaviour(delay_s=0.5))
    slow = asyncio.create_task(post_json(proxy, CHAT, body()))
    while not fake_backup.requests:  # the fallback answers slowly, holding its slot
        await asyncio.sleep(0.01)
    status, _, data = await post_json(proxy, CHAT, body())
    assert status == 502, data  # the primary's failure: the busy fallback was skipped
    assert len(fake_backup.requests) == 1
    assert (await slow)[0] == 200
    # Given back when the answer ended (a shared backend settles in the background).
    fake_openai.then(*[Behaviour(status=500)] * 50)
    deadline = time.monotonic() + 3
    while True:
        status, _, data = await post_json(proxy, CHAT, body())
        if status == 200:
            break
        assert time.monotonic() < deadline, "the fallback's slot was never given back"
        await asyncio.sleep(0.02)
    assert len(fake_backup.requests) == 2


async def test_an_answering_providers_concurrency_slot_is_given_back(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy, state_section: dict[str, Any]) -> None:  # noqa: F811
    """The attempt's holds (provider limits, a fallback model's limits) end with a whole
    answer too, not only with a stream."""
    base = config(config_factory, fake_openai, fake_backup, state_section,
                  {FALLBACK: {"concurrent_requests": 1}})
    provider = dataclasses.replace(base.providers["openai"],
                                   limits=Limits(concurrent_requests=1))
    proxy = await start_proxy(dataclasses.replace(
        base, providers={**base.providers, "openai": provider}))
    for _ in range(3):
        await eventually_ok(proxy, {"model": PRIMARY, "messages": MSGS})
        await eventually_ok(proxy, {"model": FALLBACK, "messages": MSGS, "models": [PRIMARY]})
    assert len(fake_openai.requests) == 3 and len(fake_backup.requests) == 3


async def eventually_ok(proxy: Proxy, request: dict[str, Any]) -> None:
    """200 within a moment (a shared backend releases a slot in the background)."""
    deadline = time.monotonic() + 3
    while True:
        status, _, data = await post_json(proxy, CHAT, request)
        if status == 200:
            return
        assert status == 503, data
        assert time.monotonic() < deadline, f"a slot was never given back: {data}"
        await asyncio.sleep(0.02)
