"""Structured output on kind bedrock: the openai SDK's `parse` and `stream` helpers get the
response tool's input (Converse toolChoice {tool}) as the message content."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy
from tests.fake_bedrock import CLAUDE_ID, FakeBedrock, Reply, bedrock_provider, serve_fake_bedrock
from tests.schema_sample import fragments

MODEL = "bedrock/claude-sonnet"
QUESTION: Any = [{"role": "user", "content": "Weather in Paris?"}]
USAGE = {"inputTokens": 40, "outputTokens": 18, "totalTokens": 58}


class Weather(BaseModel):
    city: str
    degrees: int


PARIS = Weather(city="Paris", degrees=21)
PREAMBLE = "Let me look that up."  # text a model may write before the call: dropped


def converse_answer() -> dict[str, Any]:
    return {"output": {"message": {"role": "assistant", "content": [
        {"text": PREAMBLE},
        {"toolUse": {"toolUseId": "tooluse_1", "name": "Weather",
                     "input": PARIS.model_dump()}}]}},
        "stopReason": "tool_use", "usage": USAGE, "metrics": {"latencyMs": 5}}


def converse_events() -> list[dict[str, Any]]:
    pieces = fragments(PARIS.model_dump_json(), 3)
    return [
        {"event": "messageStart", "data": {"role": "assistant"}},
        {"event": "contentBlockDelta", "data": {"contentBlockIndex": 0,
                                                "delta": {"text": PREAMBLE}}},
        {"event": "contentBlockStop", "data": {"contentBlockIndex": 0}},
        {"event": "contentBlockStart", "data": {"contentBlockIndex": 1, "start": {
            "toolUse": {"name": "Weather", "toolUseId": "tooluse_1"}}}},
        *({"event": "contentBlockDelta", "data": {"contentBlockIndex": 1,
                                                  "delta": {"toolUse": {"input": piece}}}}
          for piece in pieces),
        {"event": "contentBlockStop", "data": {"contentBlockIndex": 1}},
        {"event": "messageStop", "data": {"stopReason": "tool_use"}},
        {"event": "metadata", "data": {"usage": USAGE, "metrics": {"latencyMs": 5}}},
    ]


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeBedrock:
    return await serve_fake_bedrock(aiohttp_server)


@pytest.fixture
async def sdk(config_factory: ConfigFactory, fake: FakeBedrock,
              start_proxy: Callable[[Config], Awaitable[Proxy]]
              ) -> AsyncIterator[openai.AsyncOpenAI]:
    proxy = await start_proxy(config_factory(
        providers={"bedrock": bedrock_provider(fake)},
        models={MODEL: {"pricing": {"prompt": 3, "completion": 15},
                        "routes": [{"provider": "bedrock", "model": CLAUDE_ID}]}}))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


@pytest.mark.parametrize("stream", [False, True])
async def test_parse_on_bedrock_gets_the_tool_input_as_content(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, stream: bool) -> None:
    if stream:
        fake.then(Reply(events=converse_events()))
        async with sdk.chat.completions.stream(model=MODEL, messages=QUESTION,
                                               response_format=Weather) as events:
            pieces = [e.delta async for e in events if e.type == "content.delta" and e.delta]
            completion = await events.get_final_completion()
        assert pieces == fragments(PARIS.model_dump_json(), 3)
    else:
        fake.then(Reply(body=converse_answer()))
        completion = await sdk.chat.completions.parse(model=MODEL, messages=QUESTION,
                                                      response_format=Weather)
    choice = completion.choices[0]
    assert choice.message.parsed == PARIS
    assert json.loads(choice.message.content or "") == PARIS.model_dump()
    assert not choice.message.tool_calls and choice.finish_reason == "stop"
    tool_config = fake.calls[0].body["toolConfig"]
    assert tool_config["toolChoice"] == {"tool": {"name": "Weather"}}
    [spec] = [t["toolSpec"] for t in tool_config["tools"]]
    assert spec["name"] == "Weather"
    assert set(spec["inputSchema"]["json"]["properties"]) == {"city", "degrees"}
