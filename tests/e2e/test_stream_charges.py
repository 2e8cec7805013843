"""Every answer that began is charged, on all four paths (OpenAI or Anthropic client, to an
OpenAI- or Anthropic-wire upstream), driven by the official SDKs: the provider's usage
when it reported a final one (`provider`), its input with the output estimated when it
reported input only (`partial`), else the prompt estimate and the output relayed,
estimated (`estimated`) — for complete, cut-short, usage-less and cancelled streams, and
whole answers without usage."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import anthropic
import openai
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256
from tests.metered import (
    ANTHROPIC_MODEL,
    COMPLETION_PRICE,
    OPENAI_MODEL,
    PROMPT_PRICE,
    MeteredUpstream,
    metered_sections,
)

StartProxy = Callable[[Config], Awaitable[Proxy]]
MAX_TOKENS = 1000
DELTAS = 20
PROMPT = "Tell me about the sea, at length."
# path -> (client SDK, model: which upstream wire serves it)
PATHS = {
    "openai client, openai upstream": ("openai", OPENAI_MODEL),
    "anthropic client, anthropic upstream": ("anthropic", ANTHROPIC_MODEL),
    "openai client, anthropic upstream": ("openai", ANTHROPIC_MODEL),
    "anthropic client, openai upstream": ("anthropic", OPENAI_MODEL),
}


class Client:
    """One proxy, its metered upstream, and the SDK of the path under test."""

    def __init__(self, proxy: Proxy, fake: MeteredUpstream, sdk: str, model: str) -> None:
        self.proxy, self.fake, self.sdk, self.model = proxy, fake, sdk, model

    @property
    def anthropic_upstream(self) -> bool:
        return self.model == ANTHROPIC_MODEL

    async def stream(self, read: int | None = None) -> tuple[str, int, Exception | None]:
        """(generation id, events read, the error the SDK raised); `read`: leave after
        that many events."""
        messages: Any = [{"role": "user", "content": PROMPT}]
        events, error = 0, None
        if self.sdk == "openai":
            async with openai.AsyncOpenAI(base_url=self.proxy.base_url, api_key=ALICE_KEY,
                                          max_retries=0) as client:
                raw = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, max_tokens=MAX_TOKENS, stream=True)
                stream: Any = raw.parse()
                events, error = await consume(stream, read, openai.APIError)
        else:
            async with anthropic.AsyncAnthropic(base_url=self.proxy.url("/api"),
                                                api_key=ALICE_KEY, max_retries=0) as client:
                raw = await client.messages.with_raw_response.create(
                    model=self.model, messages=messages, max_tokens=MAX_TOKENS, stream=True)
                stream = await raw.parse()
                events, error = await consume(stream, read, anthropic.APIError)
        return raw.headers["X-AnyRouter-Generation-Id"], events, error

    async def whole(self) -> str:
        messages: Any = [{"role": "user", "content": PROMPT}]
        if self.sdk == "openai":
            async with openai.AsyncOpenAI(base_url=self.proxy.base_url, api_key=ALICE_KEY,
                                          max_retries=0) as client:
                raw: Any = await client.chat.completions.with_raw_response.create(
                    model=self.model, messages=messages, max_tokens=MAX_TOKENS)
                raw.parse()
        else:
            async with anthropic.AsyncAnthropic(base_url=self.proxy.url("/api"),
                                                api_key=ALICE_KEY, max_retries=0) as client:
                raw = await client.messages.with_raw_response.create(
                    model=self.model, messages=messages, max_tokens=MAX_TOKENS)
                await raw.parse()
        return str(raw.headers["X-AnyRouter-Generation-Id"])

    async def row(self, gen_id: str) -> dict[str, Any]:
        """The usage row, once written (a client that left does not wait for it)."""
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as session:
            while True:
                async with session.get(self.proxy.url(f"/api/v1/generation?id={gen_id}"),
                                       headers=auth()) as response:
                    if response.status == 200:
                        return (await response.json())["data"]  # type: ignore[no-any-return]
                assert time.monotonic() < deadline, f"no usage row for {gen_id}"
                await asyncio.sleep(0.05)

    async def spent(self) -> float:
        async with aiohttp.ClientSession() as session, session.get(
                self.proxy.url("/api/v1/credits"), headers=auth()) as response:
            return float((await response.json())["data"]["total_usage"])


async def consume(stream: Any, read: int | None, errors: type[Exception]
                  ) -> tuple[int, Exception | None]:
    events = 0
    try:
        async for _ in stream:
            events += 1
            if read is not None and events >= read:
                await stream.close()
                break
    except errors as exc:
        return events, exc
    return events, None


@pytest.fixture(params=sorted(PATHS))
async def client(request: pytest.FixtureRequest, config_factory: ConfigFactory,
                 aiohttp_server: Any, start_proxy: StartProxy) -> Client:
    sdk, model = PATHS[request.param]
    fake = MeteredUpstream()
    server = await aiohttp_server(fake.app())
    proxy = await start_proxy(config_factory(
        **metered_sections(str(server.make_url("/v1")), PROVIDER_KEY),
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10.0}}))
    return Client(proxy, fake, sdk, model)


def assert_charged(row: dict[str, Any], source: str) -> None:
    """Charged more than nothing, at the model's prices for the counts on the row."""
    assert row["usage_source"] == source, row
    assert row["total_cost"] > 0, row
    assert row["total_cost"] == pytest.approx(
        (row["tokens_prompt"] * PROMPT_PRICE + row["tokens_completion"] * COMPLETION_PRICE)
        / 1_000_000, abs=1e-9)


