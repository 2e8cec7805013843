"""kind: gemini (Google AI Studio) end to end: the official openai and anthropic SDKs against
the proxy, the proxy against the fake Gemini API over real HTTP (tests/fake_gemini.py),
answers from the golden files in tests/data/gemini/."""

from __future__ import annotations

import base64
import json
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pydantic
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fake_gemini import (
    GEMINI_KEY,
    FakeGoogle,
    GoogleReply,
    golden,
    serve_fake_google,
    sse_events,
)
from tests.fakes import ANSWER, FakeOpenAI

FLASH = "google/gemini-2.5-flash"
FALLBACK = "google/gemini-with-backup"
EMBED = "google/gemini-embedding"
PRICING = {"prompt": 0.30, "completion": 2.50, "cached_prompt": 0.075}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Weather for a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                   "required": ["city"]}}}
PIXEL = ("data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk"
         "YPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==")


@pytest.fixture
async def google(aiohttp_server: Any) -> FakeGoogle:
    return await serve_fake_google(aiohttp_server)


def gemini_provider(fake: FakeGoogle, **extra: Any) -> dict[str, Any]:
    return {"kind": "gemini", "base_url": f"{fake.base_url}/v1beta", "api_key": GEMINI_KEY,
            **extra}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, google: FakeGoogle, fake_openai: FakeOpenAI,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    return await start_proxy(config_factory(
        providers={"gemini": gemini_provider(google), "backup": openai_provider(fake_openai)},
        models={
            FLASH: {"pricing": PRICING,
                    "routes": [{"provider": "gemini", "model": "gemini-2.5-flash"}]},
            FALLBACK: {"pricing": PRICING,
                       "routes": [{"provider": "gemini", "model": "gemini-2.5-flash"},
                                  {"provider": "backup", "model": "gpt-4o-mini"}]},
            EMBED: {"pricing": {"prompt": 0.15, "completion": 0},
                    "routes": [{"provider": "gemini", "model": "gemini-embedding-001"}]}},
        server={"retries": 0}))


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


@pytest.fixture
async def claude_sdk(proxy: Proxy) -> AsyncIterator[anthropic.AsyncAnthropic]:
    client = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                      max_retries=0)
    yield client
    await client.close()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200
        data: dict[str, Any] = (await response.json())["data"]
        return data


def cost(prompt: int, completion: int, cached: int = 0) -> float:
    return round(((prompt - cached) * PRICING["prompt"] + cached * PRICING["cached_prompt"]
                  + completion * PRICING["completion"]) / 1e6, 10)


# -- text ------------------------------------------------------------------------------------

