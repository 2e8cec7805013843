"""kind bedrock through the official openai SDK: Converse and ConverseStream over real HTTP
to a fake Bedrock that verifies every SigV4 signature, with usage, cost and errors."""

from __future__ import annotations

import base64
import json
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fake_bedrock import (
    ACCESS_KEY,
    CLAUDE_ID,
    PROFILE_ARN,
    FakeBedrock,
    Reply,
    bedrock_provider,
    golden,
    serve_fake_bedrock,
)
from tests.fakes import ANSWER, FakeOpenAI

MODEL = "bedrock/claude-sonnet"
PRICING = {"prompt": 3, "completion": 15, "cached_prompt": 0.3, "cache_write": 3.75}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PNG = base64.b64encode(b"\x89PNG\r\n\x1a\n fake image bytes").decode()


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeBedrock:
    return await serve_fake_bedrock(aiohttp_server)


def bedrock_config(config_factory: ConfigFactory, fake: FakeBedrock, *,
                   route_model: str = CLAUDE_ID, backup: FakeOpenAI | None = None,
                   provider: dict[str, Any] | None = None, **model: Any) -> Config:
    providers = {"bedrock": provider or bedrock_provider(fake)}
    routes = [{"provider": "bedrock", "model": route_model}]
    if backup is not None:
        providers["openai"] = openai_provider(backup)
        routes.append({"provider": "openai", "model": "gpt-4o-mini"})
    return config_factory(providers=providers,
                          models={MODEL: {"pricing": PRICING, "routes": routes, **model}},
                          server={"retries": 0})


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake: FakeBedrock,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    return await start_proxy(bedrock_config(config_factory, fake))


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]  # type: ignore[no-any-return]


def cache_writes(proxy: Proxy, gen_id: str) -> int:
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        row = db.execute("SELECT tokens_cache_write FROM generations WHERE id = ?",
                         (gen_id,)).fetchone()
    finally:
        db.close()
    return int(row[0])


# The golden answer's usage: 12 fresh input tokens, 2000 read from the cache, 50 written to
# it, 6 output tokens. Cost: 12 x $3 + 2000 x $0.30 + 50 x $3.75 + 6 x $15, per million.
GOLDEN_PROMPT, GOLDEN_CACHED, GOLDEN_WRITTEN, GOLDEN_OUTPUT = 2062, 2000, 50, 6
GOLDEN_COST = (12 * 3 + 2000 * 0.3 + 50 * 3.75 + 6 * 15) / 1e6


async def test_chat_answer_is_signed_translated_and_costed(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, proxy: Proxy) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=256,
        messages=[{"role": "system", "content": "Be brief"},
                  {"role": "user", "content": "Hello"}])
    answer = raw.parse()
    assert answer.choices[0].message.content == "Hello from Bedrock!"
    assert answer.choices[0].finish_reason == "stop"
    assert answer.model == MODEL
    usage = answer.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (GOLDEN_PROMPT, GOLDEN_OUTPUT)
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == GOLDEN_CACHED
    assert raw.http_response.json()["usage"]["cost"] == pytest.approx(GOLDEN_COST)

    call = fake.calls[0]
    assert call.auth == f"sigv4:{ACCESS_KEY}"
    assert call.path == "/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse"
    assert call.body == {"messages": [{"role": "user", "content": [{"text": "Hello"}]}],
                         "system": [{"text": "Be brief"}],
                         "inferenceConfig": {"maxTokens": 256}}
    assert all(ALICE_KEY not in value for value in call.headers.values())

    gen_id = raw.http_response.headers["X-AnyRouter-Generation-Id"]
    row = await generation(proxy, gen_id)
    assert row["provider_name"] == "bedrock" and row["usage_source"] == "provider"
    assert row["tokens_prompt"] == GOLDEN_PROMPT and row["native_tokens_cached"] == GOLDEN_CACHED
    assert row["total_cost"] == pytest.approx(GOLDEN_COST)
    assert cache_writes(proxy, gen_id) == GOLDEN_WRITTEN


async def test_chat_stream_relays_text_and_usage(sdk: openai.AsyncOpenAI, fake: FakeBedrock,
                                                 proxy: Proxy) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=64, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Hello"}])
    chunks = [chunk async for chunk in raw.parse()]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from Bedrock!"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and usage.prompt_tokens == GOLDEN_PROMPT
    assert usage.completion_tokens == GOLDEN_OUTPUT
    assert {c.id for c in chunks} == {raw.http_response.headers["X-AnyRouter-Generation-Id"]}
    assert fake.calls[0].path.endswith("/converse-stream")
    assert fake.calls[0].headers["Accept"] == "application/vnd.amazon.eventstream"

    row = await generation(proxy, chunks[0].id)
    assert row["streamed"] and row["usage_source"] == "provider"
    assert row["total_cost"] == pytest.approx(GOLDEN_COST)
    assert cache_writes(proxy, chunks[0].id) == GOLDEN_WRITTEN


