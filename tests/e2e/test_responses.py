"""POST /responses and the stored responses, driven by the official openai SDK over real
HTTP, on every way of serving it: an openai-kind chat provider (translated), a provider
with native_responses (passed through), an anthropic-kind provider (translated) and the
mock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pydantic
import pytest

from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth
from tests.fake_responses import ENCRYPTED_PREFIX
from tests.fakes import Behaviour, FakeAnthropic, FakeOpenAI
from tests.responses_setup import (
    ADMIN_KEY,
    CHAT_MODEL,
    CLAUDE_MODEL,
    FAILOVER_MODEL,
    KINDS,
    MOCK_MODEL,
    NATIVE_MODEL,
    StartProxy,
    responses_config,
)

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic,
                start_proxy: StartProxy) -> Proxy:
    return await start_proxy(responses_config(config_factory, fake_openai, fake_backup,
                                              fake_anthropic))


def sdk_for(proxy: Proxy, key: str = ALICE_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = sdk_for(proxy)
    yield client
    await client.close()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200
        data: dict[str, Any] = (await response.json())["data"]
        return data


# -- one turn, every kind -----------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
async def test_create_answers_on_every_kind(sdk: openai.AsyncOpenAI, proxy: Proxy,
                                            kind: str) -> None:
    raw = await sdk.responses.with_raw_response.create(
        model=KINDS[kind], input="Say hello", instructions="Be brief.", max_output_tokens=100,
        metadata={"ticket": "42"})
    response = raw.parse()
    assert response.id == raw.headers["X-AnyRouter-Generation-Id"]
    assert response.object == "response" and response.status == "completed"
    assert response.model == KINDS[kind]
    assert response.output_text  # the answer's text, whichever way it came
    assert response.instructions == "Be brief." and response.metadata == {"ticket": "42"}
    assert response.usage is not None and response.usage.output_tokens > 0
    row = await generation(proxy, response.id)
    assert (row["endpoint"], row["usage_source"]) == ("responses", "provider")
    assert row["tokens_completion"] == response.usage.output_tokens
    assert row["total_cost"] > 0


async def test_translated_request_reaches_chat_and_anthropic_upstreams(
        sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI, fake_anthropic: FakeAnthropic) -> None:
    for model in (CHAT_MODEL, CLAUDE_MODEL):
        await sdk.responses.create(model=model, input=[
            {"role": "developer", "content": "Answer in French."},
            {"role": "user", "content": [
                {"type": "input_text", "text": "What is this?"},
                {"type": "input_image", "image_url": "https://example.com/cat.png",
                 "detail": "auto"}]}],
            instructions="Be brief.", max_output_tokens=200, temperature=0.5)
    chat = fake_openai.requests[-1].body
    assert chat["messages"][0] == {"role": "system", "content": "Be brief."}
    assert chat["messages"][1] == {"role": "system", "content": "Answer in French."}
    assert chat["messages"][2]["content"][1] == {
        "type": "image_url", "image_url": {"url": "https://example.com/cat.png",
                                           "detail": "auto"}}
    assert (chat["max_tokens"], chat["temperature"], chat["model"]) == (200, 0.5, "gpt-chat")
    claude = fake_anthropic.requests[-1].body
    assert claude["system"][0]["text"] == "Be brief."
    assert claude["messages"][0]["content"][1]["source"] == {
        "type": "url", "url": "https://example.com/cat.png"}
    assert claude["max_tokens"] == 200


async def test_native_upstream_gets_a_self_contained_call(sdk: openai.AsyncOpenAI,
                                                          fake_backup: FakeOpenAI) -> None:
    first = await sdk.responses.create(model=NATIVE_MODEL, input="One", store=True)
    second = await sdk.responses.create(model=NATIVE_MODEL, input="Two",
                                        previous_response_id=first.id)
    sent = fake_backup.requests[-1].body
    assert sent["store"] is False and "previous_response_id" not in sent
    assert "reasoning.encrypted_content" in sent["include"]
    assert sent["max_output_tokens"] > 0  # always an explicit cap
    assert [(i["type"], i.get("role")) for i in sent["input"]] == [
        ("message", "user"), ("message", "assistant"), ("message", "user")]
    assert second.previous_response_id == first.id and second.store is True
    assert second.id != "resp_backup_2"  # the generation id, not the upstream's


# -- streams ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(KINDS))
async def test_stream_events_are_complete_and_numbered(sdk: openai.AsyncOpenAI, proxy: Proxy,
                                                       kind: str) -> None:
    raw = await sdk.responses.with_raw_response.create(
        model=KINDS[kind], input="Say hello", stream=True)
    gen_id = raw.headers["X-AnyRouter-Generation-Id"]
    events = [event async for event in raw.parse()]
    types = [event.type for event in events]
    assert types[:2] == ["response.created", "response.in_progress"]
    assert types[-1] == "response.completed"
    assert [event.sequence_number for event in events] == list(range(len(events)))
    for name in ("response.output_item.added", "response.content_part.added",
                 "response.output_text.delta", "response.output_text.done",
                 "response.content_part.done", "response.output_item.done"):
        assert name in types, name
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response  # type: ignore[union-attr]
    assert final.id == gen_id and final.output_text == deltas
    assert final.usage is not None and final.usage.output_tokens > 0
    row = await generation(proxy, gen_id)
    assert row["streamed"] and row["usage_source"] == "provider" and row["total_cost"] > 0


@pytest.mark.parametrize("kind", ["chat", "native", "anthropic"])  # the mock calls no tools
async def test_function_call_round_trip_with_the_stream_helper(
        sdk: openai.AsyncOpenAI, kind: str) -> None:
    async with sdk.responses.stream(model=KINDS[kind], input="Weather in Paris?",
                                    tools=[WEATHER]) as stream:
        arguments = [e.delta async for e in stream
                     if e.type == "response.function_call_arguments.delta"]
        first = await stream.get_final_response()
    calls = [item for item in first.output if item.type == "function_call"]
    assert len(calls) == 1 and calls[0].name == "get_weather"
    assert json.loads(calls[0].arguments) == {"city": "Paris"} == json.loads("".join(arguments))
    async with sdk.responses.stream(
            model=KINDS[kind], previous_response_id=first.id, tools=[WEATHER],
            input=[{"type": "function_call_output", "call_id": calls[0].call_id,
                    "output": "Sunny, 21C"}]) as stream:
        second = await stream.get_final_response()
    assert second.status == "completed" and second.output_text
    assert not [item for item in second.output if item.type == "function_call"]


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


@pytest.mark.parametrize("model", [CHAT_MODEL, NATIVE_MODEL, CLAUDE_MODEL])
async def test_parse_with_a_pydantic_text_format(sdk: openai.AsyncOpenAI, model: str,
                                                 fake_openai: FakeOpenAI,
                                                 fake_backup: FakeOpenAI,
                                                 fake_anthropic: FakeAnthropic) -> None:
    if model == CLAUDE_MODEL:  # the fake writes an instance of the schema it was given
        parsed = await sdk.responses.parse(model=model, input="Weather in Paris as JSON",
                                           text_format=Weather)
        assert isinstance(parsed.output_parsed, Weather)
        sent = json.dumps(fake_anthropic.requests[-1].body)
        assert "celsius" in sent  # the schema went upstream (a forced tool or native)
        return
    answer = json.dumps({"city": "Paris", "celsius": 21})
    fake = fake_openai if model == CHAT_MODEL else fake_backup
    fake.then(Behaviour(content=answer))
    parsed = await sdk.responses.parse(model=model, input="Weather in Paris as JSON",
                                       text_format=Weather)
    assert parsed.output_parsed == Weather(city="Paris", celsius=21)
    sent = fake.requests[-1].body
    if model == CHAT_MODEL:
        schema = sent["response_format"]
        assert schema["type"] == "json_schema" and schema["json_schema"]["strict"] is True
        assert schema["json_schema"]["schema"]["required"] == ["city", "celsius"]
    else:
        assert sent["text"]["format"]["type"] == "json_schema"


# -- stored responses -----------------------------------------------------------------------


async def test_retrieve_list_input_items_and_delete(sdk: openai.AsyncOpenAI) -> None:
    first = await sdk.responses.create(model=CHAT_MODEL, input="First question")
    second = await sdk.responses.create(
        model=CHAT_MODEL, previous_response_id=first.id,
        input=[{"role": "user", "content": "Second question"},
               {"role": "user", "content": "Third question"}])
    got = await sdk.responses.retrieve(second.id)
    assert got.model_dump() == second.model_dump()
    listed = await sdk.responses.input_items.list(second.id, order="asc")
    texts = [item.content[0].text for item in listed.data]  # type: ignore[union-attr]
    assert texts == ["First question", first.output_text, "Second question",
                     "Third question"]
    page = await sdk.responses.input_items.list(second.id, limit=2)  # desc by default
    assert [item.content[0].text for item in page.data] == [  # type: ignore[union-attr]
        "Third question", "Second question"]
    assert page.has_more
    rest = await page.get_next_page()
    assert [item.content[0].text for item in rest.data] == [  # type: ignore[union-attr]
        first.output_text, "First question"]
    await sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as gone:
        await sdk.responses.retrieve(first.id)
    assert gone.value.code == "response_not_found"
    with pytest.raises(openai.NotFoundError) as missing:
        await sdk.responses.create(model=CHAT_MODEL, input="x", previous_response_id=first.id)
    assert (missing.value.code, missing.value.param) == ("response_not_found",
                                                         "previous_response_id")
    assert (await sdk.responses.retrieve(second.id)).id == second.id  # its own copy stays


async def test_delete_answers_the_deletion_object(proxy: Proxy,
                                                  sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.responses.create(model=MOCK_MODEL, input="hi")
    async with aiohttp.ClientSession() as session, session.delete(
            proxy.url(f"/v1/responses/{made.id}"), headers=auth()) as response:
        assert response.status == 200
        assert await response.json() == {"id": made.id, "object": "response",
                                          "deleted": True}


async def test_store_false_keeps_nothing(sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.responses.create(model=CHAT_MODEL, input="hi", store=False)
    assert made.store is False
    with pytest.raises(openai.NotFoundError):
        await sdk.responses.retrieve(made.id)


async def test_responses_are_the_keys_own_and_an_admin_reads_all(
        proxy: Proxy, sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.responses.create(model=CHAT_MODEL, input="private")
    bob, admin = sdk_for(proxy, BOB_KEY), sdk_for(proxy, ADMIN_KEY)
    try:
        for attempt in (bob.responses.retrieve(made.id),
                        bob.responses.input_items.list(made.id),
                        bob.responses.delete(made.id),
                        bob.responses.create(model=CHAT_MODEL, input="x",
                                             previous_response_id=made.id)):
            with pytest.raises(openai.NotFoundError):
                await attempt
        assert (await admin.responses.retrieve(made.id)).output_text == made.output_text
        listed = await admin.responses.input_items.list(made.id)
        assert listed.data[0].content[0].text == "private"  # type: ignore[union-attr]
    finally:
        await bob.close()
        await admin.close()
    assert (await sdk.responses.retrieve(made.id)).id == made.id  # bob deleted nothing


async def test_a_streamed_response_is_readable_right_after_its_end(
        sdk: openai.AsyncOpenAI) -> None:
    for _ in range(5):
        async with sdk.responses.stream(model=CHAT_MODEL, input="hi") as stream:
            final = await stream.get_final_response()
        assert (await sdk.responses.retrieve(final.id)).output_text == final.output_text
        follow = await sdk.responses.create(model=CHAT_MODEL, input="and?",
                                            previous_response_id=final.id)
        assert follow.status == "completed"


# -- conversations across providers ---------------------------------------------------------


async def test_previous_response_continues_on_another_provider_after_failover(
        sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI,
        fake_anthropic: FakeAnthropic) -> None:
    first = await sdk.responses.create(model=FAILOVER_MODEL, input="My name is Ada.",
                                       instructions="Remember names.")
    assert len(fake_openai.requests) == 1 and not fake_anthropic.requests
    fake_openai.then(Behaviour(status=500), Behaviour(status=500))
    raw = await sdk.responses.with_raw_response.create(
        model=FAILOVER_MODEL, input="What is my name?", previous_response_id=first.id)
    second = raw.parse()
    assert raw.headers["X-AnyRouter-Provider"] == "anthropic"
    assert second.status == "completed" and second.previous_response_id == first.id
    sent = fake_anthropic.requests[-1].body
    assert sent["messages"] == [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": [{"type": "text", "text": first.output_text}]},
        {"role": "user", "content": "What is my name?"}]
    assert "system" not in sent  # instructions are not carried to the next turn


async def test_native_reasoning_carries_across_turns(sdk: openai.AsyncOpenAI,
                                                     fake_backup: FakeOpenAI) -> None:
    first = await sdk.responses.create(model=NATIVE_MODEL, input="Think first.",
                                       reasoning={"effort": "low", "summary": "auto"})
    reasoning = [item for item in first.output if item.type == "reasoning"]
    assert reasoning and reasoning[0].encrypted_content is None  # not asked for
    assert first.usage is not None and first.usage.output_tokens_details.reasoning_tokens == 64
    shown = await sdk.responses.create(model=NATIVE_MODEL, input="Again.",
                                       reasoning={"effort": "low"},
                                       include=["reasoning.encrypted_content"])
    assert next(i for i in shown.output if i.type == "reasoning").encrypted_content
    third = await sdk.responses.create(model=NATIVE_MODEL, input="And now?",
                                       previous_response_id=first.id,
                                       reasoning={"effort": "low"})
    sent = fake_backup.requests[-1].body["input"]  # the fake decrypts or refuses
    assert sent[1]["type"] == "reasoning"
    assert sent[1]["encrypted_content"].startswith(ENCRYPTED_PREFIX)
    listed = await sdk.responses.input_items.list(third.id, order="asc")
    assert listed.data[1].type == "reasoning"
    assert getattr(listed.data[1], "encrypted_content", None) is None  # not asked for
    asked = await sdk.responses.input_items.list(third.id, order="asc",
                                                 include=["reasoning.encrypted_content"])
    assert getattr(asked.data[1], "encrypted_content", "").startswith(ENCRYPTED_PREFIX)
    again = await sdk.responses.retrieve(first.id, include=["reasoning.encrypted_content"])
    assert next(i for i in again.output if i.type == "reasoning").encrypted_content


async def test_anthropic_thinking_carries_across_turns(sdk: openai.AsyncOpenAI,
                                                       fake_anthropic: FakeAnthropic) -> None:
    async with sdk.responses.stream(model=CLAUDE_MODEL, input="Think about it.",
                                    reasoning={"effort": "low"}, max_output_tokens=4000,
                                    tools=[WEATHER]) as stream:
        summaries = [e.delta async for e in stream
                     if e.type == "response.reasoning_summary_text.delta"]
        first = await stream.get_final_response()
    assert "".join(summaries) == "Let me think about this."
    assert fake_anthropic.requests[-1].body["thinking"]["budget_tokens"] == 2048
    call = next(item for item in first.output if item.type == "function_call")
    second = await sdk.responses.create(
        model=CLAUDE_MODEL, previous_response_id=first.id, reasoning={"effort": "low"},
        max_output_tokens=4000, tools=[WEATHER],
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "Sunny"}])
    assert second.status == "completed"
    assistant = fake_anthropic.requests[-1].body["messages"][1]["content"]
    assert assistant[0] == {"type": "thinking", "thinking": "Let me think about this.",
                            "signature": "EqFakeSignature1"}  # the fake checks it
    assert assistant[-1]["type"] == "tool_use" and assistant[-1]["id"] == call.call_id


# -- refusals and failures ------------------------------------------------------------------


async def test_built_in_tools_only_on_native_providers(sdk: openai.AsyncOpenAI,
                                                       fake_backup: FakeOpenAI) -> None:
    for model in (CHAT_MODEL, CLAUDE_MODEL, MOCK_MODEL):
        with pytest.raises(openai.BadRequestError) as refused:
            await sdk.responses.create(model=model, input="news?",
                                       tools=[{"type": "web_search"}])
        assert (refused.value.code, refused.value.param) == ("unsupported_parameter",
                                                             "tools[0].type")
    await sdk.responses.create(model=NATIVE_MODEL, input="news?", tools=[{"type": "web_search"}])
    assert fake_backup.requests[-1].body["tools"] == [{"type": "web_search"}]


@pytest.mark.parametrize("body", [
    {"input": []}, {"input": 3}, {"input": "x", "store": "yes"},
    {"input": "x", "previous_response_id": 7}, {"input": "x", "background": True},
    {"input": "x", "conversation": "conv_1"}, {"input": "x", "max_output_tokens": 0},
], ids=["empty", "number", "store", "previous", "background", "conversation", "cap"])
async def test_bad_requests_are_400_envelopes(proxy: Proxy, body: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/v1/responses"), json={"model": CHAT_MODEL, **body},
            headers=auth()) as response:
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["type"] == "invalid_request_error" and error["param"]
        assert response.headers["X-AnyRouter-Generation-Id"].startswith("gen-")


@pytest.mark.parametrize("model", [CHAT_MODEL, NATIVE_MODEL, CLAUDE_MODEL])
async def test_a_stream_cut_short_ends_with_response_failed_and_is_charged(
        sdk: openai.AsyncOpenAI, proxy: Proxy, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic, model: str) -> None:
    fake = {CHAT_MODEL: fake_openai, NATIVE_MODEL: fake_backup,
            CLAUDE_MODEL: fake_anthropic}[model]
    # Dropped after some output: past 3 chat chunks, 1 native delta, 1 Anthropic delta.
    fake.then(Behaviour(drop_after={CHAT_MODEL: 3, NATIVE_MODEL: 5, CLAUDE_MODEL: 4}[model]))
    raw = await sdk.responses.with_raw_response.create(model=model, input="hi", stream=True)
    events = [event async for event in raw.parse()]
    assert events[0].type == "response.created"
    assert events[-1].type == "response.failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None
    assert failed.error.code in ("upstream_error", "upstream_invalid_response")
    assert failed.error.message
    row = await generation(proxy, raw.headers["X-AnyRouter-Generation-Id"])
    assert row["error_code"] == failed.error.code and row["total_cost"] > 0
    assert row["usage_source"] in ("estimated", "partial")


async def test_an_upstream_error_event_ends_with_response_failed(
        sdk: openai.AsyncOpenAI, fake_backup: FakeOpenAI) -> None:
    fake_backup.then(Behaviour(error_event_after=4))
    events = [e async for e in await sdk.responses.create(model=NATIVE_MODEL, input="hi",
                                                          stream=True)]
    assert events[-1].type == "response.failed"
    assert "upstream exploded" in events[-1].response.error.message  # type: ignore[union-attr]


async def test_a_client_that_leaves_cancels_and_is_charged(
        proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=50, chunk_delay_s=0.05))
    async with aiohttp.ClientSession() as session:
        response = await session.post(proxy.url("/v1/responses"), headers=auth(), json={
            "model": CHAT_MODEL, "input": "long story", "stream": True})
        gen_id = response.headers["X-AnyRouter-Generation-Id"]
        seen = b""
        while b"response.output_text.delta" not in seen:
            seen += await response.content.readany()
        response.close()
    for _ in range(100):
        await proxy.flush()
        row = await generation(proxy, gen_id)
        if row["cancelled"]:
            break
        await asyncio.sleep(0.05)
    assert row["cancelled"] and row["status_code"] == 499 and row["total_cost"] > 0


async def test_batch_items_may_use_responses(proxy: Proxy, sdk: openai.AsyncOpenAI) -> None:
    items = [{"custom_id": "a", "method": "POST", "url": "/v1/responses",
              "body": {"model": CHAT_MODEL, "input": "hi"}},
             {"custom_id": "b", "url": "/api/v1/responses",
              "body": {"model": CHAT_MODEL, "input": "x", "previous_response_id": "gen-0"}}]
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/batch"), json={"requests": items}, headers=auth()) as response:
        batch = await response.json()
    ok, missing = batch["results"]
    assert ok["response"]["status_code"] == 200
    body = ok["response"]["body"]
    assert body["object"] == "response" and body["id"] == ok["response"]["request_id"]
    assert (await sdk.responses.retrieve(body["id"])).id == body["id"]
    assert missing["response"]["status_code"] == 404
    assert missing["response"]["body"]["error"]["code"] == "response_not_found"


async def test_metrics_carry_the_responses_endpoint(proxy: Proxy,
                                                    sdk: openai.AsyncOpenAI) -> None:
    await sdk.responses.create(model=CHAT_MODEL, input="hi")
    await asyncio.sleep(0.05)  # metrics observe right after the answer
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/metrics")) as response:
        text = await response.text()
    assert 'endpoint="responses"' in text