async def test_text_with_thoughts_and_cache_is_priced_from_usage_metadata(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, proxy: Proxy) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FLASH, max_tokens=500,
        messages=[{"role": "system", "content": "Be brief."},
                  {"role": "user", "content": "Hello"},
                  {"role": "assistant", "content": "Hi! What can I do?"},
                  {"role": "user", "content": "Say hello."}])
    completion = raw.parse()
    message = completion.choices[0].message
    assert message.content == "Hello from the fake Gemini!"
    assert message.model_extra is not None
    assert message.model_extra["reasoning_content"].startswith("**Thinking about the sea**")
    assert completion.choices[0].finish_reason == "stop"
    assert completion.id == raw.headers["X-AnyRouter-Generation-Id"]
    usage = completion.usage
    assert usage is not None
    assert (usage.prompt_tokens, usage.completion_tokens) == (120, 7 + 48)
    assert usage.completion_tokens_details is not None
    assert usage.completion_tokens_details.reasoning_tokens == 48
    assert usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 64

    sent = google.received[-1]
    assert sent.api == "gemini" and sent.model == "gemini-2.5-flash"
    assert sent.method == "generateContent"
    assert sent.headers["x-goog-api-key"] == GEMINI_KEY
    assert all(ALICE_KEY not in v for v in sent.headers.values())
    assert sent.body["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert [c["role"] for c in sent.body["contents"]] == ["user", "model", "user"]
    assert sent.body["generationConfig"]["maxOutputTokens"] == 500

    row = await generation(proxy, completion.id)
    assert row["provider_name"] == "gemini"
    assert row["tokens_prompt"] == 120 and row["tokens_completion"] == 55
    assert row["native_tokens_reasoning"] == 48 and row["native_tokens_cached"] == 64
    assert row["total_cost"] == pytest.approx(cost(120, 55, cached=64))
    assert row["upstream_id"] == golden("generate_text.json")["responseId"]
    assert row["usage_source"] == "provider"


async def test_no_cap_from_the_client_sends_the_reserved_one(
        sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    await sdk.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": "Hi"}])
    await sdk.chat.completions.create(model=FLASH, reasoning_effort="low",
                                      messages=[{"role": "user", "content": "Think"}])
    plain, thinking = (r.body["generationConfig"] for r in google.received)
    assert plain == {"maxOutputTokens": 4096}  # server.default_max_tokens
    # reasoning: the default plus the effort's budget, the thoughts asked for
    assert thinking == {"maxOutputTokens": 4096 + 2048,
                        "thinkingConfig": {"thinkingBudget": 2048, "includeThoughts": True}}


async def test_stream_relays_text_thoughts_and_usage(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, proxy: Proxy) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FLASH, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}])
    assert raw.headers["Content-Type"].startswith("text/event-stream")
    chunks = [chunk async for chunk in raw.parse()]
    gen_id = raw.headers["X-AnyRouter-Generation-Id"]
    assert all(chunk.id == gen_id and chunk.model == FLASH for chunk in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the fake Gemini!"
    thoughts = "".join((c.choices[0].delta.model_extra or {}).get("reasoning_content", "")
                       for c in chunks if c.choices)
    assert thoughts == "**Planning**\nA short, friendly answer."
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    usage = chunks[-1].usage
    assert usage is not None and not chunks[-1].choices
    assert (usage.prompt_tokens, usage.completion_tokens) == (120, 55)
    assert usage.model_extra is not None
    assert usage.model_extra["cost"] == pytest.approx(cost(120, 55, cached=64))

    sent = google.received[-1]
    assert (sent.method, sent.query) == ("streamGenerateContent", "alt=sse")
    row = await generation(proxy, gen_id)
    assert row["streamed"] is True and row["usage_source"] == "provider"
    assert row["tokens_completion"] == 55 and row["native_tokens_reasoning"] == 48
    assert row["total_cost"] == pytest.approx(cost(120, 55, cached=64))


async def test_stream_without_include_usage_sends_no_usage_chunk_but_charges(
        sdk: openai.AsyncOpenAI, proxy: Proxy) -> None:
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FLASH, stream=True, messages=[{"role": "user", "content": "Say hello."}])
    chunks = [chunk async for chunk in raw.parse()]
    assert all(chunk.usage is None for chunk in chunks)
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["tokens_prompt"] == 120 and row["usage_source"] == "provider"


@pytest.mark.parametrize(("reply", "error"), [
    (GoogleReply(drop_after=2), "connection closed early"),
    # a clean end of the body without a finishReason is no normal end either
    (GoogleReply(events=sse_events("stream_text.sse")[:2]),
     "ended the stream before a finishReason"),
])
async def test_stream_cut_short_is_an_error_event_and_charged_an_estimate(
        reply: GoogleReply, error: str, sdk: openai.AsyncOpenAI, google: FakeGoogle,
        proxy: Proxy) -> None:
    google.then(reply)
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FLASH, stream=True, messages=[{"role": "user", "content": "Say hello."}])
    received = []
    with pytest.raises(openai.APIError, match=error):
        async for chunk in raw.parse():
            received.append(chunk)
    assert "".join(c.choices[0].delta.content or "" for c in received if c.choices) \
        == "Hello from "
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["status_code"] == 502 and row["usage_source"] == "partial"
    # the input as Gemini counted it, the output at least what it had counted so far
    assert row["tokens_prompt"] == 120 and row["tokens_completion"] >= 3 + 48
    assert row["total_cost"] > 0


# -- tools -----------------------------------------------------------------------------------

