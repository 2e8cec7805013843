"""kind: azure end to end: the official openai and anthropic SDKs through the proxy to a fake
Azure OpenAI resource that checks the path, the api-version, the api-key header and the
arguments as Azure does, and answers in Azure's shapes."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth
from tests.fake_azure import (
    ANSWER,
    FILTER_TRIGGER,
    TOOL_ANSWER,
    USAGE,
    FakeAzure,
)
from tests.fakes import Behaviour

StartProxy = Callable[[Config], Awaitable[Proxy]]
DEPLOYMENTS = {"gpt4o-prod": "gpt-4o-2024-08-06", "embed-small": "text-embedding-3-small",
               "instruct": "gpt-35-turbo-instruct"}
PRICING = {"prompt": 2.5, "completion": 10}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
HI = [{"role": "user", "content": "Say hello"}]


@pytest.fixture
async def fake_azure(aiohttp_server: Any) -> FakeAzure:
    fake = FakeAzure(PROVIDER_KEY, DEPLOYMENTS)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url(""))
    return fake


def azure_provider(fake: FakeAzure, **extra: Any) -> dict[str, Any]:
    return {"kind": "azure", "base_url": fake.base_url, "api_key": PROVIDER_KEY, **extra}


def azure_models(provider: str, prefix: str) -> dict[str, Any]:
    return {
        f"{prefix}/gpt-4o": {"pricing": PRICING,
                             "routes": [{"provider": provider, "model": "gpt4o-prod"}]},
        f"{prefix}/text-embedding-3-small": {
            "pricing": {"prompt": 0.02}, "routes": [{"provider": provider,
                                                     "model": "embed-small"}]},
        f"{prefix}/gpt-35-turbo-instruct": {
            "pricing": {"prompt": 1.5, "completion": 2},
            "routes": [{"provider": provider, "model": "instruct"}]},
    }


@pytest.fixture
async def azure_proxy(config_factory: ConfigFactory, fake_azure: FakeAzure,
                      start_proxy: StartProxy) -> Proxy:
    """`azure` (classic deployments, API 2024-10-21) and `azure_v1` (the v1 API), both the
    same fake resource."""
    return await start_proxy(config_factory(
        providers={"azure": azure_provider(fake_azure, api_version="2024-10-21"),
                   "azure_v1": azure_provider(fake_azure)},
        models={**azure_models("azure", "azure"), **azure_models("azure_v1", "azure-v1")}))


@pytest.fixture
async def client(azure_proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=azure_proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield sdk
    await sdk.close()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200, await response.text()
        row = (await response.json())["data"]
    assert row is not None
    return row


def assert_azure_auth(fake: FakeAzure) -> None:
    for request in fake.requests:
        assert request.headers["api-key"] == PROVIDER_KEY
        assert "Authorization" not in request.headers
        assert all(ALICE_KEY not in value for value in request.headers.values())


# --- the address ------------------------------------------------------------------------


async def test_classic_chat_goes_to_the_deployment_with_the_api_version(
        client: openai.AsyncOpenAI, azure_proxy: Proxy, fake_azure: FakeAzure) -> None:
    raw = await client.chat.completions.with_raw_response.create(model="azure/gpt-4o",
                                                                 messages=HI)
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.model == "azure/gpt-4o"
    assert completion.id == raw.headers["X-AnyRouter-Generation-Id"]
    assert raw.headers["X-AnyRouter-Provider"] == "azure"
    # Azure's own additions reach the client.
    assert completion.model_extra is not None
    assert completion.model_extra["prompt_filter_results"][0]["prompt_index"] == 0
    assert completion.choices[0].model_extra is not None
    assert "content_filter_results" in completion.choices[0].model_extra
    upstream = fake_azure.requests[0]
    assert upstream.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert upstream.query == {"api-version": "2024-10-21"}
    assert upstream.body["messages"] == HI
    assert upstream.body["max_completion_tokens"] > 0  # the reserved cap, Azure's field
    assert_azure_auth(fake_azure)
    row = await generation(azure_proxy, completion.id)
    assert (row["tokens_prompt"], row["tokens_completion"]) == (13, 6)
    assert row["usage_source"] == "provider" and row["upstream_model"] == "gpt4o-prod"
    assert row["total_cost"] == pytest.approx((13 * 2.5 + 6 * 10) / 1e6)


async def test_v1_chat_puts_the_deployment_in_the_body(client: openai.AsyncOpenAI,
                                                        fake_azure: FakeAzure) -> None:
    completion = await client.chat.completions.create(model="azure-v1/gpt-4o", messages=HI)
    assert completion.choices[0].message.content == ANSWER
    upstream = fake_azure.requests[0]
    assert upstream.path == "/openai/v1/chat/completions"
    assert upstream.query == {}
    assert upstream.body["model"] == "gpt4o-prod"
    assert_azure_auth(fake_azure)


@pytest.mark.parametrize("prefix", ["azure", "azure-v1"])
async def test_stream_with_usage_and_cost(client: openai.AsyncOpenAI, azure_proxy: Proxy,
                                          fake_azure: FakeAzure, prefix: str) -> None:
    stream = await client.chat.completions.create(
        model=f"{prefix}/gpt-4o", messages=HI, stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == ANSWER
    assert {c.id for c in chunks} == {chunks[0].id}
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert usage_chunk.usage.prompt_tokens == USAGE["prompt_tokens"]
    assert fake_azure.requests[0].body["stream_options"] == {"include_usage": True}
    row = await generation(azure_proxy, chunks[0].id)
    assert row["usage_source"] == "provider" and row["streamed"] is True
    assert row["total_cost"] == pytest.approx((13 * 2.5 + 6 * 10) / 1e6)
    assert usage_chunk.usage.model_extra is not None
    assert usage_chunk.usage.model_extra["cost"] == pytest.approx(row["total_cost"])


@pytest.mark.parametrize("stream", [False, True])
async def test_tools_round_trip(client: openai.AsyncOpenAI, fake_azure: FakeAzure,
                                stream: bool) -> None:
    question = [{"role": "user", "content": "Weather in Paris?"}]
    call_id, name, arguments = await _tool_call(client, question, stream)
    assert (call_id, name, json.loads(arguments)) == ("call_azure_1", "get_weather",
                                                      {"city": "Paris"})
    follow_up = [*question,
                 {"role": "assistant", "content": None, "tool_calls": [
                     {"id": call_id, "type": "function",
                      "function": {"name": name, "arguments": arguments}}]},
                 {"role": "tool", "tool_call_id": call_id, "content": "sunny"}]
    answer = await client.chat.completions.create(model="azure/gpt-4o", tools=[WEATHER],
                                                  messages=follow_up)  # type: ignore[arg-type]
    assert answer.choices[0].message.content == TOOL_ANSWER
    assert fake_azure.requests[1].body["messages"][-1] == follow_up[-1]
    assert fake_azure.requests[1].body["tools"] == [WEATHER]


async def _tool_call(client: openai.AsyncOpenAI, messages: list[dict[str, Any]],
                     stream: bool) -> tuple[str, str, str]:
    if not stream:
        completion = await client.chat.completions.create(
            model="azure/gpt-4o", tools=[WEATHER], messages=messages)  # type: ignore[arg-type]
        assert completion.choices[0].finish_reason == "tool_calls"
        call = completion.choices[0].message.tool_calls[0]  # type: ignore[index]
        return call.id, call.function.name, call.function.arguments  # type: ignore[union-attr]
    chunks = [c async for c in await client.chat.completions.create(
        model="azure/gpt-4o", tools=[WEATHER], messages=messages,  # type: ignore[arg-type]
        stream=True)]
    calls = [call for c in chunks if c.choices for call in c.choices[0].delta.tool_calls or []]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    first = calls[0]
    assert first.id is not None and first.function is not None
    arguments = "".join(c.function.arguments or "" for c in calls if c.function)
    return first.id, str(first.function.name), arguments


@pytest.mark.parametrize(("prefix", "path", "query"), [
    ("azure", "/openai/deployments/embed-small/embeddings", {"api-version": "2024-10-21"}),
    ("azure-v1", "/openai/v1/embeddings", {})])
async def test_embeddings(client: openai.AsyncOpenAI, azure_proxy: Proxy, fake_azure: FakeAzure,
                          prefix: str, path: str, query: dict[str, str]) -> None:
    raw = await client.embeddings.with_raw_response.create(
        model=f"{prefix}/text-embedding-3-small", input=["a", "b"])
    result = raw.parse()
    assert [d.index for d in result.data] == [0, 1]
    assert result.data[1].embedding == [0.5, -0.25, 0.25]
    assert (fake_azure.requests[0].path, fake_azure.requests[0].query) == (path, query)
    assert_azure_auth(fake_azure)
    row = await generation(azure_proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["tokens_prompt"] == 5
    assert row["total_cost"] == pytest.approx(5 * 0.02 / 1e6)


async def test_legacy_completions(client: openai.AsyncOpenAI, fake_azure: FakeAzure) -> None:
    completion = await client.completions.create(model="azure/gpt-35-turbo-instruct",
                                                 prompt="Once upon")
    assert completion.choices[0].text == ANSWER
    stream = await client.completions.create(model="azure-v1/gpt-35-turbo-instruct",
                                             prompt="Once upon", stream=True)
    assert "".join([c.choices[0].text async for c in stream if c.choices]) == ANSWER
    assert [r.path for r in fake_azure.requests] == [
        "/openai/deployments/instruct/completions", "/openai/v1/completions"]
    assert fake_azure.requests[0].body["max_tokens"] > 0  # legacy completions: max_tokens


# --- Anthropic clients ------------------------------------------------------------------


@pytest.fixture
async def claude_sdk(azure_proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=azure_proxy.url("/api"), api_key=ALICE_KEY,
                                   max_retries=0)
    yield sdk
    await sdk.close()


async def test_anthropic_sdk_to_an_azure_route(claude_sdk: anthropic.AsyncAnthropic,
                                               azure_proxy: Proxy,
                                               fake_azure: FakeAzure) -> None:
    message = await claude_sdk.messages.create(model="azure/gpt-4o", max_tokens=200,
                                               system="Be brief", messages=HI)  # type: ignore[arg-type]
    assert message.content[0].type == "text" and message.content[0].text == ANSWER
    assert message.usage.input_tokens == 13 and message.usage.output_tokens == 6
    upstream = fake_azure.requests[0]
    assert upstream.path == "/openai/deployments/gpt4o-prod/chat/completions"
    assert upstream.query == {"api-version": "2024-10-21"}
    assert upstream.body["messages"][0] == {"role": "system", "content": "Be brief"}
    assert_azure_auth(fake_azure)

    async with claude_sdk.messages.stream(model="azure-v1/gpt-4o", max_tokens=200,
                                          messages=HI) as stream:  # type: ignore[arg-type]
        text = "".join([piece async for piece in stream.text_stream])
        final = await stream.get_final_message()
    assert text == ANSWER
    assert final.usage.output_tokens == 6
    assert fake_azure.requests[1].path == "/openai/v1/chat/completions"
    assert fake_azure.requests[1].body["stream_options"] == {"include_usage": True}


# --- errors -----------------------------------------------------------------------------


async def test_content_filter_error_keeps_azures_code_and_reason(
        client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(
            model="azure/gpt-4o", messages=[{"role": "user", "content": FILTER_TRIGGER}])
    error = info.value
    assert error.status_code == 400
    assert error.code == "content_filter" and error.param == "prompt"
    assert "content management policy" in error.message
    body = error.body
    assert isinstance(body, dict)
    assert body["type"] == "invalid_request_error"
    inner = body["metadata"]["innererror"]
    assert inner["code"] == "ResponsibleAIPolicyViolation"
    assert inner["content_filter_result"]["violence"] == {"filtered": True,
                                                          "severity": "medium"}
    assert body["metadata"]["provider_name"] == "azure"


async def test_bad_request_carries_azures_message(client: openai.AsyncOpenAI,
                                                  fake_azure: FakeAzure) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="azure/gpt-4o", messages=HI, temperature=3)
    assert "3 is greater than the maximum of 2 - 'temperature'" in info.value.message
    assert len(fake_azure.requests) == 1  # the request's own fault: no failover, no retry


async def test_unknown_deployment_is_azures_404(config_factory: ConfigFactory,
                                                fake_azure: FakeAzure,
                                                start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"azure": azure_provider(fake_azure, api_version="2024-10-21")},
        models={"azure/ghost": {"pricing": PRICING,
                                "routes": [{"provider": "azure", "model": "ghost"}]}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError) as info:
            await sdk.chat.completions.create(model="azure/ghost", messages=HI)
    assert info.value.code == "DeploymentNotFound"
    assert "deployment for this resource does not exist" in info.value.message


@pytest.fixture
async def failover_proxy(config_factory: ConfigFactory, fake_azure: FakeAzure,
                         start_proxy: StartProxy) -> Proxy:
    """azure/gpt-4o: first `west` (wrong key), then `east` (the right one)."""
    west = {**azure_provider(fake_azure, api_version="2024-10-21"),
            "api_key": "a-stale-key-that-azure-refuses"}
    return await start_proxy(config_factory(
        providers={"west": west, "east": azure_provider(fake_azure)},
        models={"azure/gpt-4o": {"pricing": PRICING, "routes": [
            {"provider": "west", "model": "gpt4o-prod"},
            {"provider": "east", "model": "gpt4o-prod"}]},
            "azure/west-only": {"pricing": PRICING, "routes": [
                {"provider": "west", "model": "gpt4o-prod"}]}},
        server={"retries": 0}))


async def test_401_fails_over_and_alone_is_a_502(failover_proxy: Proxy,
                                                fake_azure: FakeAzure) -> None:
    async with openai.AsyncOpenAI(base_url=failover_proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="azure/gpt-4o",
                                                                  messages=HI)
        assert raw.parse().choices[0].message.content == ANSWER
        assert raw.headers["X-AnyRouter-Provider"] == "east"
        with pytest.raises(openai.APIStatusError) as info:
            await sdk.chat.completions.create(model="azure/west-only", messages=HI)
    assert [r.path for r in fake_azure.requests[:2]] == [
        "/openai/deployments/gpt4o-prod/chat/completions", "/openai/v1/chat/completions"]
    assert info.value.status_code == 502
    assert info.value.code == "upstream_error"
    assert "west" in info.value.message and "credentials" in info.value.message
    assert "a-stale-key" not in json.dumps(info.value.body)


async def test_403_fails_over(config_factory: ConfigFactory, fake_azure: FakeAzure,
                              start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"west": azure_provider(fake_azure, api_version="2024-10-21"),
                   "east": azure_provider(fake_azure)},
        models={"azure/gpt-4o": {"pricing": PRICING, "routes": [
            {"provider": "west", "model": "gpt4o-prod"},
            {"provider": "east", "model": "gpt4o-prod"}]}}, server={"retries": 0}))
    fake_azure.then(Behaviour(status=403, body={"error": {
        "code": "403", "message": "Traffic is not from an approved private endpoint."}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        raw = await sdk.chat.completions.with_raw_response.create(model="azure/gpt-4o",
                                                                  messages=HI)
    assert raw.parse().choices[0].message.content == ANSWER
    assert raw.headers["X-AnyRouter-Provider"] == "east"
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [("west", 403),
                                                                         ("east", 200)]


async def test_429_says_when_to_come_back(config_factory: ConfigFactory, fake_azure: FakeAzure,
                                          start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"azure": azure_provider(fake_azure, api_version="2024-10-21")},
        models=azure_models("azure", "azure"), server={"retry_after_max_s": 1}))
    fake_azure.then(Behaviour(status=429, headers={"Retry-After": "7",
                                                   "retry-after-ms": "7000"}, body={"error": {
        "code": "429", "message": "Requests to the ChatCompletions_Create Operation under "
        "Azure OpenAI API version 2024-10-21 have exceeded token rate limit of your current "
        "OpenAI S0 pricing tier. Please retry after 7 seconds."}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.RateLimitError) as info:
            await sdk.chat.completions.create(model="azure/gpt-4o", messages=HI)
    assert info.value.code == "upstream_rate_limited"
    assert info.value.response.headers["Retry-After"] == "7"
    assert len(fake_azure.requests) == 1  # 7 s is past retry_after_max_s: not waited for


# --- quirks on Azure ------------------------------------------------------------------------


async def test_an_old_api_version_streams_with_stream_options_off(
        config_factory: ConfigFactory, fake_azure: FakeAzure, start_proxy: StartProxy) -> None:
    """API versions before 2024-09-01-preview refuse stream_options (400 Unrecognized
    request argument); `stream_options: false` leaves it out, and the stream, which then
    carries no usage, is charged an estimate."""
    old = azure_provider(fake_azure, api_version="2024-06-01")
    async with aiohttp.ClientSession() as session:
        for stream_options, status in ((True, 400), (False, 200)):
            proxy = await start_proxy(config_factory(
                providers={"azure": {**old, "stream_options": stream_options}},
                models=azure_models("azure", "azure")))
            async with session.post(proxy.url("/api/v1/chat/completions"), headers=auth(),
                                    json={"model": "azure/gpt-4o", "messages": HI,
                                          "stream": True}) as response:
                text = await response.text()
                assert response.status == status, text
            if status == 400:
                assert "Unrecognized request argument supplied: stream_options" in text
                continue
            assert text.rstrip().endswith("data: [DONE]") and "Hello" in text
            gen_id = response.headers["X-AnyRouter-Generation-Id"]
            row = await generation(proxy, gen_id)
            assert row["usage_source"] == "estimated" and row["total_cost"] > 0
    assert "stream_options" not in fake_azure.requests[-1].body
    assert fake_azure.requests[-1].body["max_tokens"] > 0  # no max_completion_tokens before


async def test_an_empty_api_key_header_is_no_credentials(config_factory: ConfigFactory,
                                                         fake_azure: FakeAzure,
                                                         start_proxy: StartProxy) -> None:
    provider = {"kind": "azure", "base_url": fake_azure.base_url,
                "headers": {"api-key": "${AZURE_OPENAI_API_KEY:-}"}}
    proxy = await start_proxy(config_factory(providers={"azure": provider},
                                             models=azure_models("azure", "azure")))
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url("/api/v1/providers"), headers=auth()) as response:
            statuses = {p["id"]: p["status"] for p in (await response.json())["data"]}
        async with session.post(proxy.url("/api/v1/chat/completions"), headers=auth(),
                                json={"model": "azure/gpt-4o", "messages": HI}) as response:
            body = await response.json()
            assert response.status == 503
    assert statuses == {"azure": "no_credentials"}
    assert body["error"]["code"] == "no_provider_available"
    assert fake_azure.requests == []  # no request with an empty api-key header went out


async def test_a_wildcard_deployment_name_stays_in_the_path(config_factory: ConfigFactory,
                                                            fake_azure: FakeAzure,
                                                            start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"azure": azure_provider(fake_azure, api_version="2024-10-21")},
        models={"azure/*": {"pricing": PRICING, "routes": [{"provider": "azure",
                                                             "model": "*"}]}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        completion = await sdk.chat.completions.create(model="azure/gpt4o-prod", messages=HI)
        assert completion.choices[0].message.content == ANSWER
        with pytest.raises(openai.NotFoundError) as info:  # would climb out of the path
            await sdk.chat.completions.create(model="azure/gpt4o-prod/../../x", messages=HI)
    assert info.value.code == "model_not_found"
    assert [r.path for r in fake_azure.requests] == [
        "/openai/deployments/gpt4o-prod/chat/completions"]
