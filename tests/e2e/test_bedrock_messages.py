"""kind bedrock through the official anthropic SDK (/messages): text, stream, tools, thinking
and cache tokens, and failover between kinds for one model."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anthropic
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, anthropic_provider
from tests.fake_bedrock import (
    CLAUDE_ID,
    FakeBedrock,
    Reply,
    bedrock_provider,
    golden,
    serve_fake_bedrock,
)
from tests.fakes import ANSWER, FakeAnthropic

MODEL = "anthropic/claude-sonnet"
WEATHER = {"name": "get_weather", "description": "Weather for a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeBedrock:
    return await serve_fake_bedrock(aiohttp_server)


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake: FakeBedrock, fake_anthropic: FakeAnthropic,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    """One model served by Bedrock first and by Anthropic itself as the fallback."""
    return await start_proxy(config_factory(
        providers={"bedrock": bedrock_provider(fake),
                   "anthropic": anthropic_provider(fake_anthropic)},
        models={MODEL: {"pricing": {"prompt": 3, "completion": 15, "cached_prompt": 0.3},
                        "routes": [{"provider": "bedrock", "model": CLAUDE_ID},
                                   {"provider": "anthropic",
                                    "model": "claude-3-5-sonnet-20240620"}]}},
        server={"retries": 0}))


@pytest.fixture
async def claude(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                      max_retries=0)
    yield client
    await client.close()


async def test_message_with_cache_usage(claude: anthropic.AsyncAnthropic,
                                        fake: FakeBedrock,
                                        fake_anthropic: FakeAnthropic) -> None:
    message = await claude.messages.create(
        model=MODEL, max_tokens=200,
        system=[{"type": "text", "text": "A long, cached preamble.",
                 "cache_control": {"type": "ephemeral"}}],
        messages=[{"role": "user", "content": "Hello"}])
    assert message.content[0].type == "text" and message.content[0].text == "Hello from Bedrock!"
    assert message.stop_reason == "end_turn" and message.model == MODEL
    assert (message.usage.input_tokens, message.usage.output_tokens) == (12, 6)
    assert message.usage.cache_read_input_tokens == 2000
    assert message.usage.cache_creation_input_tokens == 50
    assert fake.calls[0].body["system"] == [{"text": "A long, cached preamble."},
                                            {"cachePoint": {"type": "default"}}]
    assert fake_anthropic.requests == []


async def test_stream_accumulates_in_the_sdk(claude: anthropic.AsyncAnthropic,
                                             fake: FakeBedrock) -> None:
    async with claude.messages.stream(model=MODEL, max_tokens=200,
                                      messages=[{"role": "user", "content": "Hello"}]) as stream:
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == "Hello from Bedrock!"
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 6 and final.usage.cache_read_input_tokens == 2000
    assert fake.calls[0].path.endswith("/converse-stream")


async def test_tool_use_round_trip(claude: anthropic.AsyncAnthropic, fake: FakeBedrock) -> None:
    question = {"role": "user", "content": "Weather in Paris?"}
    first = await claude.messages.create(model=MODEL, max_tokens=300, tools=[WEATHER],
                                         tool_choice={"type": "any"}, messages=[question])
    assert first.stop_reason == "tool_use"
    use = first.content[1]
    assert use.type == "tool_use" and use.name == "get_weather"
    assert use.input == {"city": "Paris"}
    assert fake.calls[0].body["toolConfig"]["toolChoice"] == {"any": {}}

    await claude.messages.create(
        model=MODEL, max_tokens=300, tools=[WEATHER], messages=[
            question, {"role": "assistant", "content": first.content},
            {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                          "content": "18 C", "is_error": False}]}])
    sent = fake.calls[1].body["messages"]
    assert sent[1]["content"][1] == {"toolUse": {"toolUseId": use.id, "name": "get_weather",
                                                 "input": {"city": "Paris"}}}
    assert sent[2]["content"] == [{"toolResult": {"toolUseId": use.id,
                                                  "content": [{"text": "18 C"}]}}]


async def test_streamed_tool_use(claude: anthropic.AsyncAnthropic) -> None:
    async with claude.messages.stream(model=MODEL, max_tokens=300, tools=[WEATHER],
                                      messages=[{"role": "user", "content": "Weather?"}]
                                      ) as stream:
        final = await stream.get_final_message()
    assert [block.type for block in final.content] == ["text", "tool_use"]
    assert final.content[1].input == {"city": "Paris"}  # type: ignore[union-attr]
    assert final.stop_reason == "tool_use"


async def test_thinking_goes_to_claude_and_comes_back_signed(
        claude: anthropic.AsyncAnthropic, fake: FakeBedrock) -> None:
    fake.then(Reply(events=golden("stream_reasoning.json")))
    async with claude.messages.stream(
            model=MODEL, max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 2000},
            messages=[{"role": "user", "content": "Hi"}]) as stream:
        final = await stream.get_final_message()
    thinking, text = final.content
    assert thinking.type == "thinking"
    assert thinking.thinking == "The user greets me. I greet back."
    assert thinking.signature == "EqoBCkgIARABGAIiQL2s"
    assert text.type == "text" and text.text == "Hi there!"
    assert fake.calls[0].body["additionalModelRequestFields"] == {
        "thinking": {"type": "enabled", "budget_tokens": 2000}}

    await claude.messages.create(model=MODEL, max_tokens=4000, thinking={
        "type": "enabled", "budget_tokens": 2000}, messages=[
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": final.content},
        {"role": "user", "content": "Again"}])
    assert fake.calls[1].body["messages"][1]["content"] == [
        {"reasoningContent": {"reasoningText": {"text": "The user greets me. I greet back.",
                                                "signature": "EqoBCkgIARABGAIiQL2s"}}},
        {"text": "Hi there!"}]


async def test_throttled_bedrock_fails_over_to_anthropic(
        claude: anthropic.AsyncAnthropic, fake: FakeBedrock,
        fake_anthropic: FakeAnthropic) -> None:
    fake.then(Reply(429, "ThrottlingException", "Too many requests"))
    raw = await claude.messages.with_raw_response.create(
        model=MODEL, max_tokens=100, messages=[{"role": "user", "content": "Hello"}])
    message = await raw.parse()
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert raw.http_response.headers["X-AnyRouter-Provider"] == "anthropic"
    assert len(fake.calls) == 1 and len(fake_anthropic.requests) == 1


async def test_validation_error_reaches_the_anthropic_sdk(claude: anthropic.AsyncAnthropic,
                                                          fake: FakeBedrock) -> None:
    fake.then(Reply(400, "ValidationException", "messages.0.content: blank text"))
    with pytest.raises(anthropic.BadRequestError) as caught:
        await claude.messages.create(model=MODEL, max_tokens=100,
                                     messages=[{"role": "user", "content": "Hello"}])
    assert "messages.0.content: blank text" in caught.value.message