async def test_parallel_tool_calls_round_trip_with_thought_signature(
        sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    first = await sdk.chat.completions.create(model=FLASH, messages=messages, tools=[WEATHER],
                                              tool_choice="auto")
    choice = first.choices[0]
    assert choice.finish_reason == "tool_calls"
    calls = choice.message.tool_calls or []
    assert [json.loads(c.function.arguments) for c in calls] == [{"city": "Paris"},
                                                                 {"city": "Tokyo"}]
    assert len({c.id for c in calls}) == 2
    signature = golden("generate_parallel_calls.json")["candidates"][0]["content"]["parts"][0][
        "thoughtSignature"]
    assert (calls[0].model_extra or {})["extra_content"] == {
        "google": {"thought_signature": signature}}
    sent = google.received[-1].body
    assert sent["tools"] == [{"functionDeclarations": [{
        "name": "get_weather", "description": "Weather for a city",
        "parametersJsonSchema": WEATHER["function"]["parameters"]}]}]
    assert sent["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}

    messages.append(choice.message.model_dump(exclude_none=True))
    for call, result in zip(calls, ('{"temp_c": 21}', "sunny"), strict=True):
        messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
    second = await sdk.chat.completions.create(model=FLASH, messages=messages, tools=[WEATHER])
    assert second.choices[0].message.content == "Hello from the fake Gemini!"
    model_turn, results = google.received[-1].body["contents"][1:]
    assert model_turn["role"] == "model"
    assert model_turn["parts"][0]["thoughtSignature"] == signature
    assert [p["functionCall"]["id"] for p in model_turn["parts"]] == [c.id for c in calls]
    assert results == {"role": "user", "parts": [
        {"functionResponse": {"id": calls[0].id, "name": "get_weather",
                              "response": {"temp_c": 21}}},
        {"functionResponse": {"id": calls[1].id, "name": "get_weather",
                              "response": {"output": "sunny"}}}]}


async def test_streamed_parallel_tool_calls(sdk: openai.AsyncOpenAI) -> None:
    stream = await sdk.chat.completions.create(
        model=FLASH, stream=True, tools=[WEATHER], tool_choice="required",
        messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}])
    calls: dict[int, dict[str, str]] = {}
    finish = None
    async for chunk in stream:
        for call in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
            entry["id"] += call.id or ""
            assert call.function is not None
            entry["name"] += call.function.name or ""
            entry["arguments"] += call.function.arguments or ""
        if chunk.choices and chunk.choices[0].finish_reason:
            finish = chunk.choices[0].finish_reason
    assert finish == "tool_calls"
    assert [json.loads(calls[i]["arguments"])["city"] for i in (0, 1)] == ["Paris", "Tokyo"]
    assert all(calls[i]["name"] == "get_weather" and calls[i]["id"] for i in (0, 1))


async def test_tool_choice_naming_a_function(sdk: openai.AsyncOpenAI,
                                             google: FakeGoogle) -> None:
    await sdk.chat.completions.create(
        model=FLASH, tools=[WEATHER], messages=[{"role": "user", "content": "Paris?"}],
        tool_choice={"type": "function", "function": {"name": "get_weather"}})
    assert google.received[-1].body["toolConfig"] == {"functionCallingConfig": {
        "mode": "ANY", "allowedFunctionNames": ["get_weather"]}}


# -- images, structured output, embeddings ---------------------------------------------------

async def test_images_inline_and_by_url(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    await sdk.chat.completions.create(model=FLASH, messages=[{"role": "user", "content": [
        {"type": "text", "text": "What is in these?"},
        {"type": "image_url", "image_url": {"url": PIXEL}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.png",
                                            "detail": "high"}}]}])
    parts = google.received[-1].body["contents"][0]["parts"]
    assert parts == [
        {"text": "What is in these?"},
        {"inlineData": {"mimeType": "image/png", "data": PIXEL.split(",", 1)[1]}},
        {"fileData": {"mimeType": "image/png", "fileUri": "https://example.com/cat.png"}}]


class Weather(pydantic.BaseModel):
    city: str
    temperature_c: int


async def test_structured_output_with_parse(sdk: openai.AsyncOpenAI,
                                            google: FakeGoogle) -> None:
    completion = await sdk.chat.completions.parse(
        model=FLASH, response_format=Weather,
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}])
    assert completion.choices[0].message.parsed == Weather(city="Paris", temperature_c=21)
    config = google.received[-1].body["generationConfig"]
    assert config["responseMimeType"] == "application/json"
    schema = config["responseJsonSchema"]
    assert schema["properties"] == {"city": {"title": "City", "type": "string"},
                                    "temperature_c": {"title": "Temperature C",
                                                      "type": "integer"}}
    assert schema["required"] == ["city", "temperature_c"]