async def test_stream_without_usage_asked_hides_it_but_bills_it(
        sdk: openai.AsyncOpenAI, proxy: Proxy) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hi"}])
    chunks = [chunk async for chunk in stream]
    assert all(c.usage is None for c in chunks)
    row = await generation(proxy, chunks[0].id)
    assert row["total_cost"] == pytest.approx(GOLDEN_COST)


async def test_tools_round_trip(sdk: openai.AsyncOpenAI, fake: FakeBedrock) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    first = await sdk.chat.completions.create(model=MODEL, max_tokens=300, tools=[WEATHER],
                                              messages=[question])
    message = first.choices[0].message
    assert first.choices[0].finish_reason == "tool_calls"
    assert message.tool_calls is not None
    call = message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert fake.calls[0].body["toolConfig"]["toolChoice"] == {"auto": {}}

    second = await sdk.chat.completions.create(
        model=MODEL, max_tokens=300, tools=[WEATHER], temperature=0.5, top_p=0.9,
        stop=["END"],
        messages=[{"role": "system", "content": "You are terse."}, question,
                  message.model_dump(exclude_none=True),
                  {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}])
    assert second.choices[0].message.content == "Hello from Bedrock!"
    assert fake.calls[1].body == golden("request_chat_tools.json")


async def test_stream_tool_call_arguments_assembled(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=MODEL, max_tokens=300, tools=[WEATHER], stream=True,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather in Paris?"}])
    chunks = [chunk async for chunk in stream]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert calls[0].id == "tooluse_kZJMlvQmRJ6eAyJE5GIl7Q"
    assert calls[0].function is not None and calls[0].function.name == "get_weather"
    arguments = "".join(c.function.arguments or "" for c in calls if c.function is not None)
    assert json.loads(arguments) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


async def test_named_tool_choice_reaches_bedrock(sdk: openai.AsyncOpenAI,
                                                 fake: FakeBedrock) -> None:
    await sdk.chat.completions.create(
        model=MODEL, max_tokens=300, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather?"}])
    await sdk.chat.completions.create(
        model=MODEL, max_tokens=300, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        messages=[{"role": "user", "content": "Weather?"}])
    assert [c.body["toolConfig"]["toolChoice"] for c in fake.calls] == [
        {"any": {}}, {"tool": {"name": "get_weather"}}]


async def test_image_goes_as_bytes(sdk: openai.AsyncOpenAI, fake: FakeBedrock) -> None:
    await sdk.chat.completions.create(model=MODEL, max_tokens=50, messages=[{
        "role": "user", "content": [
            {"type": "text", "text": "What is this?"},
            {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]}])
    assert fake.calls[0].body["messages"][0]["content"] == [
        {"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": PNG}}}]


async def test_image_url_is_refused_before_sending(sdk: openai.AsyncOpenAI,
                                                   fake: FakeBedrock) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, max_tokens=50, messages=[{
            "role": "user", "content": [{"type": "image_url", "image_url": {
                "url": "https://example.com/cat.png"}}]}])
    assert caught.value.status_code == 400
    assert caught.value.code == "unsupported_parameter"
    assert fake.calls == []


