"""What is reserved is what the upstream may spend: against a metered upstream that bills
whatever it is allowed to write (every choice at the largest cap it got, its own large
limit when it got none), a key with small credits never spends past them, alone or with
50 concurrent requests; the upstream body always carries a cap no larger than reserved;
caps that are not positive integers are refused; and when a provider still reports more,
the key pays it and the excess is counted and audited."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256
from tests.metered import (
    ANTHROPIC_LIMITED,
    ANTHROPIC_MODEL,
    COMPLETION_PRICE,
    MODEL_LIMIT,
    OPENAI_LIMITED,
    OPENAI_MODEL,
    PROMPT_PRICE,
    MeteredUpstream,
    metered_sections,
    upstream_output,
)

StartProxy = Callable[[Config], Awaitable[Proxy]]
CHAT, COMPLETIONS, MESSAGES = "/api/v1/chat/completions", "/api/v1/completions", \
    "/api/v1/messages"
PROMPT = "Please write a long story about a lighthouse keeper and the sea. " * 3
CONCURRENT = 50


def body_for(path: str, model: str, extra: dict[str, Any]) -> dict[str, Any]:
    if path == COMPLETIONS:
        return {"model": model, "prompt": PROMPT, **extra}
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


# (path, model, body fields, output tokens the upstream may write: cap x choices)
CASES: dict[str, tuple[str, str, dict[str, Any], int]] = {
    "n choices": (CHAT, OPENAI_MODEL, {"n": 8, "max_tokens": 50}, 400),
    "best_of": (COMPLETIONS, OPENAI_MODEL, {"best_of": 8, "max_tokens": 50}, 400),
    "max_tokens beside max_completion_tokens": (
        CHAT, OPENAI_MODEL, {"max_tokens": 1, "max_completion_tokens": 8000}, 8000),
    "reasoning effort, no cap": (CHAT, OPENAI_MODEL, {"reasoning_effort": "high"}, 20_480),
    "reasoning effort, no cap, anthropic upstream": (
        CHAT, ANTHROPIC_MODEL, {"reasoning_effort": "high"}, 20_480),
    "client thinking budget, no cap, anthropic upstream": (
        CHAT, ANTHROPIC_MODEL, {"thinking": {"type": "enabled", "budget_tokens": 60_000}},
        64_096),
    "no cap": (CHAT, OPENAI_MODEL, {}, 4096),
    "no cap, anthropic upstream": (CHAT, ANTHROPIC_MODEL, {}, 4096),
    "no cap, model limit": (CHAT, OPENAI_LIMITED, {}, MODEL_LIMIT),
    "cap above the model limit": (CHAT, OPENAI_LIMITED, {"max_tokens": 50_000}, MODEL_LIMIT),
    "anthropic client above the model limit, with thinking": (
        MESSAGES, ANTHROPIC_LIMITED,
        {"max_tokens": 64_000, "thinking": {"type": "enabled", "budget_tokens": 60_000}},
        MODEL_LIMIT),
    "anthropic client, openai upstream, thinking": (
        MESSAGES, OPENAI_MODEL,
        {"max_tokens": 30_000, "thinking": {"type": "enabled", "budget_tokens": 20_000}},
        30_000),
}


async def metered_proxy(config_factory: ConfigFactory, aiohttp_server: Any,
                        start_proxy: StartProxy, credits: float
                        ) -> tuple[Proxy, MeteredUpstream]:
    fake = MeteredUpstream()
    server = await aiohttp_server(fake.app())
    sections = metered_sections(str(server.make_url("/v1")), PROVIDER_KEY)
    proxy = await start_proxy(config_factory(
        **sections, keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": credits}}))
    return proxy, fake


async def post(session: aiohttp.ClientSession, proxy: Proxy, path: str,
               body: dict[str, Any]) -> tuple[int, bytes]:
    async with session.post(proxy.url(path), json=body, headers=auth()) as response:
        return response.status, await response.read()


async def get_data(session: aiohttp.ClientSession, proxy: Proxy, path: str) -> Any:
    async with session.get(proxy.url(path), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]


async def overspend_metric(session: aiohttp.ClientSession, proxy: Proxy) -> float:
    async with session.get(proxy.url("/metrics")) as response:
        text = await response.text()
    return sum(s.value for family in text_string_to_metric_families(text)
               for s in family.samples
               if s.name == "anyrouter_overspend_usd_total" and s.labels.get("key") == "alice")


def usd(tokens: int, price: float) -> float:
    return tokens * price / 1_000_000


async def held_reservation(session: aiohttp.ClientSession, proxy: Proxy, fake: MeteredUpstream,
                           path: str, body: dict[str, Any], credits: float
                           ) -> tuple[float, int, bytes]:
    """Send one request, and while the upstream holds it read the key's reservation
    (credits - limit_remaining, nothing spent yet); then let it finish."""
    fake.meter.gate = asyncio.Event()
    task = asyncio.create_task(post(session, proxy, path, body))
    await asyncio.wait_for(fake.meter.arrived.wait(), 10)
    info = await get_data(session, proxy, "/api/v1/auth/key")
    fake.meter.gate.set()
    status, raw = await task
    return credits - info["limit_remaining"], status, raw


@pytest.mark.parametrize("case", sorted(CASES))
async def test_one_request_reserves_what_the_upstream_may_write(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        case: str) -> None:
    path, model, extra, output = CASES[case]
    credits = 5.0
    proxy, fake = await metered_proxy(config_factory, aiohttp_server, start_proxy, credits)
    async with aiohttp.ClientSession() as session:
        reserved, status, raw = await held_reservation(
            session, proxy, fake, path, body_for(path, model, extra), credits)
        assert status == 200, raw
        [(upstream_path, upstream_body)] = fake.requests
        assert upstream_output(upstream_path, upstream_body) == output
        billed = fake.cost(PROMPT_PRICE, COMPLETION_PRICE)
        assert usd(output, COMPLETION_PRICE) <= reserved
        assert billed <= reserved + 1e-9, f"upstream billed ${billed}, ${reserved} reserved"
        spent = (await get_data(session, proxy, "/api/v1/credits"))["total_usage"]
        assert spent == pytest.approx(billed, abs=1e-9)  # charged what the provider said
        assert await overspend_metric(session, proxy) == 0


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("case", sorted(CASES))
async def test_concurrent_requests_never_spend_past_the_credits(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        case: str, stream: bool) -> None:
    path, model, extra, output = CASES[case]
    credits = 2.5 * usd(output, COMPLETION_PRICE)  # room for two worst cases, not three
    proxy, fake = await metered_proxy(config_factory, aiohttp_server, start_proxy, credits)
    body = body_for(path, model, {**extra, "stream": stream})
    async with aiohttp.ClientSession() as session:
        results = await asyncio.gather(*(post(session, proxy, path, body)
                                         for _ in range(CONCURRENT)))
        statuses = sorted(status for status, _ in results)
        assert set(statuses) <= {200, 402}, results
        assert 1 <= statuses.count(200) <= 2, statuses
        spent = (await get_data(session, proxy, "/api/v1/credits"))["total_usage"]
        billed = fake.cost(PROMPT_PRICE, COMPLETION_PRICE)
        assert spent == pytest.approx(billed, abs=1e-9)
        assert spent <= credits, f"spent ${spent} of ${credits}"
        assert all(upstream_output(p, b) <= output for p, b in fake.requests)
        assert await overspend_metric(session, proxy) == 0


BAD_CAPS: list[tuple[str, dict[str, Any], str]] = [
    (CHAT, {"max_tokens": 16000.0}, "max_tokens"),
    (CHAT, {"max_tokens": "100"}, "max_tokens"),
    (CHAT, {"max_tokens": True}, "max_tokens"),
    (CHAT, {"max_tokens": 0}, "max_tokens"),
    (CHAT, {"max_tokens": -1}, "max_tokens"),
    (CHAT, {"max_tokens": 1e9}, "max_tokens"),
    (CHAT, {"max_completion_tokens": 8000.5}, "max_completion_tokens"),
    (CHAT, {"max_output_tokens": "8000"}, "max_output_tokens"),
    (CHAT, {"n": 2.0}, "n"),
    (CHAT, {"n": 0}, "n"),
    (COMPLETIONS, {"best_of": "3"}, "best_of"),
    (CHAT, {"thinking": {"type": "enabled", "budget_tokens": 60000.0}},
     "thinking.budget_tokens"),
    (MESSAGES, {"max_tokens": 16000.0}, "max_tokens"),
    (MESSAGES, {"max_tokens": 0}, "max_tokens"),
    (MESSAGES, {"max_tokens": 100, "thinking": {"type": "enabled", "budget_tokens": "64"}},
     "thinking.budget_tokens"),
]


@pytest.mark.parametrize("model", [OPENAI_MODEL, ANTHROPIC_MODEL])
async def test_a_cap_that_is_not_a_positive_integer_is_a_400(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        model: str) -> None:
    proxy, fake = await metered_proxy(config_factory, aiohttp_server, start_proxy, 5.0)
    async with aiohttp.ClientSession() as session:
        for path, extra, param in BAD_CAPS:
            if path == COMPLETIONS and model == ANTHROPIC_MODEL:
                continue  # no anthropic route serves legacy completions
            status, raw = await post(session, proxy, path, body_for(path, model, extra))
            error = json.loads(raw)["error"]
            assert (status, error["type"], error["code"], error["param"]) == (
                400, "invalid_request_error", "invalid_request", param), (extra, raw)
    assert fake.requests == []


async def test_overspend_is_charged_counted_and_audited(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy) -> None:
    credits = 5.0
    proxy, fake = await metered_proxy(config_factory, aiohttp_server, start_proxy, credits)
    fake.meter.extra_tokens = 1000  # the provider reports 1000 tokens more than allowed
    body = body_for(CHAT, OPENAI_MODEL, {"max_tokens": 100})
    async with aiohttp.ClientSession() as session:
        reserved, status, raw = await held_reservation(session, proxy, fake, CHAT, body,
                                                       credits)
        assert status == 200, raw
        billed = fake.cost(PROMPT_PRICE, COMPLETION_PRICE)
        assert billed > reserved
        spent = (await get_data(session, proxy, "/api/v1/credits"))["total_usage"]
        assert spent == pytest.approx(billed, abs=1e-9)  # the key pays what was reported
        assert await overspend_metric(session, proxy) == pytest.approx(billed - reserved,
                                                                       abs=1e-9)
    await proxy.flush()
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        rows = db.execute("SELECT key_name, detail FROM audit WHERE event = 'overspend'"
                          ).fetchall()
    finally:
        db.close()
    [(key_name, detail)] = rows
    detail = json.loads(detail)
    assert key_name == "alice"
    assert detail["reserved"] == pytest.approx(reserved, abs=1e-9)
    assert detail["charged"] == pytest.approx(billed, abs=1e-9)
    assert (detail["model"], detail["provider"]) == (OPENAI_MODEL, "oa")