async def test_json_object_mode(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    completion = await sdk.chat.completions.create(
        model=FLASH, response_format={"type": "json_object"},
        messages=[{"role": "user", "content": "Weather in Paris as JSON"}])
    assert json.loads(completion.choices[0].message.content or "") == {
        "city": "Paris", "temperature_c": 21}
    assert google.received[-1].body["generationConfig"]["responseMimeType"] \
        == "application/json"


async def test_embeddings_batch_and_single(sdk: openai.AsyncOpenAI, google: FakeGoogle,
                                          proxy: Proxy) -> None:
    expected = [e["values"] for e in golden("batch_embed_contents.json")["embeddings"]]
    raw = await sdk.embeddings.with_raw_response.create(  # the SDK asks for base64
        model=EMBED, input=["first text", "second"], dimensions=4)
    result = raw.parse()
    assert len(result.data) == 2
    for item, values in zip(result.data, expected, strict=True):  # float32 on the wire
        assert item.embedding == pytest.approx(values, rel=1e-6)
    sent = google.received[-1]
    assert sent.method == "batchEmbedContents"
    assert sent.body["requests"][1] == {"model": "models/gemini-embedding-001",
                                        "content": {"parts": [{"text": "second"}]},
                                        "outputDimensionality": 4}
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["usage_source"] == "estimated" and row["tokens_prompt"] > 0
    assert result.usage.prompt_tokens == row["tokens_prompt"]

    single = await sdk.embeddings.create(model=EMBED, input="first text",
                                         encoding_format="float")
    assert single.data[0].embedding == golden("embed_content.json")["embedding"]["values"]
    assert google.received[-1].method == "embedContent"
    assert google.received[-1].body == {"content": {"parts": [{"text": "first text"}]}}


async def test_base64_embeddings_are_little_endian_float32(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{proxy.base_url}/embeddings", headers=auth(),
            json={"model": EMBED, "input": "x", "encoding_format": "base64"}) as response:
        body = await response.json()
    packed = base64.b64decode(body["data"][0]["embedding"])
    assert list(struct.unpack(f"<{len(packed) // 4}f", packed)) == pytest.approx(
        golden("embed_content.json")["embedding"]["values"], rel=1e-6)


# -- errors and failover ---------------------------------------------------------------------

async def test_google_400_passes_with_its_message(sdk: openai.AsyncOpenAI,
                                                  google: FakeGoogle) -> None:
    google.then(GoogleReply(400, golden("error_invalid_argument.json")))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.create(model=FALLBACK, temperature=1.5,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert "temperature: must be between 0 and 2" in caught.value.message
    assert caught.value.body["code"] == "invalid_request"  # type: ignore[index]


async def test_429_says_when_to_come_back(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    google.then(GoogleReply(429, golden("error_resource_exhausted.json")))
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.chat.completions.create(model=FLASH,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.response.headers["Retry-After"] == "37"  # RetryInfo.retryDelay
    assert caught.value.body["code"] == "upstream_rate_limited"  # type: ignore[index]


async def test_google_5xx_is_retried_elsewhere_and_named(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, fake_openai: FakeOpenAI) -> None:
    overloaded = {"error": {"code": 503, "status": "UNAVAILABLE",
                            "message": "The model is overloaded. Please try again later."}}
    google.then(GoogleReply(503, overloaded), GoogleReply(503, overloaded))
    answer = await sdk.chat.completions.create(model=FALLBACK,
                                               messages=[{"role": "user", "content": "Hi"}])
    assert answer.choices[0].message.content == ANSWER  # the openai route answered
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.chat.completions.create(model=FLASH,
                                          messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    assert "gemini failed with status 503: The model is overloaded" in caught.value.message


async def test_an_unknown_model_is_googles_404(
        config_factory: ConfigFactory, google: FakeGoogle,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(config_factory(
        providers={"gemini": gemini_provider(google)},
        models={FLASH: {"pricing": PRICING,
                        "routes": [{"provider": "gemini", "model": "gemini-0.1-nope"}]}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.NotFoundError, match="is not found for API version"):
            await sdk.chat.completions.create(model=FLASH,
                                              messages=[{"role": "user", "content": "Hi"}])


@pytest.mark.parametrize("reply", [
    GoogleReply(403, golden("error_permission_denied.json")),
    GoogleReply(400, golden("error_api_key_invalid.json")),  # Google's answer to a bad key
])
async def test_credential_failures_fail_over_to_the_openai_route(
        reply: GoogleReply, sdk: openai.AsyncOpenAI, google: FakeGoogle,
        fake_openai: FakeOpenAI, proxy: Proxy) -> None:
    google.then(reply)
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FALLBACK, messages=[{"role": "user", "content": "Hi"}])
    assert raw.parse().choices[0].message.content == ANSWER
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert fake_openai.requests[-1].body["model"] == "gpt-4o-mini"
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert [a["provider"] for a in row["attempts"]] == ["gemini", "backup"]
    assert [a["status"] for a in row["attempts"]] == [reply.status, 200]


async def test_a_wrong_key_on_a_single_route_is_the_gateways_502(
        config_factory: ConfigFactory, google: FakeGoogle,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(config_factory(
        providers={"gemini": gemini_provider(google, api_key=PROVIDER_KEY)},
        models={FLASH: {"pricing": PRICING,
                        "routes": [{"provider": "gemini", "model": "gemini-2.5-flash"}]}}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            await sdk.chat.completions.create(model=FLASH,
                                              messages=[{"role": "user", "content": "Hi"}])
    assert caught.value.status_code == 502
    assert "gemini rejected the gateway's credentials" in caught.value.message
    assert PROVIDER_KEY not in caught.value.response.text
    assert google.received[-1].headers["x-goog-api-key"] == PROVIDER_KEY


async def test_a_blocked_prompt_is_a_400_content_filter(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, fake_openai: FakeOpenAI,
        proxy: Proxy) -> None:
    google.then(GoogleReply(golden="blocked_prompt.json"))
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.chat.completions.with_raw_response.create(
            model=FALLBACK, messages=[{"role": "user", "content": "Something bad"}])
    assert caught.value.body["code"] == "content_filter"  # type: ignore[index]
    assert "blocked the prompt (SAFETY)" in caught.value.message
    assert not fake_openai.requests  # the prompt's fault: no other route tried
    gen_id = caught.value.response.headers["X-AnyRouter-Generation-Id"]
    row = await generation(proxy, gen_id)
    assert row["status_code"] == 400 and row["total_cost"] == 0


async def test_a_blocked_prompt_in_a_stream_is_a_400_before_it_starts(
        sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    blocked = json.dumps(golden("blocked_prompt.json")).encode()
    google.then(GoogleReply(events=[b"data: " + blocked + b"\r\n\r\n"]))
    with pytest.raises(openai.BadRequestError, match="blocked the prompt"):
        await sdk.chat.completions.create(model=FLASH, stream=True,
                                          messages=[{"role": "user", "content": "Bad"}])


async def test_an_error_event_mid_stream(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    first = json.dumps(golden("generate_text.json") | {"candidates": [{"content": {
        "parts": [{"text": "Hel"}], "role": "model"}, "index": 0}]}).encode()
    failure = b'{"error": {"code": 500, "message": "Internal error encountered.", ' \
              b'"status": "INTERNAL"}}'
    google.then(GoogleReply(events=[b"data: " + first + b"\r\n\r\n",
                                    b"data: " + failure + b"\r\n\r\n"]))
    stream = await sdk.chat.completions.create(model=FLASH, stream=True,
                                               messages=[{"role": "user", "content": "Hi"}])
    with pytest.raises(openai.APIError, match="Internal error encountered"):
        async for _ in stream:
            pass


# -- the Responses API, through the Gemini chat exchange -------------------------------------

async def test_responses_whole_and_streamed(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    whole = await sdk.responses.create(model=FLASH, input="Say hello.",
                                       instructions="Be brief.", max_output_tokens=800)
    assert whole.status == "completed"
    assert whole.output_text == "Hello from the fake Gemini!"
    assert whole.usage is not None and whole.usage.output_tokens == 55
    assert whole.usage.output_tokens_details.reasoning_tokens == 48
    sent = google.received[-1].body
    assert sent["systemInstruction"] == {"parts": [{"text": "Be brief."}]}
    assert sent["generationConfig"]["maxOutputTokens"] == 800
    async with sdk.responses.stream(model=FLASH, input="Say hello.") as stream:
        streamed = await stream.get_final_response()
    assert streamed.output_text == "Hello from the fake Gemini!"
    assert google.received[-1].method == "streamGenerateContent"


async def test_responses_parallel_function_calls_round_trip(
        sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    tool: Any = {"type": "function", "name": "get_weather",
                 "parameters": WEATHER["function"]["parameters"]}
    async with sdk.responses.stream(model=FLASH, input="Weather in Paris and Tokyo?",
                                    tools=[tool]) as stream:
        first = await stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert [json.loads(c.arguments)["city"] for c in calls] == ["Paris", "Tokyo"]
    second = await sdk.responses.create(
        model=FLASH, previous_response_id=first.id, tools=[tool],
        input=[{"type": "function_call_output", "call_id": c.call_id, "output": "sunny"}
               for c in calls])
    assert second.output_text == "Hello from the fake Gemini!"
    answers = google.received[-1].body["contents"][-1]["parts"]
    assert [a["functionResponse"]["id"] for a in answers] == [c.call_id for c in calls]


# -- the Anthropic SDK through /messages -----------------------------------------------------

async def test_messages_text(claude_sdk: anthropic.AsyncAnthropic, google: FakeGoogle) -> None:
    message = await claude_sdk.messages.create(
        model=FLASH, max_tokens=3000, system="Be brief.",
        thinking={"type": "enabled", "budget_tokens": 1500},
        messages=[{"role": "user", "content": "Say hello."}])
    assert [block.type for block in message.content] == ["thinking", "text"]
    assert message.content[1].text == "Hello from the fake Gemini!"  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn"
    assert message.usage.output_tokens == 55
    assert message.usage.input_tokens + (message.usage.cache_read_input_tokens or 0) == 120
    config = google.received[-1].body["generationConfig"]
    assert config == {"maxOutputTokens": 3000,  # Anthropic's max_tokens counts thinking too
                      "thinkingConfig": {"thinkingBudget": 1500, "includeThoughts": True}}


async def test_messages_stream(claude_sdk: anthropic.AsyncAnthropic) -> None:
    async with claude_sdk.messages.stream(
            model=FLASH, max_tokens=300,
            messages=[{"role": "user", "content": "Say hello."}]) as stream:
        async for _ in stream:
            pass
        message = await stream.get_final_message()
    text = [block for block in message.content if block.type == "text"]
    assert text[0].text == "Hello from the fake Gemini!"
    assert message.stop_reason == "end_turn" and message.usage.output_tokens == 55


async def test_messages_tools_round_trip(claude_sdk: anthropic.AsyncAnthropic,
                                         google: FakeGoogle) -> None:
    tool = {"name": "get_weather", "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"]}
    messages: list[Any] = [{"role": "user", "content": "Weather in Paris and Tokyo?"}]
    first = await claude_sdk.messages.create(model=FLASH, max_tokens=300, tools=[tool],
                                             messages=messages)  # type: ignore[list-item]
    uses = [block for block in first.content if block.type == "tool_use"]
    assert first.stop_reason == "tool_use"
    assert [u.input for u in uses] == [{"city": "Paris"}, {"city": "Tokyo"}]
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append({"role": "user", "content": [
        {"type": "tool_result", "tool_use_id": u.id, "content": "sunny"} for u in uses]})
    second = await claude_sdk.messages.create(model=FLASH, max_tokens=300, tools=[tool],
                                              messages=messages)  # type: ignore[list-item]
    assert second.content[-1].text == "Hello from the fake Gemini!"  # type: ignore[union-attr]
    responses = google.received[-1].body["contents"][-1]["parts"]
    assert [r["functionResponse"]["id"] for r in responses] == [u.id for u in uses]


async def test_messages_stream_with_parallel_tools(
        claude_sdk: anthropic.AsyncAnthropic) -> None:
    tool = {"name": "get_weather", "description": "Weather for a city",
            "input_schema": WEATHER["function"]["parameters"]}
    async with claude_sdk.messages.stream(
            model=FLASH, max_tokens=300, tools=[tool],  # type: ignore[list-item]
            messages=[{"role": "user", "content": "Weather in Paris and Tokyo?"}]) as stream:
        message = await stream.get_final_message()
    assert message.stop_reason == "tool_use"
    uses = [block for block in message.content if block.type == "tool_use"]
    assert [(u.name, u.input) for u in uses] == [("get_weather", {"city": "Paris"}),
                                                 ("get_weather", {"city": "Tokyo"})]
    assert [b.type for b in message.content] == ["thinking", "tool_use", "tool_use"]
    assert message.usage.output_tokens == 52


async def test_messages_count_tokens(claude_sdk: anthropic.AsyncAnthropic,
                                     google: FakeGoogle) -> None:
    counted = await claude_sdk.messages.count_tokens(
        model=FLASH, system="Be brief.", messages=[{"role": "user", "content": "Hello"}])
    assert counted.input_tokens == golden("count_tokens.json")["totalTokens"]
    sent = google.received[-1]
    assert sent.method == "countTokens"
    assert sent.body == {"generateContentRequest": {
        "model": "models/gemini-2.5-flash",
        "contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
        "systemInstruction": {"parts": [{"text": "Be brief."}]}}}
