"""POST /embeddings on kind bedrock through the official openai SDK (float, and base64 as
it asks by default) and LangChain: InvokeModel calls over real HTTP to the fake Bedrock,
which verifies every SigV4 signature and answers as Titan v1/v2 and Cohere v3/v4 do."""

from __future__ import annotations

import asyncio
import base64
import math
import sqlite3
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import openai
import pytest
from langchain_openai import OpenAIEmbeddings
from pydantic import SecretStr

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from anyrouter_proxy.providers.bedrock_embeddings import FAN_OUT_CONCURRENCY
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fake_bedrock import ACCESS_KEY, FakeBedrock, Reply, bedrock_provider, serve_fake_bedrock
from tests.fake_bedrock_embed import fake_vector, titan_tokens
from tests.fakes import EMBEDDING_USAGE, FakeOpenAI

TITAN_V1, TITAN_V2 = "aws/titan-v1", "aws/titan-v2"
COHERE_V3, COHERE_V4 = "aws/cohere-v3", "aws/cohere-v4"
LLAMA, WITH_BACKUP = "aws/llama", "aws/titan-with-backup"
ROUTES = {TITAN_V1: "amazon.titan-embed-text-v1", TITAN_V2: "amazon.titan-embed-text-v2:0",
          COHERE_V3: "cohere.embed-english-v3", COHERE_V4: "us.cohere.embed-v4:0",
          LLAMA: "meta.llama3-8b-instruct-v1:0"}
PRICE = 0.02  # USD per million input tokens
PRICING = {"prompt": PRICE, "completion": 0}
TEXTS = ["alpha beta", "gamma", "delta epsilon zeta", "eta", "theta iota"]
THROTTLED = Reply(429, "ThrottlingException", "Too many requests, please wait before trying "
                                               "again.")


@pytest.fixture
async def fake(aiohttp_server: Any) -> FakeBedrock:
    return await serve_fake_bedrock(aiohttp_server)


