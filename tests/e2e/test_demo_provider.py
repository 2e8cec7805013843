"""The demo provider (`kind: mock`) as the quick start uses it: through the proxy over real
HTTP, with the official openai and anthropic SDKs. It answers tools with a tool call and
structured output with JSON that fits the schema, streamed or not."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from enum import StrEnum
from typing import Any, Literal

import anthropic
import openai
import pytest
from pydantic import BaseModel, Field

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy

StartProxy = Callable[[Config], Awaitable[Proxy]]
MODEL = "demo/echo"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"},
                           "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                           "days": {"type": "integer", "minimum": 1}},
            "required": ["city", "unit", "days"],
            "additionalProperties": False,
        },
    },
}
NOTE_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {"name": "take_note",
                 "parameters": {"type": "object", "properties": {"text": {"type": "string"}},
                                "required": ["text"]}},
}
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


class Colour(StrEnum):
    RED = "red"
    GREEN = "green"


class Address(BaseModel):
    street: str
    zip_code: str = Field(min_length=5)


class Person(BaseModel):
    name: str
    age: int = Field(ge=18)
    height_m: float
    employed: bool
    colour: Colour
    kind: Literal["customer", "supplier"]
    tags: list[str]
    address: Address
    nickname: str | None


@pytest.fixture
async def proxy(config_factory: ConfigFactory, start_proxy: StartProxy) -> Proxy:
    return await start_proxy(config_factory())  # the demo provider serving demo/echo


@pytest.fixture
async def client(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield sdk
    await sdk.close()


# --- structured output ------------------------------------------------------------------


async def test_parse_fills_a_pydantic_model(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Person)
    message = completion.choices[0].message
    person = message.parsed
    assert isinstance(person, Person)
    assert person.age >= 18 and person.colour in Colour and len(person.address.zip_code) >= 5
    assert completion.choices[0].finish_reason == "stop"
    assert Person.model_validate_json(message.content or "") == person


async def test_parse_streamed(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(model=MODEL, messages=QUESTION,
                                              response_format=Person) as stream:
        deltas = [event async for event in stream if event.type == "content.delta"]
        final = await stream.get_final_completion()
    assert len(deltas) > 1  # the JSON arrives in pieces
    assert isinstance(final.choices[0].message.parsed, Person)


async def test_json_object_answer_is_a_json_object(client: openai.AsyncOpenAI) -> None:
    completion = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format={"type": "json_object"})
    answer = json.loads(completion.choices[0].message.content or "")
    assert isinstance(answer, dict) and "Paris" in answer["message"]


# --- tools ------------------------------------------------------------------------------


async def test_tool_call_round_trip(client: openai.AsyncOpenAI) -> None:
    first = await client.chat.completions.create(model=MODEL, messages=QUESTION,
                                                 tools=[WEATHER_TOOL])  # type: ignore[list-item]
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.type == "function" and call.function.name == "get_weather"
    arguments = json.loads(call.function.arguments)
    assert arguments["unit"] == "celsius" and arguments["days"] >= 1
    assert isinstance(arguments["city"], str)

    history: list[Any] = [*QUESTION, choice.message.model_dump(exclude_none=True),
                          {"role": "tool", "tool_call_id": call.id, "content": "18 C, sunny"}]
    second = await client.chat.completions.create(model=MODEL, messages=history,
                                                  tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert second.choices[0].finish_reason == "stop"
    assert not second.choices[0].message.tool_calls
    assert "get_weather returned 18 C, sunny" in (second.choices[0].message.content or "")


async def test_streamed_tool_call_assembles_like_openais(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.stream(model=MODEL, messages=QUESTION,
                                              tools=[WEATHER_TOOL]) as stream:  # type: ignore[list-item]
        argument_deltas = [event async for event in stream
                           if event.type == "tool_calls.function.arguments.delta"]
        final = await stream.get_final_completion()
    assert len(argument_deltas) > 1
    [call] = final.choices[0].message.tool_calls or []
    assert final.choices[0].finish_reason == "tool_calls"
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments)["unit"] == "celsius"


async def test_tool_choice_names_the_tool_or_turns_tools_off(client: openai.AsyncOpenAI) -> None:
    tools: Any = [WEATHER_TOOL, NOTE_TOOL]
    first = await client.chat.completions.create(model=MODEL, messages=QUESTION, tools=tools)
    named = await client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=tools,
        tool_choice={"type": "function", "function": {"name": "take_note"}})
    off = await client.chat.completions.create(model=MODEL, messages=QUESTION, tools=tools,
                                               tool_choice="none")
    assert [c.function.name for c in first.choices[0].message.tool_calls or []] == ["get_weather"]
    assert [c.function.name for c in named.choices[0].message.tool_calls or []] == ["take_note"]
    assert off.choices[0].message.tool_calls is None
    assert "Paris" in (off.choices[0].message.content or "")


async def test_same_request_same_tool_call(client: openai.AsyncOpenAI) -> None:
    calls = [(await client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER_TOOL])).choices[0]  # type: ignore[list-item]
        .message.tool_calls for _ in range(2)]
    assert calls[0] and calls[0] == calls[1]


# --- /messages, translated --------------------------------------------------------------


async def test_messages_tool_use_round_trip(proxy: Proxy) -> None:
    tool: Any = {"name": "get_weather", "input_schema": WEATHER_TOOL["function"]["parameters"]}
    async with anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                        max_retries=0) as claude:
        first = await claude.messages.create(model=MODEL, max_tokens=256, tools=[tool],
                                             messages=QUESTION)  # type: ignore[arg-type]
        assert first.stop_reason == "tool_use"
        [use] = [block for block in first.content if block.type == "tool_use"]
        assert use.name == "get_weather" and use.input["unit"] == "celsius"  # type: ignore[index]
        async with claude.messages.stream(
            model=MODEL, max_tokens=256, tools=[tool],
            messages=[*QUESTION, {"role": "assistant", "content": first.content},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                    "content": "18 C, sunny"}]}],
        ) as stream:
            second = await stream.get_final_message()
    assert second.stop_reason == "end_turn"
    text = "".join(block.text for block in second.content if block.type == "text")
    assert "get_weather returned 18 C, sunny" in text


async def test_embeddings_as_floats_or_base64(proxy: Proxy) -> None:
    sdk = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    try:
        floats = await sdk.embeddings.create(model=MODEL, input=["a", "b"],
                                             encoding_format="float")
        raw = await sdk.embeddings.with_raw_response.create(model=MODEL, input=["a", "b"],
                                                            encoding_format="base64")
    finally:
        await sdk.close()
    for item, encoded in zip(floats.data, raw.http_response.json()["data"], strict=True):
        assert isinstance(encoded["embedding"], str)
        packed = base64.b64decode(encoded["embedding"])
        values = struct.unpack(f"<{len(packed) // 4}f", packed)
        assert values == pytest.approx(item.embedding, rel=1e-6)
