"""The proxy path end to end with the official openai SDK against a fake OpenAI upstream."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.sse import SSEEvent
from tests.conftest import (
    ALICE_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    openai_provider,
    sha256,
)
from tests.fakes import ANSWER, Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]


@pytest.fixture
async def client(openai_proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    sdk = openai.AsyncOpenAI(base_url=openai_proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield sdk
    await sdk.close()


def assert_no_client_key_upstream(fake: FakeOpenAI) -> None:
    for request in fake.requests:
        assert request.headers["Authorization"] == f"Bearer {PROVIDER_KEY}"
        assert all(ALICE_KEY not in value for value in request.headers.values())
        assert ALICE_KEY not in str(request.body)


async def test_chat_completion(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    raw = await client.chat.completions.with_raw_response.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "Say hello"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.model == "openai/gpt-4o-mini"
    assert completion.id.startswith("gen-")
    assert raw.headers["X-AnyRouter-Generation-Id"] == completion.id
    assert completion.usage is not None and completion.usage.prompt_tokens == 11
    upstream = fake_openai.requests[0]
    assert upstream.body["model"] == "gpt-4o-mini"
    assert upstream.body["messages"] == [{"role": "user", "content": "Say hello"}]
    assert_no_client_key_upstream(fake_openai)


async def test_chat_stream_relays_chunks_with_our_id(client: openai.AsyncOpenAI,
                                                     fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=4))
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    chunks = [chunk async for chunk in stream]
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "tok0 tok1 tok2 tok3 "
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("gen-")
    assert all(c.model == "openai/gpt-4o-mini" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the client did not ask for usage
    assert chunks[-1].choices[0].finish_reason == "stop"
    # ...but the proxy asked upstream for it, for accounting.
    assert fake_openai.requests[0].body["stream_options"] == {"include_usage": True}
    assert_no_client_key_upstream(fake_openai)


async def test_chat_stream_passes_usage_when_asked(client: openai.AsyncOpenAI) -> None:
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
        stream_options={"include_usage": True})
    chunks = [chunk async for chunk in stream]
    assert chunks[-1].choices == []
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


async def test_stream_header_id_matches_chunk_id(client: openai.AsyncOpenAI) -> None:
    async with client.chat.completions.with_streaming_response.create(
            model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
            stream=True) as response:
        assert response.headers["Content-Type"].startswith("text/event-stream")
        assert response.headers["X-Accel-Buffering"] == "no"
        gen_id = response.headers["X-AnyRouter-Generation-Id"]
        stream = await response.parse()
        ids = {chunk.id async for chunk in stream}
    assert ids == {gen_id}


async def test_legacy_completions(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    completion = await client.completions.create(model="openai/gpt-4o-mini", prompt="Once")
    assert completion.choices[0].text == ANSWER
    assert completion.id.startswith("gen-")
    assert fake_openai.requests[0].path == "/v1/completions"
    assert fake_openai.requests[0].body["model"] == "gpt-4o-mini"
    stream = await client.completions.create(model="openai/gpt-4o-mini", prompt="Once",
                                             stream=True)
    texts = [c.choices[0].text async for c in stream if c.choices]
    assert "".join(texts) == "tok0 tok1 tok2 "


async def test_embeddings(client: openai.AsyncOpenAI, fake_openai: FakeOpenAI) -> None:
    result = await client.embeddings.create(model="openai/text-embedding-3-small",
                                            input=["a", "b"])
    assert [d.index for d in result.data] == [0, 1]
    assert result.model == "openai/text-embedding-3-small"
    assert fake_openai.requests[0].body["model"] == "text-embedding-3-small"
    assert_no_client_key_upstream(fake_openai)


async def test_models_list_and_retrieve_with_slash(client: openai.AsyncOpenAI) -> None:
    models = await client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["openai/gpt-4o-mini", "openai/text-embedding-3-small"]
    model = await client.models.retrieve("openai/gpt-4o-mini")  # sent percent-encoded
    assert model.id == "openai/gpt-4o-mini"
    assert model.model_extra is not None
    assert model.model_extra["pricing"]["prompt"] == "0.00000015"
    assert model.model_extra["context_length"] == 128000


async def test_unknown_model_is_not_found(client: openai.AsyncOpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        await client.chat.completions.create(model="nope/x",
                                             messages=[{"role": "user", "content": "hi"}])
    assert info.value.code == "model_not_found"


async def test_bad_key_is_authentication_error(openai_proxy: Proxy) -> None:
    sdk = openai.AsyncOpenAI(base_url=openai_proxy.base_url, api_key="sk-wrong", max_retries=0)
    try:
        with pytest.raises(openai.AuthenticationError) as info:
            await sdk.models.list()
    finally:
        await sdk.close()
    assert info.value.code == "invalid_api_key"


async def test_upstream_bad_request_passes_through(client: openai.AsyncOpenAI,
                                                   fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=400, body={"error": {
        "message": "Invalid value for 'temperature'", "type": "invalid_request_error",
        "param": "temperature", "code": "invalid_value"}}))
    with pytest.raises(openai.BadRequestError) as info:
        await client.chat.completions.create(model="openai/gpt-4o-mini", temperature=9,
                                             messages=[{"role": "user", "content": "hi"}])
    assert "Invalid value for 'temperature'" in info.value.message
    assert info.value.param == "temperature"
    assert len(fake_openai.requests) == 1


async def test_mid_stream_failure_is_an_api_error(client: openai.AsyncOpenAI,
                                                  fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=3, error_event_after=2))
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    received = []
    with pytest.raises(openai.APIError) as info:
        async for chunk in stream:
            received.append(chunk)
    assert len(received) == 2
    assert "upstream exploded" in info.value.message


async def test_stream_without_done_is_an_error(client: openai.AsyncOpenAI,
                                               fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=2, no_done=True))
    stream = await client.chat.completions.create(
        model="openai/gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True)
    with pytest.raises(openai.APIError) as info:
        async for _ in stream:
            pass
    assert "[DONE]" in info.value.message


async def test_a_relay_bug_mid_stream_still_closes_the_books(
        openai_proxy: Proxy, fake_openai: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not an upstream failure: our own code raising mid-stream. The client still gets a
    final error event, the request its usage row, and its concurrency slot comes back."""
    from anyrouter_proxy.providers.openai import OpenAIStreamRelay
    from anyrouter_proxy.server.state import LIMITER

    feed = OpenAIStreamRelay.feed
    seen = [0]

    def broken_feed(self: OpenAIStreamRelay, event: SSEEvent) -> list[bytes]:
        seen[0] += 1
        if seen[0] == 3:
            raise RuntimeError("a translator bug")
        return feed(self, event)

    monkeypatch.setattr(OpenAIStreamRelay, "feed", broken_feed)
    fake_openai.then(Behaviour(chunks=6, chunk_delay_s=0.01))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        async with session.post(
                openai_proxy.url("/api/v1/chat/completions"),
                json={"model": "openai/gpt-4o-mini", "stream": True,
                      "messages": [{"role": "user", "content": "hi"}]},
                headers={"Authorization": f"Bearer {ALICE_KEY}"}) as response:
            assert response.status == 200
            gen_id = response.headers["X-AnyRouter-Generation-Id"]
            raw = await response.read()
        events = [block for block in raw.decode().split("\n\n") if block]
        assert events[-1] == "data: [DONE]"
        error = json.loads(events[-2].removeprefix("data: "))["error"]
        assert error["code"] == "internal_error"
        assert "a translator bug" not in raw.decode()  # no internals leak to the client
        assert openai_proxy.app[LIMITER].in_flight("alice") == 0
        async with session.get(openai_proxy.url(f"/api/v1/generation/{gen_id}"),
                               headers={"Authorization": f"Bearer {ALICE_KEY}"}) as answer:
            assert answer.status == 200
            row = (await answer.json())["data"]
    assert row["status_code"] == 500 and row["error_code"] == "internal_error"


