"""POST /responses keeps the money rules: against a metered upstream that bills whatever it
is allowed to write, what is reserved is what the upstream may spend, the upstream always
gets an explicit cap, and a key with small credits never spends past them, on every way
of serving Responses (chat-translated, native, Anthropic), whole or streamed."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
import pytest

from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256
from tests.metered import (
    ANTHROPIC_MODEL,
    COMPLETION_PRICE,
    OPENAI_MODEL,
    PROMPT_PRICE,
    MeteredUpstream,
    metered_sections,
    upstream_output,
)
from tests.responses_setup import StartProxy

NATIVE_MODEL = "nr/model"
PROMPT = "Please write a long story about a lighthouse keeper and the sea. " * 3
CONCURRENT = 30
# (model, Responses body fields, output tokens the upstream may write)
CASES: dict[str, tuple[str, dict[str, Any], int]] = {
    "chat, max_output_tokens": (OPENAI_MODEL, {"max_output_tokens": 8000}, 8000),
    "chat, reasoning, no cap": (OPENAI_MODEL, {"reasoning": {"effort": "high"}}, 20_480),
    "native, no cap": (NATIVE_MODEL, {}, 4096),
    "native, reasoning, no cap": (NATIVE_MODEL, {"reasoning": {"effort": "high"}}, 20_480),
    "native, max_output_tokens": (NATIVE_MODEL, {"max_output_tokens": 6000}, 6000),
    "anthropic, reasoning, no cap": (ANTHROPIC_MODEL, {"reasoning": {"effort": "high"}},
                                     20_480),
    "anthropic, max_output_tokens": (ANTHROPIC_MODEL, {"max_output_tokens": 3000}, 3000),
}


async def metered(config_factory: ConfigFactory, aiohttp_server: Any,
                  start_proxy: StartProxy, credits: float) -> tuple[Proxy, MeteredUpstream]:
    fake = MeteredUpstream()
    server = await aiohttp_server(fake.app())
    base_url = str(server.make_url("/v1"))
    sections = metered_sections(base_url, PROVIDER_KEY)
    sections["providers"]["nr"] = {"kind": "openai", "base_url": base_url,
                                   "api_key": PROVIDER_KEY, "native_responses": True}
    sections["models"][NATIVE_MODEL] = {
        "pricing": {"prompt": PROMPT_PRICE, "completion": COMPLETION_PRICE},
        "routes": [{"provider": "nr", "model": "nr-upstream"}]}
    proxy = await start_proxy(config_factory(
        **sections, keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": credits}}))
    return proxy, fake


async def post(session: aiohttp.ClientSession, proxy: Proxy,
               body: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(proxy.url("/v1/responses"), json=body, headers=auth()) as answer:
        return answer.status, await answer.read()


async def spent(session: aiohttp.ClientSession, proxy: Proxy) -> float:
    async with session.get(proxy.url("/api/v1/credits"), headers=auth()) as answer:
        return float((await answer.json())["data"]["total_usage"])


def usd(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


@pytest.mark.parametrize("case", sorted(CASES))
async def test_the_upstream_gets_the_cap_that_was_reserved(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        case: str) -> None:
    model, extra, output = CASES[case]
    proxy, fake = await metered(config_factory, aiohttp_server, start_proxy, 5.0)
    fake.meter.gate = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        task = asyncio.create_task(post(session, proxy, {"model": model, "input": PROMPT,
                                                         **extra}))
        await asyncio.wait_for(fake.meter.arrived.wait(), 10)
        async with session.get(proxy.url("/api/v1/auth/key"), headers=auth()) as answer:
            reserved = 5.0 - (await answer.json())["data"]["limit_remaining"]
        fake.meter.gate.set()
        status, raw = await task
        assert status == 200, raw
        [(path, body)] = fake.requests
        assert upstream_output(path, body) == output
        assert usd(output, COMPLETION_PRICE) <= reserved
        billed = fake.cost(PROMPT_PRICE, COMPLETION_PRICE)
        assert billed <= reserved + 1e-9
        assert await spent(session, proxy) == pytest.approx(billed, abs=1e-9)


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_small_credits_are_never_overspent(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        case: str, stream: bool) -> None:
    model, extra, output = CASES[case]
    credits = 2.5 * usd(output, COMPLETION_PRICE)  # room for two worst cases, not three
    proxy, fake = await metered(config_factory, aiohttp_server, start_proxy, credits)
    body = {"model": model, "input": PROMPT, "stream": stream, **extra}
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, proxy, body)
                                         for _ in range(CONCURRENT)))
        statuses = sorted(status for status, _ in results)
        assert set(statuses) <= {200, 402}, results
        assert 1 <= statuses.count(200) <= 2, statuses
        total = await spent(session, proxy)
        assert total == pytest.approx(fake.cost(PROMPT_PRICE, COMPLETION_PRICE), abs=1e-9)
        assert total <= credits, f"spent ${total} of ${credits}"
        assert all(upstream_output(p, b) <= output for p, b in fake.requests)


async def test_a_stream_cut_short_is_charged_its_estimate(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy) -> None:
    proxy, fake = await metered(config_factory, aiohttp_server, start_proxy, 5.0)
    fake.meter.deltas, fake.meter.cut_after = 10, 4
    async with aiohttp.ClientSession() as session:
        status, raw = await post(session, proxy, {"model": NATIVE_MODEL, "input": PROMPT,
                                                  "stream": True, "max_output_tokens": 500})
        assert status == 200
        assert raw.rstrip().split(b"\n")[-1].startswith(b'data: {"type":"response.failed"')
        charged = await spent(session, proxy)
    assert 0 < charged <= usd(500, COMPLETION_PRICE) + usd(len(PROMPT), PROMPT_PRICE)


@pytest.mark.parametrize("tool", ["web_search", "web_search_preview", "code_interpreter",
                                  "image_generation", "file_search", "mcp"])
async def test_built_in_tools_are_refused_for_keys_with_credits(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        tool: str) -> None:
    """Billed by OpenAI beyond tokens, at prices no config holds: a metered key never
    sends them, even to a native provider."""
    proxy, fake = await metered(config_factory, aiohttp_server, start_proxy, 5.0)
    async with aiohttp.ClientSession() as session:
        status, raw = await post(session, proxy, {"model": NATIVE_MODEL, "input": "news?",
                                                  "tools": [{"type": tool}]})
    error = json.loads(raw)["error"]
    assert (status, error["code"], error["param"]) == (400, "unsupported_parameter",
                                                       "tools[0].type")
    assert fake.requests == []


@pytest.mark.parametrize("model", [OPENAI_MODEL, NATIVE_MODEL, ANTHROPIC_MODEL])
async def test_a_referenced_item_is_input_charged_as_such(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        model: str) -> None:
    """An item_reference costs what the item it names costs: the upstream reads (and bills)
    the whole item, and the key pays exactly that, reserved beforehand."""
    proxy, fake = await metered(config_factory, aiohttp_server, start_proxy, 5.0)
    story = PROMPT * 20
    async with aiohttp.ClientSession() as session:
        status, raw = await post(session, proxy, {"model": model, "max_output_tokens": 50,
                                                  "input": [{"role": "user", "id": "msg_story",
                                                             "content": story}]})
        assert status == 200, raw
        first_cost = fake.cost(PROMPT_PRICE, COMPLETION_PRICE)
        fake.meter.gate = asyncio.Event()
        fake.meter.arrived.clear()
        task = asyncio.create_task(post(session, proxy, {
            "model": model, "max_output_tokens": 50,
            "input": [{"type": "item_reference", "id": "msg_story"},
                      {"role": "user", "content": "Shorter, please."}]}))
        await asyncio.wait_for(fake.meter.arrived.wait(), 10)
        async with session.get(proxy.url("/api/v1/auth/key"), headers=auth()) as answer:
            reserved = 5.0 - (await answer.json())["data"]["limit_remaining"] - first_cost
        fake.meter.gate.set()
        status, raw = await task
        assert status == 200, raw
        assert story in json.dumps(fake.requests[-1][1])  # the item itself went upstream
        first, second = fake.billed
        assert second.prompt_tokens > first.prompt_tokens  # the story and the request
        assert usd(second.prompt_tokens, PROMPT_PRICE) <= reserved
        assert await spent(session, proxy) == pytest.approx(
            fake.cost(PROMPT_PRICE, COMPLETION_PRICE), abs=1e-9)