async def test_inference_profile_arn_is_encoded_in_the_signed_path(
        config_factory: ConfigFactory, fake: FakeBedrock,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(bedrock_config(config_factory, fake, route_model=PROFILE_ARN))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        answer = await client.chat.completions.create(
            model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
        stream = await client.chat.completions.create(
            model=MODEL, max_tokens=20, stream=True, messages=[{"role": "user", "content": "Hi"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert answer.choices[0].message.content == text == "Hello from Bedrock!"
    assert [c.model for c in fake.calls] == [PROFILE_ARN, PROFILE_ARN]
    assert fake.calls[0].path == (
        "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2F"
        "us.anthropic.claude-3-5-sonnet-20240620-v1%3A0/converse")
    assert fake.rejected == []


async def test_no_cap_given_sends_the_models_output_limit(
        config_factory: ConfigFactory, fake: FakeBedrock,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(bedrock_config(config_factory, fake, max_output_tokens=1000))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        await client.chat.completions.create(model=MODEL,
                                             messages=[{"role": "user", "content": "Hi"}])
        await client.chat.completions.create(model=MODEL, max_tokens=5000,
                                             messages=[{"role": "user", "content": "Hi"}])
    assert [c.body["inferenceConfig"]["maxTokens"] for c in fake.calls] == [1000, 1000]


async def test_reasoning_effort_becomes_claude_thinking(sdk: openai.AsyncOpenAI,
                                                        fake: FakeBedrock) -> None:
    fake.then(Reply(events=golden("stream_reasoning.json")))
    stream = await sdk.chat.completions.create(
        model=MODEL, reasoning_effort="low", max_completion_tokens=4000, stream=True,
        messages=[{"role": "user", "content": "Hi"}])
    chunks = [chunk async for chunk in stream]
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    reasoning = "".join(getattr(d, "reasoning_content", None) or "" for d in deltas)
    assert reasoning == "The user greets me. I greet back."
    assert "".join(d.content or "" for d in deltas) == "Hi there!"
    body = fake.calls[0].body
    assert body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert body["inferenceConfig"] == {"maxTokens": 4000}


# --- errors -----------------------------------------------------------------------------------

async def test_access_denied_fails_over_to_the_next_route(
        config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    fake.then(Reply(403, "AccessDeniedException",
                    "You don't have access to the model with the specified model ID."))
    proxy = await start_proxy(bedrock_config(config_factory, fake, backup=fake_openai))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    assert raw.parse().choices[0].message.content == ANSWER
    assert raw.http_response.headers["X-AnyRouter-Provider"] == "openai"
    row = await generation(proxy, raw.http_response.headers["X-AnyRouter-Generation-Id"])
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("bedrock", 403), ("openai", 200)]


async def test_wrong_secret_is_refused_by_signature_and_named(
        config_factory: ConfigFactory, fake: FakeBedrock,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    provider = bedrock_provider(fake, aws_secret_access_key="not/the/right/secret/at/all")
    proxy = await start_proxy(bedrock_config(config_factory, fake, provider=provider))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.chat.completions.create(
                model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    assert "bedrock" in caught.value.message and "credentials" in caught.value.message
    assert "not/the/right" not in caught.value.response.text
    assert fake.rejected == ["InvalidSignatureException"]


async def test_throttling_is_429_with_retry_after(sdk: openai.AsyncOpenAI,
                                                  fake: FakeBedrock) -> None:
    fake.then(Reply(429, "ThrottlingException",
                    "Too many requests, please wait before trying again."))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=MODEL, max_tokens=20,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.response.headers["Retry-After"] == "1"


async def test_validation_error_is_400_with_bedrocks_message(sdk: openai.AsyncOpenAI,
                                                             fake: FakeBedrock) -> None:
    message = "The model returned the following errors: temperature: range: 0..1"
    fake.then(Reply(400, "ValidationException", message))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=MODEL, max_tokens=20, temperature=1,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert message in caught.value.message
    assert caught.value.code == "invalid_request"


async def test_exception_mid_stream_ends_with_an_error_and_is_charged(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, proxy: Proxy) -> None:
    fake.then(Reply(exception_after=3, exception=("modelStreamErrorException",
                                                  "The model crashed mid-answer")))
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hi"}])
    text = []
    with pytest.raises(openai.APIError) as caught:
        async for chunk in raw.parse():
            text.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(text) == "Hello from"
    assert "The model crashed mid-answer" in caught.value.message
    row = await generation(proxy, raw.http_response.headers["X-AnyRouter-Generation-Id"])
    assert row["usage_source"] == "estimated" and row["total_cost"] > 0
    assert row["tokens_completion"] >= 2


async def test_stream_cut_short_is_an_error_and_charged(sdk: openai.AsyncOpenAI,
                                                        fake: FakeBedrock,
                                                        proxy: Proxy) -> None:
    fake.then(Reply(stop_after=5))  # up to messageStop: no metadata, no usage
    raw = await sdk.chat.completions.with_raw_response.create(
        model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.APIError) as caught:
        async for _ in raw.parse():
            pass
    assert "ended the stream" in caught.value.message
    row = await generation(proxy, raw.http_response.headers["X-AnyRouter-Generation-Id"])
    assert row["usage_source"] == "estimated" and row["total_cost"] > 0
    assert row["status_code"] == 502


async def test_throttled_stream_before_output_fails_over(
        config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    fake.then(Reply(exception_after=0, exception=("throttlingException", "Slow down")))
    proxy = await start_proxy(bedrock_config(config_factory, fake, backup=fake_openai))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        stream = await client.chat.completions.create(
            model=MODEL, max_tokens=20, stream=True, messages=[{"role": "user", "content": "Hi"}])
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "tok0 tok1 tok2 "
    assert len(fake.calls) == 1 and len(fake_openai.requests) == 1


async def test_frames_split_anywhere_are_reassembled(sdk: openai.AsyncOpenAI,
                                                     fake: FakeBedrock) -> None:
    fake.then(Reply(split=7))
    stream = await sdk.chat.completions.create(
        model=MODEL, max_tokens=64, stream=True, messages=[{"role": "user", "content": "Hi"}])
    text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
    assert text == "Hello from Bedrock!"
