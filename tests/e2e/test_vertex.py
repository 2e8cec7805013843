"""kind: vertex (Gemini on Vertex AI) end to end: OAuth access tokens from a service-account
key made for the test (google-auth's JWT-bearer grant, its signature checked by the fake's
token endpoint), bearer tokens on every request, refreshed before they expire; the Vertex
paths, embeddings through `predict`, countTokens; missing credentials."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fake_gemini import (
    LOCATION,
    PROJECT,
    TOKEN_AUDIENCE,
    FakeGoogle,
    golden,
    serve_fake_google,
)
from tests.fakes import ANSWER, FakeOpenAI
from tests.service_account import CLIENT_EMAIL, write_service_account

PRO = "google/gemini-2.5-pro"
FALLBACK = "google/vertex-with-backup"
EMBED = "google/text-embedding"
PRICING = {"prompt": 1.25, "completion": 10.0, "cached_prompt": 0.31}
MODEL_PATH = f"/v1/projects/{PROJECT}/locations/{LOCATION}/publishers/google/models"
StartProxy = Callable[[Config], Awaitable[Proxy]]


@pytest.fixture
async def google(aiohttp_server: Any) -> FakeGoogle:
    return await serve_fake_google(aiohttp_server)


@pytest.fixture
def key_file(tmp_path: Path, google: FakeGoogle) -> Path:
    return write_service_account(tmp_path / "vertex-sa.json", google)


def vertex_provider(fake: FakeGoogle, **extra: Any) -> dict[str, Any]:
    return {"kind": "vertex", "base_url": f"{fake.base_url}/v1", "project": PROJECT,
            "location": LOCATION, **extra}


def models(*providers: str) -> dict[str, Any]:
    return {PRO: {"pricing": PRICING,
                  "routes": [{"provider": providers[0], "model": "gemini-2.5-pro"}]},
            FALLBACK: {"pricing": PRICING,
                       "routes": [{"provider": p, "model": m} for p, m in
                                  zip(providers, ("gemini-2.5-pro", "gpt-4o-mini"),
                                      strict=False)]},
            EMBED: {"pricing": {"prompt": 0.025, "completion": 0},
                    "routes": [{"provider": providers[0], "model": "text-embedding-005"}]}}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, google: FakeGoogle, key_file: Path,
                fake_openai: FakeOpenAI, start_proxy: StartProxy) -> Proxy:
    return await start_proxy(config_factory(
        providers={"vertex": vertex_provider(google, credentials_file=key_file.name),
                   "backup": openai_provider(fake_openai)},
        models=models("vertex", "backup"), server={"retries": 0}))


@pytest.fixture
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    yield client
    await client.close()


async def ask(sdk: openai.AsyncOpenAI, model: str = PRO) -> str:
    completion = await sdk.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "Say hello."}])
    return completion.choices[0].message.content or ""


def bearer(fake: FakeGoogle, n: int) -> str:
    return fake.received[n].headers["Authorization"]


# -- tokens ----------------------------------------------------------------------------------

async def test_service_account_token_on_the_vertex_path(sdk: openai.AsyncOpenAI,
                                                        google: FakeGoogle) -> None:
    assert await ask(sdk) == "Hello from the fake Gemini!"
    [issued] = google.tokens
    # the JWT-bearer grant google-auth made, its signature checked by the fake
    assert issued.claims["iss"] == CLIENT_EMAIL
    assert issued.claims["aud"] == TOKEN_AUDIENCE
    sent = google.received[-1]
    assert sent.api == "vertex" and sent.model == "gemini-2.5-pro"
    assert sent.method == "generateContent"
    assert sent.headers["Authorization"] == f"Bearer {issued.token}"
    assert "x-goog-api-key" not in sent.headers


async def test_a_fresh_token_is_reused(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    await ask(sdk)
    await ask(sdk)
    assert len(google.tokens) == 1
    assert bearer(google, 0) == bearer(google, 1)


async def test_concurrent_requests_share_one_refresh(sdk: openai.AsyncOpenAI,
                                                     google: FakeGoogle) -> None:
    answers = await asyncio.gather(*(ask(sdk) for _ in range(6)))
    assert answers == ["Hello from the fake Gemini!"] * 6
    assert len(google.tokens) == 1
    assert {bearer(google, n) for n in range(6)} == {f"Bearer {google.tokens[0].token}"}


async def test_a_token_about_to_expire_is_refreshed_before_it_does(
        sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    google.token_lifetime_s = 60  # valid for a minute: within google-auth's refresh margin
    await ask(sdk)
    await ask(sdk)
    assert len(google.tokens) == 2
    assert google.tokens[0].expires_at > time.time()  # the first had not expired yet
    assert bearer(google, 1) == f"Bearer {google.tokens[1].token}"


async def test_a_request_after_expiry_gets_a_new_token(sdk: openai.AsyncOpenAI,
                                                       google: FakeGoogle) -> None:
    google.token_lifetime_s = 1
    await ask(sdk)
    await asyncio.sleep(1.2)  # the fake now refuses the first token
    assert await ask(sdk) == "Hello from the fake Gemini!"
    assert google.tokens[0].expires_at < time.time()
    assert bearer(google, 1) == f"Bearer {google.tokens[1].token}"


async def test_a_refused_token_fails_over_and_the_next_request_gets_a_new_one(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, proxy: Proxy) -> None:
    await ask(sdk)
    google.tokens[0].expires_at = 0  # revoked upstream: Vertex AI answers 401
    raw = await sdk.chat.completions.with_raw_response.create(
        model=FALLBACK, messages=[{"role": "user", "content": "Hi"}])
    assert raw.parse().choices[0].message.content == ANSWER
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert await ask(sdk) == "Hello from the fake Gemini!"
    assert len(google.tokens) == 2
    assert bearer(google, 2) == f"Bearer {google.tokens[1].token}"


async def test_a_token_endpoint_refusal_fails_over(
        config_factory: ConfigFactory, google: FakeGoogle, key_file: Path,
        fake_openai: FakeOpenAI, start_proxy: StartProxy) -> None:
    trusted = google.public_key_pem
    other = write_service_account(key_file.with_name("other.json"), google)
    google.public_key_pem = trusted  # the other key's signatures do not verify
    proxy = await start_proxy(config_factory(
        providers={"vertex": vertex_provider(google, credentials_file=str(other)),
                   "backup": openai_provider(fake_openai)},
        models=models("vertex", "backup"), server={"retries": 0}))
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        assert await ask(sdk, FALLBACK) == ANSWER
        with pytest.raises(openai.APIStatusError) as caught:
            await ask(sdk, PRO)
    assert caught.value.status_code == 502
    assert "vertex could not get a Google access token" in caught.value.message
    assert "invalid_grant" in caught.value.message
    assert not google.tokens and not google.received


# -- answers ---------------------------------------------------------------------------------

async def test_stream_on_vertex(sdk: openai.AsyncOpenAI, google: FakeGoogle) -> None:
    stream = await sdk.chat.completions.create(
        model=PRO, stream=True, stream_options={"include_usage": True},
        messages=[{"role": "user", "content": "Say hello."}])
    chunks = [chunk async for chunk in stream]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) \
        == "Hello from the fake Gemini!"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 55
    sent = google.received[-1]
    assert (sent.method, sent.query) == ("streamGenerateContent", "alt=sse")
    assert sent.headers["Authorization"].startswith("Bearer ya29.fake-")


async def test_embeddings_through_predict_with_token_counts(
        sdk: openai.AsyncOpenAI, google: FakeGoogle, proxy: Proxy) -> None:
    raw = await sdk.embeddings.with_raw_response.create(
        model=EMBED, input=["first text", "second"], dimensions=4)
    result = raw.parse()
    expected = [p["embeddings"]["values"] for p in golden("vertex_predict.json")["predictions"]]
    for item, values in zip(result.data, expected, strict=True):
        assert item.embedding == pytest.approx(values, rel=1e-6)
    assert result.usage.prompt_tokens == 10  # the statistics' token counts, summed
    sent = google.received[-1]
    assert (sent.model, sent.method) == ("text-embedding-005", "predict")
    assert sent.body == {"instances": [{"content": "first text"}, {"content": "second"}],
                         "parameters": {"outputDimensionality": 4}}
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{raw.headers['X-AnyRouter-Generation-Id']}"),
            headers=auth()) as response:
        row = (await response.json())["data"]
    assert row["tokens_prompt"] == 10 and row["usage_source"] == "provider"
    assert row["total_cost"] == pytest.approx(10 * 0.025 / 1e6)


async def test_count_tokens_on_vertex(proxy: Proxy, google: FakeGoogle) -> None:
    async with anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                        max_retries=0) as claude:
        counted = await claude.messages.count_tokens(
            model=PRO, system="Be brief.", messages=[{"role": "user", "content": "Hello"}])
    assert counted.input_tokens == golden("count_tokens.json")["totalTokens"]
    sent = google.received[-1]
    assert sent.method == "countTokens"
    assert sent.body == {"contents": [{"role": "user", "parts": [{"text": "Hello"}]}],
                         "systemInstruction": {"parts": [{"text": "Be brief."}]}}


# -- credentials that are not there ----------------------------------------------------------

async def provider_status(proxy: Proxy) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            f"{proxy.base_url}/providers", headers=auth()) as response:
        data = (await response.json())["data"]
    return str(next(p["status"] for p in data if p["id"] == "vertex"))


@pytest.mark.parametrize("credentials", [{"credentials_file": "missing.json"},
                                         {"credentials_file": ""},
                                         {}])  # no application default credentials either
async def test_missing_credentials_are_no_credentials(
        credentials: dict[str, str], config_factory: ConfigFactory, google: FakeGoogle,
        fake_openai: FakeOpenAI, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"vertex": vertex_provider(google, **credentials),
                   "backup": openai_provider(fake_openai)},
        models=models("vertex", "backup")))
    assert await provider_status(proxy) == "no_credentials"
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        assert await ask(sdk, FALLBACK) == ANSWER  # routing skips it
    assert not google.received and not google.tokens


async def test_application_default_credentials(
        tmp_path: Path, google: FakeGoogle, key_file: Path, start_proxy: StartProxy,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(key_file))
    path = tmp_path / "adc.yaml"
    path.write_text(yaml.safe_dump({
        "version": 1, "storage": {"sqlite_path": str(tmp_path / "adc.db")},
        "providers": {"vertex": vertex_provider(google)},
        "models": {PRO: models("vertex")[PRO]},
        "keys": {"alice": {"key_sha256": sha256(ALICE_KEY)}}}))
    proxy = await start_proxy(load_config(path, environ={
        "GOOGLE_APPLICATION_CREDENTIALS": str(key_file)}))
    assert await provider_status(proxy) == "ok"
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as sdk:
        assert await ask(sdk) == "Hello from the fake Gemini!"
    assert google.received[-1].headers["Authorization"] == f"Bearer {google.tokens[0].token}"
