"""Any provider kind that serves chat completions serves POST /responses too, through its
own chat exchange: the Bedrock (Converse) and Azure OpenAI kinds, whole and streamed,
with a function call round trip through the openai SDK's stream helper."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy
from tests.fake_azure import FakeAzure
from tests.fake_bedrock import CLAUDE_ID, FakeBedrock, bedrock_provider, serve_fake_bedrock

MODELS = {"bedrock": "bedrock/claude", "azure": "azure/gpt-4o"}
PRICING = {"prompt": 3, "completion": 15}
WEATHER = {"type": "function", "name": "get_weather",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"]}}


@pytest.fixture
async def sdk(config_factory: ConfigFactory, aiohttp_server: Any,
              start_proxy: Callable[[Config], Awaitable[Proxy]]
              ) -> AsyncIterator[openai.AsyncOpenAI]:
    bedrock: FakeBedrock = await serve_fake_bedrock(aiohttp_server)
    azure = FakeAzure(PROVIDER_KEY, {"gpt4o-prod": "gpt-4o-2024-08-06"})
    server = await aiohttp_server(azure.app())
    proxy = await start_proxy(config_factory(
        providers={"bedrock": bedrock_provider(bedrock),
                   "azure": {"kind": "azure", "base_url": str(server.make_url("")),
                             "api_key": PROVIDER_KEY}},
        models={MODELS["bedrock"]: {"pricing": PRICING,
                                    "routes": [{"provider": "bedrock", "model": CLAUDE_ID}]},
                MODELS["azure"]: {"pricing": PRICING,
                                  "routes": [{"provider": "azure", "model": "gpt4o-prod"}]}}))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


@pytest.mark.parametrize("kind", list(MODELS))
async def test_a_response_whole_and_streamed(sdk: openai.AsyncOpenAI, kind: str) -> None:
    whole = await sdk.responses.create(model=MODELS[kind], input="Say hello",
                                       max_output_tokens=100)
    assert whole.status == "completed" and whole.output_text
    assert whole.usage is not None and whole.usage.output_tokens > 0
    async with sdk.responses.stream(model=MODELS[kind], input="Say hello") as stream:
        streamed = await stream.get_final_response()
    assert streamed.output_text == whole.output_text
    follow = await sdk.responses.create(model=MODELS[kind], input="Again",
                                        previous_response_id=streamed.id)
    assert follow.status == "completed"


@pytest.mark.parametrize("kind", list(MODELS))
async def test_a_function_call_comes_back_as_an_item(sdk: openai.AsyncOpenAI,
                                                     kind: str) -> None:
    async with sdk.responses.stream(model=MODELS[kind], input="Weather in Paris?",
                                    tools=[WEATHER]) as stream:
        final = await stream.get_final_response()
    calls = [item for item in final.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert isinstance(json.loads(calls[0].arguments), dict)
