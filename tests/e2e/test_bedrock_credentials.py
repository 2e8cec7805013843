"""Where kind bedrock's credentials come from: the standard AWS chain (environment variables,
a shared credentials file and profile), explicit fields, Bedrock API keys (bearer), and
none at all (no_credentials); each request checked by the fake's own SigV4 verification."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.reload import reload_config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fake_bedrock import (
    ACCESS_KEY,
    API_KEY,
    CLAUDE_ID,
    SECRET_KEY,
    SESSION_TOKEN,
    TEMP_ACCESS_KEY,
    TEMP_SECRET_KEY,
    FakeBedrock,
    bedrock_provider,
    isolate_aws_environment,
    serve_fake_bedrock,
)
from tests.fakes import ANSWER, FakeOpenAI

MODEL = "bedrock/claude"
CHAIN = {"aws_access_key_id": None, "aws_secret_access_key": None}  # no explicit keys
Start = Callable[[Config], Awaitable[Proxy]]


@pytest.fixture
async def fake(aiohttp_server: Any, monkeypatch: pytest.MonkeyPatch,
               tmp_path: Path) -> FakeBedrock:
    isolate_aws_environment(monkeypatch, tmp_path)
    return await serve_fake_bedrock(aiohttp_server)


def config(config_factory: ConfigFactory, fake: FakeBedrock, *,
           backup: FakeOpenAI | None = None, **provider: Any) -> Config:
    providers = {"bedrock": bedrock_provider(fake, **provider)}
    routes = [{"provider": "bedrock", "model": CLAUDE_ID}]
    if backup is not None:
        providers["openai"] = openai_provider(backup)
        routes.append({"provider": "openai", "model": "gpt-4o-mini"})
    return config_factory(providers=providers, models={MODEL: {
        "pricing": {"prompt": 3, "completion": 15}, "routes": routes}})


async def ask(proxy: Proxy) -> str | None:
    async with openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY,
                                  max_retries=0) as client:
        answer = await client.chat.completions.create(
            model=MODEL, max_tokens=20, messages=[{"role": "user", "content": "Hi"}])
    return answer.choices[0].message.content


async def status_of(proxy: Proxy, provider: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/api/v1/providers"), headers=auth()) as response:
        data = (await response.json())["data"]
    return next(p["status"] for p in data if p["id"] == provider)  # type: ignore[no-any-return]


async def test_chain_reads_environment_variables(
        config_factory: ConfigFactory, fake: FakeBedrock, start_proxy: Start,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", TEMP_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", TEMP_SECRET_KEY)
    monkeypatch.setenv("AWS_SESSION_TOKEN", SESSION_TOKEN)
    proxy = await start_proxy(config(config_factory, fake, **CHAIN))
    assert await ask(proxy) == "Hello from Bedrock!"
    assert fake.calls[0].auth == f"sigv4:{TEMP_ACCESS_KEY}"
    assert fake.calls[0].headers["X-Amz-Security-Token"] == SESSION_TOKEN


async def test_chain_reads_a_profile_of_the_shared_credentials_file(
        config_factory: ConfigFactory, fake: FakeBedrock, start_proxy: Start,
        tmp_path: Path) -> None:
    (tmp_path / "aws-credentials").write_text(
        "[default]\naws_access_key_id = AKIAWRONGDEFAULT0000\n"
        "aws_secret_access_key = wrong\n\n"
        f"[bedrock-test]\naws_access_key_id = {ACCESS_KEY}\n"
        f"aws_secret_access_key = {SECRET_KEY}\n")
    proxy = await start_proxy(config(config_factory, fake, aws_profile="bedrock-test", **CHAIN))
    assert await ask(proxy) == "Hello from Bedrock!"
    assert fake.calls[0].auth == f"sigv4:{ACCESS_KEY}"


async def test_explicit_temporary_credentials(config_factory: ConfigFactory,
                                              fake: FakeBedrock, start_proxy: Start) -> None:
    proxy = await start_proxy(config(
        config_factory, fake, aws_access_key_id=TEMP_ACCESS_KEY,
        aws_secret_access_key=TEMP_SECRET_KEY, aws_session_token=SESSION_TOKEN))
    assert await ask(proxy) == "Hello from Bedrock!"
    assert fake.calls[0].auth == f"sigv4:{TEMP_ACCESS_KEY}"


async def test_bedrock_api_key_is_sent_as_bearer(config_factory: ConfigFactory,
                                                 fake: FakeBedrock, start_proxy: Start) -> None:
    proxy = await start_proxy(config(config_factory, fake, api_key=API_KEY, **CHAIN))
    assert await ask(proxy) == "Hello from Bedrock!"
    call = fake.calls[0]
    assert call.auth == "bearer"
    assert not any(name.lower().startswith("x-amz-") for name in call.headers)


async def test_bedrock_api_key_from_the_environment(
        config_factory: ConfigFactory, fake: FakeBedrock, start_proxy: Start,
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_BEARER_TOKEN_BEDROCK", API_KEY)
    proxy = await start_proxy(config(config_factory, fake, **CHAIN))
    assert await ask(proxy) == "Hello from Bedrock!"
    assert fake.calls[0].auth == "bearer"


async def test_no_credentials_anywhere(config_factory: ConfigFactory, fake: FakeBedrock,
                                       fake_openai: FakeOpenAI, start_proxy: Start) -> None:
    proxy = await start_proxy(config(config_factory, fake, backup=fake_openai, **CHAIN))
    assert await status_of(proxy, "bedrock") == "no_credentials"
    assert await ask(proxy) == ANSWER  # routing skipped bedrock
    assert fake.calls == [] and fake.rejected == []


async def test_no_credentials_on_the_only_route_is_503(config_factory: ConfigFactory,
                                                       fake: FakeBedrock,
                                                       start_proxy: Start) -> None:
    proxy = await start_proxy(config(config_factory, fake, **CHAIN))
    with pytest.raises(openai.APIStatusError) as caught:
        await ask(proxy)
    assert caught.value.status_code == 503
    assert fake.calls == []


async def test_empty_keys_mean_no_credentials(config_factory: ConfigFactory,
                                              fake: FakeBedrock, start_proxy: Start,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)  # written-but-empty: no chain either
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    proxy = await start_proxy(config(config_factory, fake, aws_access_key_id="",
                                     aws_secret_access_key=""))
    assert await status_of(proxy, "bedrock") == "no_credentials"


async def test_reload_looks_for_credentials_again(
        config_factory: ConfigFactory, fake: FakeBedrock, start_proxy: Start,
        tmp_path: Path) -> None:
    proxy = await start_proxy(config(config_factory, fake, **CHAIN))
    assert await status_of(proxy, "bedrock") == "no_credentials"
    (tmp_path / "aws-credentials").write_text(
        f"[default]\naws_access_key_id = {ACCESS_KEY}\naws_secret_access_key = {SECRET_KEY}\n")
    assert reload_config(proxy.app)
    assert await ask(proxy) == "Hello from Bedrock!"  # waits for the lookup it started
    assert await status_of(proxy, "bedrock") == "ok"
    assert fake.calls[0].auth == f"sigv4:{ACCESS_KEY}"