async def test_a_complete_stream_is_charged_the_providers_usage(client: Client) -> None:
    client.fake.meter.deltas = DELTAS
    gen_id, _, error = await client.stream()
    assert error is None
    row = await client.row(gen_id)
    [billed] = client.fake.billed
    assert (row["tokens_prompt"], row["tokens_completion"]) == (
        billed.prompt_tokens, billed.completion_tokens) == (billed.prompt_tokens, MAX_TOKENS)
    assert_charged(row, "provider")
    assert await client.spent() == pytest.approx(row["total_cost"], abs=1e-9)


async def test_a_stream_cut_short_is_charged(client: Client) -> None:
    """The upstream drops the connection after 20 text deltas: no final usage came, so the
    output relayed is estimated (at least a token an event); an Anthropic upstream's
    message_start gave the input, which is kept (`partial`)."""
    client.fake.meter.deltas, client.fake.meter.cut_after = 5 * DELTAS, DELTAS
    gen_id, events, error = await client.stream()
    assert error is not None and events >= DELTAS
    row = await client.row(gen_id)
    assert row["status_code"] == 502 and row["cancelled"] is False
    assert row["tokens_completion"] >= DELTAS
    if client.anthropic_upstream:
        assert row["tokens_prompt"] == client.fake.billed[0].prompt_tokens
    assert_charged(row, "partial" if client.anthropic_upstream else "estimated")
    assert await client.spent() == pytest.approx(row["total_cost"], abs=1e-9)


async def test_a_stream_without_usage_is_charged(client: Client) -> None:
    client.fake.meter.deltas, client.fake.meter.usage = DELTAS, False
    gen_id, _, error = await client.stream()
    assert error is None
    row = await client.row(gen_id)
    assert row["status_code"] == 200 and row["tokens_completion"] >= DELTAS
    assert row["tokens_prompt"] > 0
    assert_charged(row, "estimated")


async def test_a_cancelled_stream_is_charged(client: Client) -> None:
    meter = client.fake.meter
    meter.deltas, meter.delta_delay_s = 400, 0.02
    gen_id, _, error = await client.stream(read=8)
    assert error is None
    row = await client.row(gen_id)
    assert row["cancelled"] is True and row["status_code"] == 499
    assert row["tokens_completion"] >= 1
    assert_charged(row, "partial" if client.anthropic_upstream else "estimated")


async def test_a_whole_answer_without_usage_is_charged(client: Client) -> None:
    client.fake.meter.usage = False
    gen_id = await client.whole()
    row = await client.row(gen_id)
    assert row["status_code"] == 200 and row["tokens_completion"] >= 1
    assert_charged(row, "estimated")


async def test_fifty_streams_cut_short_at_once_are_each_charged(client: Client) -> None:
    client.fake.meter.deltas, client.fake.meter.cut_after = 5 * DELTAS, DELTAS
    path = "/api/v1/chat/completions" if client.sdk == "openai" else "/api/v1/messages"
    body = {"model": client.model, "max_tokens": MAX_TOKENS, "stream": True,
            "messages": [{"role": "user", "content": PROMPT}]}

    async def one(session: aiohttp.ClientSession) -> str:
        async with session.post(client.proxy.url(path), json=body, headers=auth()) as response:
            assert response.status == 200
            await response.read()  # ends with the error event
            return response.headers["X-AnyRouter-Generation-Id"]

    async with aiohttp.ClientSession() as session:
        gen_ids = await asyncio.gather(*(one(session) for _ in range(50)))
    rows = [await client.row(gen_id) for gen_id in gen_ids]
    for row in rows:
        assert row["status_code"] == 502 and row["tokens_completion"] >= DELTAS
        assert_charged(row, "partial" if client.anthropic_upstream else "estimated")
    assert await client.spent() == pytest.approx(sum(r["total_cost"] for r in rows), abs=1e-8)
