"""Wildcard models: `groq/*` serves every id under `groq/`, the route's `*` taking the rest of
the id; exact entries and longer prefixes win; allow-lists, model_limits, /models and the
usage log see the concrete id, metrics the wildcard."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]
HI = [{"role": "user", "content": "hi"}]


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_backup: FakeOpenAI, start_proxy: StartProxy) -> Proxy:
    """`groq` is fake_openai, `other` is fake_backup."""
    return await start_proxy(config_factory(
        providers={"groq": openai_provider(fake_openai), "other": openai_provider(fake_backup)},
        models={
            "groq/*": {"name": "Any Groq model", "pricing": {"prompt": 0.59, "completion": 0.79},
                       "routes": [{"provider": "groq", "model": "*"}]},
            "groq/meta-llama/*": {"pricing": {"prompt": 0.11, "completion": 0.34},
                                  "routes": [{"provider": "other", "model": "meta-llama/*"}]},
            "groq/llama-3.1-8b-instant": {
                "pricing": {"prompt": 0.05, "completion": 0.08},
                "routes": [{"provider": "other", "model": "exact-8b"}]},
            "fireworks/*": {"pricing": {"prompt": 0.2, "completion": 0.2}, "routes": [
                {"provider": "other", "model": "accounts/fireworks/models/*"}]},
        },
        keys={"alice": {"key_sha256": sha256(ALICE_KEY),
                        "model_limits": {"groq/mixtral-*": {"requests_per_minute": 1}}},
              "bob": {"key_sha256": sha256(BOB_KEY), "models": ["groq/llama-*"]}}))


@pytest.fixture
async def alice(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        yield sdk


async def row_of(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200
        data: dict[str, Any] = (await response.json())["data"]
        return data


async def test_the_rest_of_the_id_goes_upstream(alice: openai.AsyncOpenAI, proxy: Proxy,
                                                fake_openai: FakeOpenAI) -> None:
    completion = await alice.chat.completions.create(model="groq/llama-3.3-70b-versatile",
                                                     messages=HI)
    assert completion.model == "groq/llama-3.3-70b-versatile"
    assert fake_openai.requests[0].body["model"] == "llama-3.3-70b-versatile"
    row = await row_of(proxy, completion.id)
    assert row["model"] == "groq/llama-3.3-70b-versatile"
    assert row["upstream_model"] == "llama-3.3-70b-versatile"
    assert row["total_cost"] == pytest.approx((11 * 0.59 + 5 * 0.79) / 1e6)


@pytest.mark.parametrize(("model", "upstream"), [
    ("groq/llama-3.1-8b-instant", "exact-8b"),  # the exact entry wins
    ("groq/meta-llama/llama-4-scout", "meta-llama/llama-4-scout"),  # the longer prefix wins
    ("fireworks/llama-v3p1-8b-instruct", "accounts/fireworks/models/llama-v3p1-8b-instruct"),
])
async def test_exact_entries_and_longer_prefixes_win(alice: openai.AsyncOpenAI,
                                                     fake_openai: FakeOpenAI,
                                                     fake_backup: FakeOpenAI, model: str,
                                                     upstream: str) -> None:
    await alice.chat.completions.create(model=model, messages=HI)
    assert fake_openai.requests == []
    assert fake_backup.requests[0].body["model"] == upstream


@pytest.mark.parametrize(("model", "message"), [
    ("groq/*", "Model groq/* is a wildcard: ask for a model under it, such as groq/MODEL"),
    ("groq/", "Model groq/ does not exist"),
    ("groq/two words", "Model groq/two words does not exist"),
    ("mistral/mistral-large", "Model mistral/mistral-large does not exist"),
])
async def test_ids_no_wildcard_serves_are_not_found(alice: openai.AsyncOpenAI,
                                                    fake_openai: FakeOpenAI, model: str,
                                                    message: str) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await alice.chat.completions.create(model=model, messages=HI)
    assert info.value.code == "model_not_found"
    assert isinstance(info.value.body, dict) and info.value.body["message"] == message
    assert fake_openai.requests == []


async def test_models_lists_the_wildcard_and_retrieves_ids_under_it(
        alice: openai.AsyncOpenAI, proxy: Proxy) -> None:
    listed = {m.id: m for m in (await alice.models.list()).data}
    assert set(listed) == {"groq/*", "groq/meta-llama/*", "groq/llama-3.1-8b-instant",
                           "fireworks/*"}
    assert listed["groq/*"].model_extra is not None
    assert listed["groq/*"].model_extra["wildcard"] == "groq/*"
    assert "wildcard" not in (listed["groq/llama-3.1-8b-instant"].model_extra or {})
    model = await alice.models.retrieve("groq/qwen-qwq-32b")  # sent percent-encoded
    assert model.id == "groq/qwen-qwq-32b"
    extra = model.model_extra or {}
    assert extra["wildcard"] == "groq/*" and extra["name"] == "groq/qwen-qwq-32b"
    assert extra["pricing"]["prompt"] == "0.00000059"
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url("/api/v1/models/groq/meta-llama/llama-4"),
                               headers=auth()) as response:
            assert (await response.json())["wildcard"] == "groq/meta-llama/*"
        async with session.get(proxy.url("/api/v1/models/groq/"), headers=auth()) as response:
            assert response.status == 404


async def test_allow_lists_match_the_concrete_id(proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=BOB_KEY,
                                  max_retries=0) as bob:
        await bob.chat.completions.create(model="groq/llama-3.3-70b-versatile", messages=HI)
        with pytest.raises(openai.PermissionDeniedError) as info:
            await bob.chat.completions.create(model="groq/mixtral-8x7b-32768", messages=HI)
    assert info.value.code == "model_not_allowed"
    assert [r.body["model"] for r in fake_openai.requests] == ["llama-3.3-70b-versatile"]


async def test_model_limits_match_the_concrete_id(alice: openai.AsyncOpenAI) -> None:
    await alice.chat.completions.create(model="groq/mixtral-8x7b-32768", messages=HI)
    with pytest.raises(openai.RateLimitError) as info:
        await alice.chat.completions.create(model="groq/mixtral-8x7b-32768", messages=HI)
    assert "groq/mixtral-*" in info.value.message
    # Another id under the same wildcard is not under that entry.
    await alice.chat.completions.create(model="groq/gemma2-9b-it", messages=HI)


async def test_metrics_count_under_the_wildcard(alice: openai.AsyncOpenAI, proxy: Proxy) -> None:
    for model in ("groq/a-model", "groq/b-model", "groq/llama-3.1-8b-instant"):
        await alice.chat.completions.create(model=model, messages=HI)
    async with aiohttp.ClientSession() as session, session.get(proxy.url("/metrics")) as response:
        text = await response.text()
    requests = [line for line in text.splitlines()
                if line.startswith("anyrouter_requests_total{")]
    assert any('model="groq/*"' in line and line.endswith(" 2.0") for line in requests), requests
    assert any('model="groq/llama-3.1-8b-instant"' in line for line in requests)
    assert "groq/a-model" not in text and "groq/b-model" not in text
