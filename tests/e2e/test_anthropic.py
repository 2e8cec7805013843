"""Any client reaches any model: the anthropic and openai SDKs against both kinds of
fake upstream, passthrough and translated, stream and not, with tool use."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import anthropic
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import (
    ALICE_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    openai_provider,
)
from tests.fakes import ANSWER, Behaviour, FakeAnthropic, FakeOpenAI

CLAUDE = "anthropic/claude-sonnet-4"
GPT = "openai/gpt-4o-mini"
WEATHER_ANTHROPIC = {"name": "get_weather", "description": "Weather for a city",
                     "input_schema": {"type": "object",
                                      "properties": {"city": {"type": "string"}}}}
WEATHER_OPENAI = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_anthropic: FakeAnthropic,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    return await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "anthropic": anthropic_provider(fake_anthropic)},
        models={CLAUDE: {"pricing": {"prompt": 3, "completion": 15, "cached_prompt": 0.3},
                         "routes": [{"provider": "anthropic",
                                     "model": "claude-sonnet-4-20250514"}]},
                GPT: {"pricing": {"prompt": 0.15, "completion": 0.6},
                      "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}}))


@pytest.fixture
async def claude_sdk(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    # base_url without /v1: the SDK appends /v1/messages.
    sdk = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                   max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def openai_sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def assert_provider_auth(fake: FakeAnthropic) -> None:
    for request in fake.requests:
        assert request.headers["x-api-key"] == PROVIDER_KEY
        assert "anthropic-version" in request.headers
        assert all(ALICE_KEY not in v for v in request.headers.values())


# -- Anthropic client, Anthropic upstream: passthrough ---------------------------------------

async def test_messages_passthrough(claude_sdk: anthropic.AsyncAnthropic,
                                    fake_anthropic: FakeAnthropic) -> None:
    raw = await claude_sdk.messages.with_raw_response.create(
        model=CLAUDE, max_tokens=100, system="Be brief",
        messages=[{"role": "user", "content": "Hello"}])
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert message.model == CLAUDE
    assert message.usage.input_tokens == 20 and message.usage.cache_read_input_tokens == 5
    assert raw.headers["X-AnyRouter-Generation-Id"].startswith("gen-")
    sent = fake_anthropic.requests[0]
    assert sent.body["model"] == "claude-sonnet-4-20250514"
    assert sent.body["system"] == "Be brief"
    assert_provider_auth(fake_anthropic)


async def test_messages_stream_passthrough(claude_sdk: anthropic.AsyncAnthropic,
                                           fake_anthropic: FakeAnthropic) -> None:
    async with claude_sdk.messages.stream(
            model=CLAUDE, max_tokens=100, tools=[WEATHER_ANTHROPIC],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        kinds = [event.type async for event in stream]
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and "message_stop" in kinds
    assert final.model == CLAUDE
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    assert final.usage.output_tokens == 7
    assert_provider_auth(fake_anthropic)


async def test_bearer_and_x_api_key_both_work(proxy: Proxy) -> None:
    for sdk in (anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                         max_retries=0),
                anthropic.AsyncAnthropic(base_url=proxy.url("/api"), auth_token=ALICE_KEY,
                                         max_retries=0)):
        try:
            message = await sdk.messages.create(
                model=CLAUDE, max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        finally:
            await sdk.close()
        assert message.content[0].type == "text"


async def test_anthropic_version_and_beta_forwarded(proxy: Proxy,
                                                    fake_anthropic: FakeAnthropic) -> None:
    sdk = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                   max_retries=0,
                                   default_headers={"anthropic-beta": "prompt-caching-2024"})
    try:
        await sdk.messages.create(model=CLAUDE, max_tokens=10,
                                  messages=[{"role": "user", "content": "hi"}])
    finally:
        await sdk.close()
    assert fake_anthropic.requests[0].headers["anthropic-beta"] == "prompt-caching-2024"
    # The client's anthropic-version wins over the provider's configured default.
    assert fake_anthropic.requests[0].headers["anthropic-version"] == \
        sdk.default_headers["anthropic-version"]


# -- errors in Anthropic's shape -------------------------------------------------------------

async def test_errors_raise_the_right_anthropic_classes(claude_sdk: anthropic.AsyncAnthropic,
                                                        proxy: Proxy) -> None:
    with pytest.raises(anthropic.NotFoundError) as not_found:
        await claude_sdk.messages.create(model="nope/x", max_tokens=10,
                                         messages=[{"role": "user", "content": "hi"}])
    assert "nope/x" in not_found.value.message
    body = not_found.value.body
    assert isinstance(body, dict) and body["type"] == "error"
    assert body["error"]["code"] == "model_not_found"
    bad = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key="wrong", max_retries=0)
    try:
        with pytest.raises(anthropic.AuthenticationError):
            await bad.messages.create(model=CLAUDE, max_tokens=10,
                                      messages=[{"role": "user", "content": "hi"}])
    finally:
        await bad.close()


async def test_missing_max_tokens_is_refused_before_upstream(
        proxy: Proxy, fake_anthropic: FakeAnthropic) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/v1/messages"), headers={"x-api-key": ALICE_KEY},
            json={"model": CLAUDE, "messages": [{"role": "user", "content": "hi"}]}) as response:
        body = await response.json()
    assert response.status == 400
    assert body["type"] == "error" and body["error"]["param"] == "max_tokens"
    assert fake_anthropic.requests == []


async def test_mid_stream_error_is_an_anthropic_error_event(
        claude_sdk: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.then(Behaviour(error_event_after=4))
    with pytest.raises(anthropic.APIStatusError) as info:
        async with claude_sdk.messages.stream(
                model=CLAUDE, max_tokens=100,
                messages=[{"role": "user", "content": "hi"}]) as stream:
            async for _ in stream:
                pass
    assert "Overloaded" in str(info.value)


# -- Anthropic client, OpenAI upstream: translated -------------------------------------------

async def test_messages_translated_to_openai(claude_sdk: anthropic.AsyncAnthropic,
                                             fake_openai: FakeOpenAI) -> None:
    message = await claude_sdk.messages.create(
        model=GPT, max_tokens=50, system="Be brief",
        messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert message.model == GPT
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == 11
    sent = fake_openai.requests[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.body["messages"][0] == {"role": "system", "content": "Be brief"}
    assert sent.body["model"] == "gpt-4o-mini"


async def test_messages_stream_translated_with_tools(claude_sdk: anthropic.AsyncAnthropic,
                                                     fake_openai: FakeOpenAI) -> None:
    async with claude_sdk.messages.stream(
            model=GPT, max_tokens=100, tools=[WEATHER_ANTHROPIC],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris?"}]) as stream:
        final = await stream.get_final_message()
    tool = next(b for b in final.content if b.type == "tool_use")
    assert tool.name == "get_weather" and tool.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    assert fake_openai.requests[0].body["stream_options"] == {"include_usage": True}
    assert fake_openai.requests[0].body["tools"][0]["function"]["name"] == "get_weather"


async def test_messages_stream_translated_text(claude_sdk: anthropic.AsyncAnthropic) -> None:
    async with claude_sdk.messages.stream(
            model=GPT, max_tokens=100,
            messages=[{"role": "user", "content": "hi"}]) as stream:
        text = "".join([t async for t in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "tok0 tok1 tok2 "
    assert final.usage.output_tokens == 3


# -- OpenAI client, Anthropic upstream: translated -------------------------------------------

async def test_chat_translated_to_anthropic(openai_sdk: openai.AsyncOpenAI,
                                            fake_anthropic: FakeAnthropic) -> None:
    raw = await openai_sdk.chat.completions.with_raw_response.create(
        model=CLAUDE, messages=[{"role": "system", "content": "Be brief"},
                                {"role": "user", "content": "Hello"}])
    completion = raw.parse()
    assert completion.id == raw.headers["X-AnyRouter-Generation-Id"]
    assert completion.choices[0].message.content == ANSWER
    assert completion.choices[0].finish_reason == "stop"
    assert completion.model == CLAUDE
    assert completion.usage is not None
    assert completion.usage.prompt_tokens == 25  # input 20 + cache read 5
    assert completion.usage.prompt_tokens_details is not None
    assert completion.usage.prompt_tokens_details.cached_tokens == 5
    sent = fake_anthropic.requests[0].body
    assert sent["system"] == [{"type": "text", "text": "Be brief"}]
    assert sent["max_tokens"] == 4096  # Anthropic requires it: the server default
    assert all(m["role"] != "system" for m in sent["messages"])
    assert_provider_auth(fake_anthropic)


async def test_chat_stream_translated_with_tools(openai_sdk: openai.AsyncOpenAI) -> None:
    stream = await openai_sdk.chat.completions.create(
        model=CLAUDE, tools=[WEATHER_OPENAI],  # type: ignore[list-item]
        messages=[{"role": "user", "content": "Weather in Paris?"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [c async for c in stream]
    assert {c.id for c in chunks} == {chunks[0].id}
    args = "".join(tc.function.arguments or "" for c in chunks if c.choices
                   for tc in (c.choices[0].delta.tool_calls or []) if tc.function)
    assert json.loads(args) == {"city": "Paris"}
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "tool_calls"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 7


async def test_chat_stream_without_message_stop_is_an_error(
        openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic) -> None:
    fake_anthropic.then(Behaviour(no_done=True))
    stream = await openai_sdk.chat.completions.create(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError):
        async for _ in stream:
            pass


async def test_openai_param_without_counterpart_is_refused(openai_sdk: openai.AsyncOpenAI,
                                                            fake_anthropic: FakeAnthropic
                                                            ) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await openai_sdk.chat.completions.create(
            model=CLAUDE, n=2, messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "unsupported_parameter"
    assert fake_anthropic.requests == []


async def test_count_tokens_passthrough_and_estimate(claude_sdk: anthropic.AsyncAnthropic,
                                                     fake_anthropic: FakeAnthropic) -> None:
    counted = await claude_sdk.messages.count_tokens(
        model=CLAUDE, messages=[{"role": "user", "content": "hi"}])
    assert counted.input_tokens == 42  # the fake upstream's answer, passed through
    assert fake_anthropic.requests[0].path == "/v1/messages/count_tokens"
    assert fake_anthropic.requests[0].body["model"] == "claude-sonnet-4-20250514"
    estimated = await claude_sdk.messages.count_tokens(
        model=GPT, messages=[{"role": "user", "content": "hello there " * 30}])
    assert estimated.input_tokens > 50  # no Anthropic route: the local (pessimistic) estimate
