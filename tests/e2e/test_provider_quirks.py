"""Quirks of OpenAI-compatible providers: an upstream that rejects stream_options (Mistral's
422), upstream validation errors passed on with their reason, and OpenRouter's routing
fields forwarded to a provider that is OpenRouter."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import (
    ALICE_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
)
from tests.fake_strict import ANSWER_WORDS, USAGE, FakeStrict
from tests.fakes import Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]
HI = [{"role": "user", "content": "Salut"}]
PRICING = {"prompt": 0.1, "completion": 0.3}


async def serve_strict(aiohttp_server: Any, *, stream_usage: bool = True) -> FakeStrict:
    fake = FakeStrict(stream_usage=stream_usage)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))
    return fake


async def strict_proxy(config_factory: ConfigFactory, start_proxy: StartProxy,
                       fake: FakeStrict, **provider: Any) -> Proxy:
    return await start_proxy(config_factory(
        providers={"mistral": {"kind": "openai", "base_url": fake.base_url,
                               "api_key": PROVIDER_KEY, **provider}},
        models={"mistral/mistral-small": {"pricing": PRICING, "routes": [
            {"provider": "mistral", "model": "mistral-small-latest"}]}}))


async def row_of(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200
        data: dict[str, Any] = (await response.json())["data"]
        return data


async def test_a_provider_rejecting_stream_options_says_why(
        aiohttp_server: Any, config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    fake = await serve_strict(aiohttp_server)
    proxy = await strict_proxy(config_factory, start_proxy, fake)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await sdk.chat.completions.create(model="mistral/mistral-small", messages=HI,
                                              stream=True)
    error = info.value
    assert error.status_code == 422
    assert "stream_options: Extra inputs are not permitted (extra_forbidden)" in error.message
    assert error.code == "unsupported_parameter" and error.param == "stream_options"
    assert fake.requests[0].body["stream_options"] == {"include_usage": True}


@pytest.mark.parametrize("include_usage", [False, True])
async def test_stream_options_off_streams_with_the_providers_usage(
        aiohttp_server: Any, config_factory: ConfigFactory, start_proxy: StartProxy,
        include_usage: bool) -> None:
    fake = await serve_strict(aiohttp_server)
    proxy = await strict_proxy(config_factory, start_proxy, fake, stream_options=False)
    extra: dict[str, Any] = {"stream_options": {"include_usage": True}} if include_usage else {}
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="mistral/mistral-small", messages=HI,
                                                   stream=True, **extra)
        chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == \
        "".join(ANSWER_WORDS)
    assert "stream_options" not in fake.requests[0].body  # not even the client's own
    usages = [c.usage for c in chunks if c.usage is not None]
    if include_usage:  # what the provider sent unasked reaches a client that asked
        assert [u.completion_tokens for u in usages] == [USAGE["completion_tokens"]]
    else:
        assert usages == []
    row = await row_of(proxy, chunks[0].id)
    assert row["usage_source"] == "provider"
    assert (row["tokens_prompt"], row["tokens_completion"]) == (9, 5)
    assert row["total_cost"] == pytest.approx((9 * 0.1 + 5 * 0.3) / 1e6)


async def test_stream_options_off_without_usage_is_estimated(
        aiohttp_server: Any, config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    fake = await serve_strict(aiohttp_server, stream_usage=False)
    proxy = await strict_proxy(config_factory, start_proxy, fake, stream_options=False)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        stream = await sdk.chat.completions.create(model="mistral/mistral-small", messages=HI,
                                                   stream=True)
        chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices[0].finish_reason == "stop"
    row = await row_of(proxy, chunks[0].id)
    assert row["usage_source"] == "estimated"
    assert row["tokens_prompt"] > 0 and row["tokens_completion"] > 0
    assert row["total_cost"] > 0


@pytest.mark.parametrize(("body", "message", "param"), [
    ({"detail": [{"type": "missing", "loc": ["body", "messages", 0, "content"],
                  "msg": "Field required", "input": {"role": "user"}}]},
     "messages[0].content: Field required (missing)", "messages[0].content"),
    ({"detail": "Model mistral-small-latest does not take images"},
     "Model mistral-small-latest does not take images", None),
    ({"object": "error", "message": "Invalid model: mistral-smol", "type": "invalid_model",
      "param": None, "code": "1500"}, "Invalid model: mistral-smol", None),
])
async def test_upstream_validation_errors_keep_their_reason(
        openai_proxy: Proxy, fake_openai: FakeOpenAI, body: dict[str, Any], message: str,
        param: str | None) -> None:
    fake_openai.then(Behaviour(status=422, body=body))
    async with openai.AsyncOpenAI(base_url=openai_proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await sdk.chat.completions.create(model="openai/gpt-4o-mini", messages=HI)
    assert message in info.value.message
    assert info.value.param == param
    assert info.value.code == "invalid_request"  # no code of its own worth passing on
    assert "input" not in str(info.value.body)  # the rejected input is never echoed


# --- OpenRouter's routing fields ------------------------------------------------------------

OPENROUTER_FIELDS = {
    "provider": {"order": ["Together", "DeepInfra"], "only": ["Together", "DeepInfra"],
                 "allow_fallbacks": False},
    "models": ["meta-llama/llama-3.1-70b-instruct", "mistralai/mixtral-8x7b-instruct"],
    "route": "fallback",
    "transforms": ["middle-out"],
}


async def openrouter_proxy(config_factory: ConfigFactory, start_proxy: StartProxy,
                           fake: FakeOpenAI, forward: bool) -> Proxy:
    return await start_proxy(config_factory(
        providers={"openrouter": openai_provider(fake, forward_routing_fields=forward)},
        models={"openrouter/*": {"pricing": {"prompt": 0.4, "completion": 0.4},
                                 "routes": [{"provider": "openrouter", "model": "*"}]}}))


async def test_routing_fields_go_to_openrouter_as_sent(config_factory: ConfigFactory,
                                                       start_proxy: StartProxy,
                                                       fake_openai: FakeOpenAI) -> None:
    proxy = await openrouter_proxy(config_factory, start_proxy, fake_openai, forward=True)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(
            model="openrouter/meta-llama/llama-3.3-70b-instruct", messages=HI,
            extra_body=OPENROUTER_FIELDS)
    assert completion.choices[0].message.content
    upstream = fake_openai.requests[0].body
    assert upstream["model"] == "meta-llama/llama-3.3-70b-instruct"
    assert {name: upstream[name] for name in OPENROUTER_FIELDS} == OPENROUTER_FIELDS


async def test_routing_fields_are_the_proxys_without_the_option(
        config_factory: ConfigFactory, start_proxy: StartProxy,
        fake_openai: FakeOpenAI) -> None:
    proxy = await openrouter_proxy(config_factory, start_proxy, fake_openai, forward=False)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        await sdk.chat.completions.create(
            model="openrouter/meta-llama/llama-3.3-70b-instruct", messages=HI,
            extra_body={"route": "fallback", "transforms": ["middle-out"],
                        "provider": {"order": ["openrouter"]}})
        with pytest.raises(openai.BadRequestError) as info:  # names our providers, not its
            await sdk.chat.completions.create(
                model="openrouter/meta-llama/llama-3.3-70b-instruct", messages=HI,
                extra_body={"provider": OPENROUTER_FIELDS["provider"]})
    assert info.value.code == "provider_not_available"
    assert len(fake_openai.requests) == 1
    assert not set(OPENROUTER_FIELDS) & set(fake_openai.requests[0].body)


@pytest.mark.parametrize("forward", [False, True])
async def test_a_model_that_is_not_a_string_is_a_400(config_factory: ConfigFactory,
                                                     start_proxy: StartProxy,
                                                     fake_openai: FakeOpenAI,
                                                     forward: bool) -> None:
    proxy = await openrouter_proxy(config_factory, start_proxy, fake_openai, forward=forward)
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), headers=auth(),
            json={"model": {}, "models": [], "messages": HI}) as response:
        body = await response.json()
    assert response.status == 400
    assert (body["error"]["code"], body["error"]["param"]) == ("invalid_request", "model")
    assert fake_openai.requests == []
