"""`item_reference` input items, as the Vercel AI SDK's Responses model sends them in tool
loops with `store` (its default): the proxy replaces each with the item it stored, so the
upstream (chat-translated, Anthropic or native, all called with `store: false`) gets the
whole items. Driven by the official openai SDK over real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import openai
import pytest

from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, auth
from tests.fake_responses import ENCRYPTED_PREFIX
from tests.fakes import FakeAnthropic, FakeOpenAI
from tests.responses_setup import (
    ADMIN_KEY,
    CHAT_MODEL,
    CLAUDE_MODEL,
    NATIVE_MODEL,
    StartProxy,
    responses_config,
)
from tests.usage_backends import pg_cluster, storage  # noqa: F401  (fixtures)

WEATHER = {"type": "function", "name": "get_weather", "description": "Weather for a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                          "required": ["city"], "additionalProperties": False},
           "strict": True}
QUESTION = {"role": "user", "content": [{"type": "input_text", "text": "Weather in Paris?"}]}
TOOL_LOOP = {"chat": CHAT_MODEL, "anthropic": CLAUDE_MODEL, "native": NATIVE_MODEL}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic,
                start_proxy: StartProxy, storage: dict[str, Any]  # noqa: F811
                ) -> Proxy:
    return await start_proxy(responses_config(config_factory, fake_openai, fake_backup,
                                              fake_anthropic, storage=storage))


def sdk_for(proxy: Proxy, key: str = ALICE_KEY) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = sdk_for(proxy)
    yield client
    await client.close()


def refs(items: list[Any]) -> list[dict[str, Any]]:
    return [{"type": "item_reference", "id": item.id} for item in items]


# -- a tool loop on every kind --------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TOOL_LOOP))
async def test_a_tool_loop_by_reference_sends_the_whole_items_upstream(
        sdk: openai.AsyncOpenAI, kind: str, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI, fake_anthropic: FakeAnthropic) -> None:
    """Step one streamed (reasoning and a function call), step two whole, sending the
    previous step's output as references, as the AI SDK does."""
    model = TOOL_LOOP[kind]
    thinking: dict[str, Any] = {} if kind == "chat" else {
        "reasoning": {"effort": "low", "summary": "auto"}, "max_output_tokens": 4000}
    async with sdk.responses.stream(model=model, input=[QUESTION], tools=[WEATHER],
                                    **thinking) as stream:
        first = await stream.get_final_response()
    call = next(item for item in first.output if item.type == "function_call")
    assert [item.type for item in first.output][-1] == "function_call"
    if kind != "chat":
        assert first.output[0].type == "reasoning"
    second = await sdk.responses.create(
        model=model, tools=[WEATHER], **thinking,
        input=[QUESTION, *refs(first.output),
               {"type": "function_call_output", "call_id": call.call_id,
                "output": "Sunny, 21C"}])
    assert second.status == "completed" and second.output_text
    assert not [item for item in second.output if item.type == "function_call"]
    if kind == "chat":
        messages = fake_openai.requests[-1].body["messages"]
        assert messages == [
            {"role": "user", "content": "Weather in Paris?"},
            {"role": "assistant", "content": first.output_text or None, "tool_calls": [{
                "id": call.call_id, "type": "function",
                "function": {"name": "get_weather", "arguments": call.arguments}}]},
            {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21C"}]
    elif kind == "anthropic":
        messages = fake_anthropic.requests[-1].body["messages"]
        assistant = messages[1]["content"]
        assert assistant[0] == {"type": "thinking", "thinking": "Let me think about this.",
                                "signature": "EqFakeSignature1"}  # the fake checks it
        assert assistant[-1]["type"] == "tool_use" and assistant[-1]["id"] == call.call_id
        assert assistant[-1]["input"] == {"city": "Paris"}
        assert messages[2]["content"][0]["tool_use_id"] == call.call_id
    else:
        sent = fake_backup.requests[-1].body
        assert sent["store"] is False
        reasoning, function_call = sent["input"][1:3]
        assert reasoning["type"] == "reasoning" and reasoning["id"] == first.output[0].id
        assert reasoning["encrypted_content"].startswith(ENCRYPTED_PREFIX)  # decrypted
        assert function_call == {"id": call.id, "type": "function_call", "status": "completed",
                                 "arguments": call.arguments, "call_id": call.call_id,
                                 "name": "get_weather"}
        assert [item["type"] for item in sent["input"]] == [
            "message", "reasoning", "function_call", "function_call_output"]
    # What the model read is kept with the items themselves, not the references.
    listed = await sdk.responses.input_items.list(second.id, order="asc")
    assert [item.type for item in listed.data] == [
        "message", *[item.type for item in first.output], "function_call_output"]
    assert listed.data[-2].id == call.id


async def test_references_on_a_native_route_never_reach_it(
        sdk: openai.AsyncOpenAI, fake_backup: FakeOpenAI) -> None:
    """The upstream is called with store: false and keeps nothing: the fake refuses a
    reference as OpenAI does; the proxy sent the message itself."""
    first = await sdk.responses.create(model=NATIVE_MODEL, input="Say hello")
    second = await sdk.responses.create(model=NATIVE_MODEL, input=[
        {"role": "user", "content": "Say hello"}, *refs(first.output),
        {"role": "user", "content": "Again"}])
    assert second.status == "completed"
    sent = fake_backup.requests[-1].body["input"]
    assert sent[1]["type"] == "message" and sent[1]["role"] == "assistant"
    assert sent[1]["content"][0]["text"] == first.output_text


async def test_an_input_item_is_referenced_by_the_id_its_client_gave_it(
        sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    await sdk.responses.create(model=CHAT_MODEL, input=[
        {"type": "message", "role": "user", "id": "msg_client_7",
         "content": "The code word is heron."}])
    await sdk.responses.create(model=CHAT_MODEL, input=[
        {"type": "item_reference", "id": "msg_client_7"},
        {"role": "user", "content": "What is the code word?"}])
    assert fake_openai.requests[-1].body["messages"] == [
        {"role": "user", "content": "The code word is heron."},
        {"role": "user", "content": "What is the code word?"}]


async def test_an_item_reference_without_its_type_is_one_too(
        proxy: Proxy, sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    """The SDKs' ItemReference type has `type` optional: `{"id": ...}` alone."""
    first = await sdk.responses.create(model=CHAT_MODEL, input="hi")
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/v1/responses"), headers=auth(), json={
                "model": CHAT_MODEL, "input": [{"id": first.output[0].id},
                                               {"role": "user", "content": "and?"}]}) as answer:
        assert answer.status == 200, await answer.text()
    assert fake_openai.requests[-1].body["messages"][0] == {
        "role": "assistant", "content": first.output_text}


# -- what a reference cannot name -----------------------------------------------------------


async def assert_item_not_found(attempt: Any, item_id: str) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        await attempt
    assert (missing.value.code, missing.value.param) == ("item_not_found", "input")
    assert item_id in missing.value.message


async def test_an_unknown_item_is_404_and_nothing_goes_upstream(
        sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    await assert_item_not_found(sdk.responses.create(model=CHAT_MODEL, input=[
        {"role": "user", "content": "hi"}, {"type": "item_reference", "id": "msg_nope"}]),
        "msg_nope")
    assert fake_openai.requests == []


async def test_another_keys_items_are_404_an_admin_uses_them(
        proxy: Proxy, sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    made = await sdk.responses.create(model=CHAT_MODEL, input="private")
    item_id = made.output[0].id
    bob, admin = sdk_for(proxy, BOB_KEY), sdk_for(proxy, ADMIN_KEY)
    try:
        await assert_item_not_found(bob.responses.create(
            model=CHAT_MODEL, input=[{"type": "item_reference", "id": item_id}]), item_id)
        assert len(fake_openai.requests) == 1
        await admin.responses.create(model=CHAT_MODEL, input=[
            {"type": "item_reference", "id": item_id}, {"role": "user", "content": "x"}])
    finally:
        await bob.close()
        await admin.close()
    assert fake_openai.requests[-1].body["messages"][0] == {
        "role": "assistant", "content": made.output_text}


async def test_items_of_a_deleted_response_are_gone(sdk: openai.AsyncOpenAI) -> None:
    made = await sdk.responses.create(model=CHAT_MODEL, input=[
        {"role": "user", "content": "hi", "id": "msg_mine"}])
    await sdk.responses.delete(made.id)
    for item_id in (made.output[0].id, "msg_mine"):
        await assert_item_not_found(sdk.responses.create(
            model=CHAT_MODEL, input=[{"type": "item_reference", "id": item_id}]), item_id)


async def test_store_false_keeps_no_items_but_may_use_stored_ones(
        sdk: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    kept = await sdk.responses.create(model=CHAT_MODEL, input="one")
    unkept = await sdk.responses.create(model=CHAT_MODEL, store=False, input=[
        *refs(kept.output), {"role": "user", "content": "two"}])
    assert fake_openai.requests[-1].body["messages"][0]["content"] == kept.output_text
    await assert_item_not_found(sdk.responses.create(
        model=CHAT_MODEL, input=refs(unkept.output)), unkept.output[0].id)


async def test_a_bad_reference_is_a_400(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/v1/responses"), headers=auth(), json={
                "model": CHAT_MODEL, "input": [{"type": "item_reference", "id": 7}]}) as answer:
        assert answer.status == 400
        error = (await answer.json())["error"]
    assert (error["type"], error["param"]) == ("invalid_request_error", "input[0].id")


async def test_batch_items_resolve_references(proxy: Proxy, sdk: openai.AsyncOpenAI,
                                              fake_openai: FakeOpenAI) -> None:
    made = await sdk.responses.create(model=CHAT_MODEL, input="remember me")
    items = [{"custom_id": "a", "url": "/v1/responses", "body": {
        "model": CHAT_MODEL, "input": [*[{"type": "item_reference", "id": item.id}
                                         for item in made.output],
                                       {"role": "user", "content": "next"}]}},
             {"custom_id": "b", "url": "/v1/responses", "body": {
                 "model": CHAT_MODEL, "input": [{"type": "item_reference", "id": "msg_x"}]}}]
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/batch"), json={"requests": items}, headers=auth()) as response:
        ok, missing = (await response.json())["results"]
    assert ok["response"]["status_code"] == 200
    assert missing["response"]["status_code"] == 404
    assert missing["response"]["body"]["error"]["code"] == "item_not_found"
    sent = [r.body["messages"] for r in fake_openai.requests[1:]]
    assert sent == [[{"role": "assistant", "content": made.output_text},
                     {"role": "user", "content": "next"}]]