async def test_a_bug_after_keepalive_comments_ends_the_stream_cleanly(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Keep-alive comments commit the answer to 200; a bug of ours after that must end the
    stream with an error event, not write a second status line into the body."""
    from anyrouter_proxy.gateway import Gateway

    async def broken_proxy(self: Gateway, req: Any) -> Any:
        await asyncio.sleep(0.2)  # past the keep-alive interval
        raise RuntimeError("a gateway bug")

    monkeypatch.setattr(Gateway, "proxy", broken_proxy)
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai",
                                                   "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY)}},
        server={"sse_keepalive_interval_s": 0.05}))
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session, \
            session.post(proxy.url("/api/v1/chat/completions"),
                         json={"model": "openai/gpt-4o-mini", "stream": True,
                               "messages": [{"role": "user", "content": "hi"}]},
                         headers={"Authorization": f"Bearer {ALICE_KEY}"}) as response:
        assert response.status == 200
        raw = (await response.read()).decode()
    blocks = [block for block in raw.split("\n\n") if block]
    assert blocks[0].startswith(":")  # a keep-alive comment went out first
    assert blocks[-1] == "data: [DONE]"
    error = json.loads(blocks[-2].removeprefix("data: "))["error"]
    assert error["code"] == "internal_error" and "request id" in error["message"]
    assert "HTTP/1.1" not in raw and "a gateway bug" not in raw
