"""The OpenAI Agents SDK, set up as its documentation says (its default model,
OpenAIResponsesModel, on a default client whose base URL is the proxy; tracing off), runs a
function_tool round trip through POST /responses on every way of serving it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import agents
import openai
import pytest

from tests.conftest import ALICE_KEY, ConfigFactory, Proxy
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.responses_setup import AGENT_MODELS, KINDS, StartProxy, responses_config

CALLS: list[str] = []


@agents.function_tool
def get_weather(city: str) -> str:
    """The weather in a city."""
    CALLS.append(city)
    return f"Sunny in {city}, 21C"


@pytest.fixture
async def agent_client(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                       fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic,
                       start_proxy: StartProxy) -> AsyncIterator[Proxy]:
    proxy = await start_proxy(responses_config(config_factory, fake_openai, fake_backup,
                                               fake_anthropic))
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    agents.set_default_openai_client(client, use_for_tracing=False)
    agents.set_tracing_disabled(True)
    CALLS.clear()
    yield proxy
    await client.close()


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("streamed", [False, True], ids=["run", "run_streamed"])
async def test_function_tool_round_trip(agent_client: Proxy, kind: str,
                                        streamed: bool) -> None:
    agent = agents.Agent(name="Weather", instructions="Use the tool.",
                         model=AGENT_MODELS[kind], tools=[get_weather])
    if streamed:
        run = agents.Runner.run_streamed(agent, "What is the weather in Paris?")
        async for _ in run.stream_events():
            pass
        result: agents.RunResult | agents.RunResultStreaming = run
    else:
        result = await agents.Runner.run(agent, "What is the weather in Paris?")
    assert len(CALLS) == 1 and (kind == "mock" or CALLS == ["Paris"])  # the tool ran once
    outputs = [item for item in result.new_items if item.type == "tool_call_output_item"]
    assert len(outputs) == 1 and "Sunny in" in str(outputs[0].output)
    assert isinstance(result.final_output, str) and result.final_output
    assert len(result.raw_responses) == 2  # the call, then the answer to its result
    assert all(r.response_id and r.response_id.startswith("gen-")
               for r in result.raw_responses)


async def test_model_ids_with_a_slash_need_the_model_id_prefix_mode(agent_client: Proxy) -> None:
    """Ids such as "chat/gpt" look like provider/model to the SDK's MultiProvider: with
    unknown_prefix_mode="model_id" they go to the proxy as they are."""
    agent = agents.Agent(name="Weather", model=KINDS["chat"], tools=[get_weather])
    config = agents.RunConfig(model_provider=agents.MultiProvider(
        unknown_prefix_mode="model_id"))
    result = await agents.Runner.run(agent, "Weather in Paris?", run_config=config)
    assert CALLS == ["Paris"] and result.final_output
