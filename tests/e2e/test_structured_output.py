"""Structured output on every route: the openai SDK's `parse` and `stream` helpers and
LangChain's `with_structured_output` against an Anthropic upstream (a forced tool, or
Anthropic's native output format), and the anthropic SDK's `parse` against an OpenAI one."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, SecretStr

from anyrouter_proxy.config.model import Config
from tests.anthropic_wire import ANSWER, STRUCTURED_BETA
from tests.conftest import (
    ALICE_KEY,
    ConfigFactory,
    Proxy,
    anthropic_provider,
    auth,
    openai_provider,
)
from tests.fakes import FakeAnthropic, FakeOpenAI

CLAUDE = "anthropic/claude-sonnet-4"
NATIVE = "anthropic/claude-sonnet-4-5"
GPT = "openai/gpt-4o-mini"
CLAUDE_PRICING = {"prompt": 3, "completion": 15, "cached_prompt": 0.3}
# The fake Anthropic upstream reports 20 fresh + 5 cached input tokens and 7 output tokens.
CLAUDE_COST = (20 * 3 + 5 * 0.3 + 7 * 15) / 1_000_000
QUESTION: Any = [{"role": "user", "content": "Weather in Paris?"}]


class Weather(BaseModel):
    city: str
    degrees: int
    conditions: list[str]


class GetWeather(BaseModel):
    city: str


# What the fakes answer for Weather: every string "Paris", every number 42.
PARIS = Weather(city="Paris", degrees=42, conditions=["Paris"])


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_anthropic: FakeAnthropic,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    return await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "anthropic": anthropic_provider(fake_anthropic)},
        models={CLAUDE: {"pricing": CLAUDE_PRICING, "routes": [
                    {"provider": "anthropic", "model": "claude-sonnet-4-20250514"}]},
                NATIVE: {"pricing": CLAUDE_PRICING, "routes": [
                    {"provider": "anthropic", "model": "claude-sonnet-4-5",
                     "structured_output": "native"}]},
                GPT: {"pricing": {"prompt": 0.15, "completion": 0.6},
                      "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}}))


@pytest.fixture
async def openai_sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield sdk
    await sdk.close()


@pytest.fixture
async def claude_sdk(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                   max_retries=0)
    yield sdk
    await sdk.close()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200
        return (await response.json())["data"]  # type: ignore[no-any-return]


def assert_forced_tool(sent: dict[str, Any], name: str = "Weather") -> dict[str, Any]:
    """The Anthropic request forced the response tool; returns that tool."""
    assert sent["tool_choice"] == {"type": "tool", "name": name,
                                   "disable_parallel_tool_use": True}
    tool = next(t for t in sent["tools"] if t["name"] == name)
    assert "output_config" not in sent
    return tool  # type: ignore[no-any-return]


def assert_weather_schema(schema: dict[str, Any]) -> None:
    """The schema the openai SDK made of Weather (strict), sent on unchanged."""
    assert schema["type"] == "object" and schema["additionalProperties"] is False
    assert set(schema["properties"]) == set(schema["required"]) == {
        "city", "degrees", "conditions"}
    assert schema["properties"]["conditions"]["type"] == "array"


# -- OpenAI clients, Anthropic upstream: the forced tool -----------------------------------

async def test_parse_gets_the_forced_tool_input_as_content(
        proxy: Proxy, openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic) -> None:
    completion = await openai_sdk.chat.completions.parse(
        model=CLAUDE, messages=QUESTION, response_format=Weather)
    choice = completion.choices[0]
    assert choice.message.parsed == PARIS
    assert json.loads(choice.message.content or "") == PARIS.model_dump()
    assert not choice.message.tool_calls
    assert choice.finish_reason == "stop"
    sent = fake_anthropic.requests[0].body
    assert_weather_schema(assert_forced_tool(sent)["input_schema"])
    assert len(sent["tools"]) == 1
    row = await generation(proxy, completion.id)
    assert row["tokens_completion"] == 7 and row["finish_reason"] == "stop"
    assert row["total_cost"] == pytest.approx(CLAUDE_COST)


async def test_stream_helper_gets_the_tool_input_as_content_deltas(
        proxy: Proxy, openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic) -> None:
    async with openai_sdk.chat.completions.stream(
            model=CLAUDE, messages=QUESTION, response_format=Weather,
            stream_options={"include_usage": True}) as stream:
        events = [event async for event in stream]
        final = await stream.get_final_completion()
    pieces = [e.delta for e in events if e.type == "content.delta" and e.delta]
    assert len(pieces) >= 3  # the upstream's input_json_delta fragments, one by one
    assert json.loads("".join(pieces)) == PARIS.model_dump()
    assert not [e for e in events if e.type.startswith("tool_calls")]
    done = [e for e in events if e.type == "content.done"]
    assert done and done[0].parsed == PARIS
    choice = final.choices[0]
    assert choice.message.parsed == PARIS and not choice.message.tool_calls
    assert choice.finish_reason == "stop"
    assert final.usage is not None and final.usage.completion_tokens == 7
    sent = fake_anthropic.requests[0].body
    assert sent["stream"] is True
    assert_weather_schema(assert_forced_tool(sent)["input_schema"])
    row = await generation(proxy, final.id)
    assert row["streamed"] and row["tokens_completion"] == 7
    assert row["total_cost"] == pytest.approx(CLAUDE_COST)


async def test_langchain_with_structured_output(proxy: Proxy,
                                                fake_anthropic: FakeAnthropic) -> None:
    model = ChatOpenAI(model=CLAUDE, base_url=proxy.base_url, api_key=SecretStr(ALICE_KEY),
                       max_retries=0)
    result = await model.with_structured_output(Weather).ainvoke("Weather in Paris?")
    assert result == PARIS
    assert_weather_schema(assert_forced_tool(fake_anthropic.requests[0].body)["input_schema"])


@pytest.mark.parametrize("stream", [False, True])
async def test_json_object_mode_answers_a_json_object(
        openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic, stream: bool) -> None:
    messages: Any = [{"role": "user", "content": "The weather in Paris, as JSON"}]
    if stream:
        chunks = [chunk async for chunk in await openai_sdk.chat.completions.create(
            model=CLAUDE, messages=messages, response_format={"type": "json_object"},
            stream=True)]
        content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        finish = [c.choices[0].finish_reason for c in chunks if c.choices][-1]
    else:
        completion = await openai_sdk.chat.completions.create(
            model=CLAUDE, messages=messages, response_format={"type": "json_object"})
        content = completion.choices[0].message.content or ""
        finish = completion.choices[0].finish_reason
        assert not completion.choices[0].message.tool_calls
    assert json.loads(content) == {"city": "Paris"}
    assert finish == "stop"
    tool = assert_forced_tool(fake_anthropic.requests[0].body, "json_response")
    assert tool["input_schema"] == {"type": "object", "additionalProperties": True}


@pytest.mark.parametrize("stream", [False, True])
async def test_client_tools_stay_callable_beside_the_structured_answer(
        openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic, stream: bool) -> None:
    tools = [openai.pydantic_function_tool(GetWeather)]
    if stream:
        async with openai_sdk.chat.completions.stream(
                model=CLAUDE, messages=QUESTION, tools=tools,
                response_format=Weather) as events:
            first = await events.get_final_completion()
    else:
        first = await openai_sdk.chat.completions.parse(
            model=CLAUDE, messages=QUESTION, tools=tools,
            response_format=Weather)
    turn = first.choices[0]
    assert turn.finish_reason == "tool_calls" and not turn.message.content
    calls = turn.message.tool_calls or []
    assert [c.function.name for c in calls] == ["GetWeather"]
    assert calls[0].function.parsed_arguments == GetWeather(city="Paris")
    sent = fake_anthropic.requests[0].body
    assert [t["name"] for t in sent["tools"]] == ["GetWeather", "Weather"]
    assert sent["tool_choice"] == {"type": "any"}

    history: list[Any] = [*QUESTION, turn.message.model_dump(exclude_none=True, include={
        "role", "content", "tool_calls"}),
        {"role": "tool", "tool_call_id": calls[0].id, "content": "21 degrees, sunny"}]
    answer = await openai_sdk.chat.completions.parse(
        model=CLAUDE, messages=history, tools=tools,
        response_format=Weather)
    assert answer.choices[0].message.parsed == PARIS
    assert answer.choices[0].finish_reason == "stop"
    assert not answer.choices[0].message.tool_calls
    again = fake_anthropic.requests[1].body
    assert again["tool_choice"] == {"type": "any"}
    assert again["messages"][-1]["content"][0]["type"] == "tool_result"


@pytest.mark.parametrize("stream", [False, True])
async def test_thinking_answers_with_the_tool_and_drops_the_text(
        openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic, stream: bool) -> None:
    # Anthropic refuses a forced tool while thinking: tool_choice auto and an instruction;
    # the fake model then writes text before calling the tool, as a real one may.
    if stream:
        async with openai_sdk.chat.completions.stream(
                model=CLAUDE, messages=QUESTION, response_format=Weather,
                reasoning_effort="low") as events:
            completion = await events.get_final_completion()
    else:
        completion = await openai_sdk.chat.completions.parse(
            model=CLAUDE, messages=QUESTION, response_format=Weather,
            reasoning_effort="low")
    message = completion.choices[0].message
    assert message.parsed == PARIS and ANSWER not in (message.content or "")
    assert completion.choices[0].finish_reason == "stop"
    sent = fake_anthropic.requests[0].body
    assert sent["thinking"]["type"] == "enabled"
    assert sent["tool_choice"] == {"type": "auto"}
    assert [t["name"] for t in sent["tools"]] == ["Weather"]
    assert "`Weather` tool" in sent["system"][-1]["text"]


async def test_a_schema_that_is_not_an_object_is_refused_before_upstream(
        openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await openai_sdk.chat.completions.create(
            model=CLAUDE, messages=QUESTION, response_format={
                "type": "json_schema", "json_schema": {"name": "cities", "schema": {
                    "type": "array", "items": {"type": "string"}}}})
    assert info.value.code == "unsupported_parameter"
    assert info.value.param == "response_format.json_schema.schema.type"
    assert fake_anthropic.requests == []


# -- OpenAI clients, Anthropic upstream: native structured output ---------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_native_route_sends_output_config_format(
        proxy: Proxy, openai_sdk: openai.AsyncOpenAI, fake_anthropic: FakeAnthropic,
        stream: bool) -> None:
    if stream:
        async with openai_sdk.chat.completions.stream(
                model=NATIVE, messages=QUESTION, response_format=Weather,
                stream_options={"include_usage": True}) as events:
            pieces = [e.delta async for e in events if e.type == "content.delta" and e.delta]
            completion = await events.get_final_completion()
        assert len(pieces) >= 3
    else:
        completion = await openai_sdk.chat.completions.parse(
            model=NATIVE, messages=QUESTION, response_format=Weather)
    assert completion.choices[0].message.parsed == PARIS
    assert completion.choices[0].finish_reason == "stop"
    sent = fake_anthropic.requests[0]
    fmt = sent.body["output_config"]["format"]
    assert fmt["type"] == "json_schema"
    assert_weather_schema(fmt["schema"])
    assert "tools" not in sent.body and "tool_choice" not in sent.body
    assert "anthropic-beta" not in sent.headers  # the generally available field needs none
    row = await generation(proxy, completion.id)
    assert row["tokens_completion"] == 7
    assert row["total_cost"] == pytest.approx(CLAUDE_COST)


@pytest.mark.parametrize(("provider_mode", "route_mode", "native"), [
    ("native", None, True), ("native", "tool", False), (None, None, False)])
async def test_structured_output_is_set_per_provider_and_route(
        config_factory: ConfigFactory, fake_anthropic: FakeAnthropic,
        start_proxy: Callable[[Config], Awaitable[Proxy]], provider_mode: str | None,
        route_mode: str | None, native: bool) -> None:
    provider = anthropic_provider(fake_anthropic, **(
        {"structured_output": provider_mode} if provider_mode else {}))
    route = {"provider": "anthropic", "model": "claude-x",
             **({"structured_output": route_mode} if route_mode else {})}
    proxy = await start_proxy(config_factory(
        providers={"anthropic": provider},
        models={CLAUDE: {"pricing": CLAUDE_PRICING, "routes": [route]}}))
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    try:
        completion = await sdk.chat.completions.parse(
            model=CLAUDE, messages=QUESTION, response_format=Weather)
    finally:
        await sdk.close()
    assert completion.choices[0].message.parsed == PARIS
    assert ("output_config" in fake_anthropic.requests[0].body) is native
    assert ("tools" in fake_anthropic.requests[0].body) is not native


# -- Anthropic clients -------------------------------------------------------------------------

@pytest.mark.parametrize("stream", [False, True])
async def test_messages_output_format_on_an_openai_route(
        claude_sdk: anthropic.AsyncAnthropic, fake_openai: FakeOpenAI, stream: bool) -> None:
    if stream:
        async with claude_sdk.messages.stream(
                model=GPT, max_tokens=200, messages=QUESTION,
                output_format=Weather) as events:
            message = await events.get_final_message()
    else:
        message = await claude_sdk.messages.parse(
            model=GPT, max_tokens=200, messages=QUESTION,
            output_format=Weather)
    assert message.parsed_output == PARIS
    assert message.stop_reason == "end_turn"
    fmt = fake_openai.requests[0].body["response_format"]
    assert fmt["type"] == "json_schema"
    assert fmt["json_schema"]["strict"] is True  # the fake refuses strict on a loose schema
    assert_weather_schema(fmt["json_schema"]["schema"])


async def test_messages_beta_output_format_passes_through_with_its_header(
        claude_sdk: anthropic.AsyncAnthropic, fake_anthropic: FakeAnthropic) -> None:
    schema = {"type": "object", "properties": {"city": {"type": "string"}},
              "required": ["city"], "additionalProperties": False}
    message = await claude_sdk.messages.create(
        model=CLAUDE, max_tokens=100, messages=QUESTION,
        extra_headers={"anthropic-beta": STRUCTURED_BETA},
        extra_body={"output_format": {"type": "json_schema", "schema": schema}})
    block = message.content[0]
    assert block.type == "text" and json.loads(block.text) == {"city": "Paris"}
    sent = fake_anthropic.requests[0]
    assert sent.body["output_format"]["schema"] == schema
    assert STRUCTURED_BETA in sent.headers["anthropic-beta"]