def embed_config(config_factory: ConfigFactory, fake: FakeBedrock, backup: FakeOpenAI,
                 credits: float = 1.0, timeouts: dict[str, float] | None = None,
                 **server: Any) -> Config:
    models: dict[str, Any] = {
        name: {"pricing": PRICING, "routes": [{"provider": "bedrock", "model": model}]}
        for name, model in ROUTES.items()}
    models[WITH_BACKUP] = {"pricing": PRICING, "routes": [
        {"provider": "bedrock", "model": ROUTES[TITAN_V2]},
        {"provider": "backup", "model": "text-embedding-3-small"}]}
    return config_factory(
        providers={"bedrock": bedrock_provider(fake, timeouts=timeouts),
                   "backup": openai_provider(backup)},
        models=models, server={"retries": 0, **server},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": credits}})


@pytest.fixture
async def proxy(config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
                start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    return await start_proxy(embed_config(config_factory, fake, fake_openai))


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


async def get(proxy: Proxy, path: str) -> dict[str, Any]:
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]  # type: ignore[no-any-return]


def rows(proxy: Proxy) -> int:
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        return int(db.execute("SELECT count(*) FROM generations").fetchone()[0])
    finally:
        db.close()


# --- answers ----------------------------------------------------------------------------------

async def test_titan_list_fans_out_answers_in_order_and_sums_usage(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, proxy: Proxy) -> None:
    raw = await sdk.embeddings.with_raw_response.create(  # the SDK asks for base64
        model=TITAN_V2, input=TEXTS, dimensions=256)
    result = raw.parse()
    assert [item.index for item in result.data] == list(range(len(TEXTS)))
    assert [item.embedding for item in result.data] == [fake_vector(t, 256) for t in TEXTS]
    assert all(isinstance(item["embedding"], str) for item in raw.http_response.json()["data"])
    tokens = sum(titan_tokens(t) for t in TEXTS)
    assert (result.usage.prompt_tokens, result.usage.total_tokens) == (tokens, tokens)
    assert raw.http_response.json()["usage"]["cost"] == pytest.approx(tokens * PRICE / 1e6)

    assert len(fake.calls) == len(TEXTS)  # Titan embeds one text per call
    assert {c.path for c in fake.calls} == {"/model/amazon.titan-embed-text-v2%3A0/invoke"}
    assert {c.auth for c in fake.calls} == {f"sigv4:{ACCESS_KEY}"}
    assert sorted(c.body["inputText"] for c in fake.calls) == sorted(TEXTS)
    assert all(c.body == {"inputText": c.body["inputText"], "dimensions": 256}
               for c in fake.calls)
    assert all(ALICE_KEY not in value for c in fake.calls for value in c.headers.values())

    row = await get(proxy, f"/api/v1/generation/{raw.headers['X-AnyRouter-Generation-Id']}")
    assert row["usage_source"] == "provider" and row["tokens_prompt"] == tokens
    assert row["total_cost"] == pytest.approx(tokens * PRICE / 1e6)
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [("bedrock", 200)]


async def test_one_row_and_one_charge_per_request(sdk: openai.AsyncOpenAI,
                                                  proxy: Proxy) -> None:
    await sdk.embeddings.create(model=TITAN_V2, input=TEXTS, encoding_format="float")
    credits = await get(proxy, "/api/v1/credits")
    tokens = sum(titan_tokens(t) for t in TEXTS)
    assert credits["total_usage"] == pytest.approx(tokens * PRICE / 1e6)
    assert rows(proxy) == 1


async def test_the_reservation_is_the_prompt_estimate(
        config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    texts = ["word " * 600] * 4  # ~4,000 tokens estimated, fewer counted by Titan
    worst = estimate_prompt_tokens({"input": texts}) * PRICE / 1e6
    proxy = await start_proxy(embed_config(config_factory, fake, fake_openai,
                                           credits=worst * 0.9))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.embeddings.create(model=TITAN_V2, input=texts)
        assert caught.value.status_code == 402 and fake.calls == []
        result = await client.embeddings.create(model=TITAN_V2, input=texts[:3])
    assert result.usage.prompt_tokens == 3 * titan_tokens(texts[0])
    credits = await get(proxy, "/api/v1/credits")
    assert credits["total_usage"] == pytest.approx(result.usage.prompt_tokens * PRICE / 1e6)


async def test_titan_v1_single_string_as_floats(sdk: openai.AsyncOpenAI,
                                                fake: FakeBedrock) -> None:
    result = await sdk.embeddings.create(model=TITAN_V1, input="hello world",
                                         encoding_format="float")
    assert result.data[0].embedding == fake_vector("hello world", 1536)
    assert result.usage.prompt_tokens == titan_tokens("hello world")
    assert [c.body for c in fake.calls] == [{"inputText": "hello world"}]


async def test_base64_is_little_endian_float32(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{proxy.base_url}/embeddings", headers=auth(),
            json={"model": TITAN_V2, "input": "x", "encoding_format": "base64"}) as response:
        body = await response.json()
    vector = fake_vector("x", 1024)
    assert base64.b64decode(body["data"][0]["embedding"]) == struct.pack("<1024f", *vector)


async def test_cohere_v3_takes_96_texts_a_call_and_is_charged_the_estimate(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, proxy: Proxy) -> None:
    texts = [f"document number {i}" for i in range(100)]
    raw = await sdk.embeddings.with_raw_response.create(model=COHERE_V3, input=texts)
    result = raw.parse()
    assert [item.embedding for item in result.data] == [fake_vector(t, 1024) for t in texts]
    bodies = sorted((c.body for c in fake.calls), key=lambda b: -len(b["texts"]))
    assert bodies == [
        {"texts": texts[:96], "input_type": "search_document", "embedding_types": ["float"]},
        {"texts": texts[96:], "input_type": "search_document", "embedding_types": ["float"]}]
    row = await get(proxy, f"/api/v1/generation/{raw.headers['X-AnyRouter-Generation-Id']}")
    assert row["usage_source"] == "estimated" and row["tokens_prompt"] > 0
    assert result.usage.prompt_tokens == row["tokens_prompt"]
    assert row["total_cost"] == pytest.approx(row["tokens_prompt"] * PRICE / 1e6)


async def test_cohere_options_pass_through_extra_body(sdk: openai.AsyncOpenAI,
                                                      fake: FakeBedrock) -> None:
    await sdk.embeddings.create(model=COHERE_V3, input="what is bedrock?",
                                extra_body={"input_type": "search_query", "truncate": "END"})
    assert fake.calls[0].body == {"texts": ["what is bedrock?"], "input_type": "search_query",
                                  "embedding_types": ["float"], "truncate": "END"}


async def test_cohere_v4_dimensions_through_an_inference_profile(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock) -> None:
    result = await sdk.embeddings.create(model=COHERE_V4, input=["a", "b"], dimensions=512)
    assert [item.embedding for item in result.data] == [fake_vector("a", 512),
                                                         fake_vector("b", 512)]
    assert fake.calls[0].path == "/model/us.cohere.embed-v4%3A0/invoke"
    assert fake.calls[0].body["output_dimension"] == 512


async def test_langchain_openai_embeddings(proxy: Proxy, fake: FakeBedrock) -> None:
    async with openai.DefaultAsyncHttpxClient() as http:  # closed on this test's loop
        embeddings = OpenAIEmbeddings(model=COHERE_V3, base_url=proxy.base_url,
                                      api_key=SecretStr(ALICE_KEY), max_retries=0,
                                      check_embedding_ctx_length=False, http_async_client=http)
        documents = await embeddings.aembed_documents(["first doc", "second doc"])
        query = await embeddings.aembed_query("a question")
    assert documents == [fake_vector("first doc", 1024), fake_vector("second doc", 1024)]
    assert query == fake_vector("a question", 1024)
    assert len(fake.calls) == 2


async def test_calls_run_concurrently_within_the_bound(sdk: openai.AsyncOpenAI,
                                                       fake: FakeBedrock) -> None:
    fake.invoke_delay_s = 0.02
    texts = [f"text {i}" for i in range(12)]
    result = await sdk.embeddings.create(model=TITAN_V2, input=texts, encoding_format="float")
    assert [item.embedding for item in result.data] == [fake_vector(t, 1024) for t in texts]
    assert 1 < fake.max_in_flight <= FAN_OUT_CONCURRENCY


async def test_a_client_that_leaves_cancels_every_call(proxy: Proxy,
                                                      fake: FakeBedrock) -> None:
    fake.invoke_delay_s = 5
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(f"{proxy.base_url}/embeddings", headers=auth(),
                                   json={"model": TITAN_V2, "input": TEXTS})
    for _ in range(50):
        if fake.invoke_cancelled == FAN_OUT_CONCURRENCY:
            break
        await asyncio.sleep(0.02)
    assert fake.invoke_cancelled == FAN_OUT_CONCURRENCY  # those in flight, none after
    assert len(fake.calls) == FAN_OUT_CONCURRENCY and fake.in_flight == 0
    await proxy.flush()
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        status, cancelled, cost, tokens, source = db.execute(
            "SELECT status_code, cancelled, cost, tokens_prompt, usage_source "
            "FROM generations").fetchone()
    finally:
        db.close()
    # The calls that went out carried their texts upstream: the client that left pays
    # their share of the prompt estimate, not the texts never sent.
    sent_share = math.ceil(estimate_prompt_tokens({"input": TEXTS}) * FAN_OUT_CONCURRENCY
                           / len(TEXTS))
    assert (status, cancelled, source) == (499, 1, "estimated")
    assert tokens == sent_share
    assert cost == pytest.approx(sent_share * PRICE / 1e6, abs=1e-12)


# --- refusals -------------------------------------------------------------------------------

@pytest.mark.parametrize(("model", "extra", "code", "param", "says"), [
    (TITAN_V1, {"dimensions": 256}, "unsupported_parameter", "dimensions", "fixed size"),
    (COHERE_V3, {"dimensions": 256}, "unsupported_parameter", "dimensions", "fixed size"),
    (TITAN_V2, {"dimensions": 300}, "invalid_request", "dimensions", "256, 512, 1024"),
    (TITAN_V2, {"input": [[1, 2, 3]]}, "unsupported_parameter", "input", "token arrays"),
    (TITAN_V2, {"input": []}, "invalid_request", "input", "non-empty"),
    (TITAN_V2, {"encoding_format": "int8"}, "invalid_request", "encoding_format", "base64"),
    (COHERE_V3, {"input_type": "question"}, "invalid_request", "input_type", "search_query"),
    (LLAMA, {}, "unsupported_parameter", "model", "not a text embedding model"),
])
async def test_refused_before_any_call(proxy: Proxy, fake: FakeBedrock, model: str,
                                       extra: dict[str, Any], code: str, param: str,
                                       says: str) -> None:
    async with aiohttp.ClientSession() as session, session.post(
            f"{proxy.base_url}/embeddings", headers=auth(),
            json={"model": model, "input": "hi", **extra}) as response:
        body = await response.json()
    assert response.status == 400, body
    assert (body["error"]["code"], body["error"]["param"]) == (code, param)
    assert says in body["error"]["message"]
    assert fake.calls == []


# --- upstream errors ----------------------------------------------------------------------

async def test_validation_exception_is_400_with_bedrocks_message(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, fake_openai: FakeOpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        await sdk.embeddings.create(model=WITH_BACKUP, input=["fine", ""])
    assert "#/inputText: expected minLength: 1" in caught.value.message
    assert fake_openai.requests == []  # the request's own fault: no failover


async def test_throttling_is_429_with_retry_after(sdk: openai.AsyncOpenAI,
                                                  fake: FakeBedrock) -> None:
    fake.then(THROTTLED)
    with pytest.raises(openai.RateLimitError) as caught:
        await sdk.embeddings.create(model=TITAN_V2, input="hi")
    assert caught.value.code == "upstream_rate_limited"
    assert caught.value.response.headers["Retry-After"] == "1"


async def test_throttled_call_fails_over_whole_and_is_charged_once(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock, fake_openai: FakeOpenAI,
        proxy: Proxy) -> None:
    fake.then(Reply(), Reply(), Reply(), Reply(), THROTTLED)  # the fifth call is throttled
    raw = await sdk.embeddings.with_raw_response.create(model=WITH_BACKUP, input=TEXTS)
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert len(raw.parse().data) == len(TEXTS)
    row = await get(proxy, f"/api/v1/generation/{raw.headers['X-AnyRouter-Generation-Id']}")
    assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
        ("bedrock", 429), ("backup", 200)]
    assert row["tokens_prompt"] == EMBEDDING_USAGE["prompt_tokens"]
    assert row["total_cost"] == pytest.approx(EMBEDDING_USAGE["prompt_tokens"] * PRICE / 1e6)
    # The Titan calls that had answered were billed by AWS, not to the key.
    estimate = estimate_prompt_tokens({"input": TEXTS})
    assert 0 < row["operator_cost"] <= estimate * PRICE / 1e6
    assert rows(proxy) == 1


async def test_throttled_call_is_retried_whole(
        config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(embed_config(config_factory, fake, fake_openai, retries=1,
                                           retry_backoff_s=0))
    fake.then(THROTTLED)
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        raw = await client.embeddings.with_raw_response.create(model=TITAN_V2, input=TEXTS[:2])
    assert [item.embedding for item in raw.parse().data] == [fake_vector(t, 1024)
                                                             for t in TEXTS[:2]]
    row = await get(proxy, f"/api/v1/generation/{raw.headers['X-AnyRouter-Generation-Id']}")
    assert [a["status"] for a in row["attempts"]] == [429, 200]
    tokens = sum(titan_tokens(t) for t in TEXTS[:2])
    assert row["tokens_prompt"] == tokens
    assert row["total_cost"] == pytest.approx(tokens * PRICE / 1e6)


async def test_a_slow_call_is_not_sent_again_and_counted_once(
        config_factory: ConfigFactory, fake: FakeBedrock, fake_openai: FakeOpenAI,
        start_proxy: Callable[[Config], Awaitable[Proxy]]) -> None:
    proxy = await start_proxy(embed_config(config_factory, fake, fake_openai, retries=2,
                                           timeouts={"first_byte_s": 0.2}))
    fake.then(Reply(), Reply(), Reply(), Reply(), Reply(delay_s=2))  # the fifth is slow
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        with pytest.raises(openai.APIStatusError) as caught:
            await client.embeddings.create(model=TITAN_V2, input=TEXTS)
    assert caught.value.status_code == 504
    assert len(fake.calls) == len(TEXTS)  # abandoned, never sent again
    gen_id = caught.value.response.headers["X-AnyRouter-Generation-Id"]
    row = await get(proxy, f"/api/v1/generation/{gen_id}")
    assert (row["total_cost"], [a["status"] for a in row["attempts"]]) == (0, ["timeout"])
    # Its upstream cost is counted once: the whole request's worst case.
    estimate = estimate_prompt_tokens({"input": TEXTS})
    assert row["operator_cost"] == pytest.approx(estimate * PRICE / 1e6)


async def test_access_denied_is_502(sdk: openai.AsyncOpenAI, fake: FakeBedrock) -> None:
    fake.then(Reply(403, "AccessDeniedException",
                    "You don't have access to the model with the specified model ID."))
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.embeddings.create(model=COHERE_V3, input="hi")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_error"
    assert "credentials" in caught.value.message


async def test_an_answer_of_the_wrong_shape_is_the_upstreams_fault(
        sdk: openai.AsyncOpenAI, fake: FakeBedrock) -> None:
    fake.then(Reply(body={"embeddings": [[0.5, 0.25]]}))  # Cohere's answer from a Titan model
    with pytest.raises(openai.APIStatusError) as caught:
        await sdk.embeddings.create(model=TITAN_V2, input="hi")
    assert caught.value.status_code == 502
    assert caught.value.code == "upstream_invalid_response"
