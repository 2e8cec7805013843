"""A client that leaves while the upstream holds its request, before any answer: the
upstream has read the prompt and may bill it (a non-stream answer may even be written in
full), so the key pays the prompt estimate and the output the upstream may still write is
recorded as the operator's cost. One that leaves before its request went out pays nothing.
Driven over real HTTP against the metered fake upstream, which holds its answers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, BOB_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256
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
PROMPT = "Tell me about the sea, at length. " * 40
# (client path, model): each client dialect to each upstream wire
PATHS = {
    "chat to openai": ("/api/v1/chat/completions", OPENAI_MODEL),
    "chat to anthropic": ("/api/v1/chat/completions", ANTHROPIC_MODEL),
    "messages to anthropic": ("/api/v1/messages", ANTHROPIC_MODEL),
    "messages to openai": ("/api/v1/messages", OPENAI_MODEL),
}


async def started_proxy(config_factory: ConfigFactory, aiohttp_server: Any,
                        start_proxy: StartProxy, **provider: Any
                        ) -> tuple[Proxy, MeteredUpstream]:
    fake = MeteredUpstream()
    server = await aiohttp_server(fake.app())
    sections = metered_sections(str(server.make_url("/v1")), PROVIDER_KEY)
    for settings in sections["providers"].values():
        settings.update(provider)
    keys = {name: {"key_sha256": sha256(key), "credits": 10.0}
            for name, key in (("alice", ALICE_KEY), ("bob", BOB_KEY))}
    return await start_proxy(config_factory(**sections, keys=keys)), fake


async def leave_once_upstream(proxy: Proxy, fake: MeteredUpstream, path: str,
                              body: dict[str, Any], trace_id: str, key: str = ALICE_KEY,
                              arrived: asyncio.Event | None = None) -> None:
    """POST, then go away (the connection closes) once `arrived` is set (by default: once
    the upstream has the request)."""
    async with aiohttp.ClientSession() as session:
        task = asyncio.ensure_future(session.post(
            proxy.url(path), json=body,
            headers={**auth(key), "X-AnyRouter-Trace-Id": trace_id}))
        await asyncio.wait_for((arrived or fake.meter.arrived).wait(), 5)
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task


async def spent(proxy: Proxy, key: str = ALICE_KEY) -> float:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/api/v1/credits"), headers=auth(key)) as response:
        return float((await response.json())["data"]["total_usage"])


def body_for(path: str, model: str, stream: bool) -> dict[str, Any]:
    return {"model": model, "max_tokens": MAX_TOKENS, "stream": stream,
            "messages": [{"role": "user", "content": PROMPT}]}


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("path", sorted(PATHS))
async def test_a_client_that_leaves_while_the_upstream_has_it_pays_the_prompt(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy,
        path: str, stream: bool) -> None:
    proxy, fake = await started_proxy(config_factory, aiohttp_server, start_proxy)
    fake.meter.gate = asyncio.Event()  # the upstream holds its answer
    client_path, model = PATHS[path]
    await leave_once_upstream(proxy, fake, client_path, body_for(client_path, model, stream),
                              "trace-left")
    row = await proxy.usage_row("trace_id", "trace-left")
    fake.meter.gate.set()
    assert (row["cancelled"], row["status_code"], row["streamed"]) == (1, 499, int(stream))
    assert row["usage_source"] == "estimated"
    assert row["tokens_prompt"] >= len(PROMPT) // 4 and row["tokens_completion"] == 0
    assert row["cost"] == pytest.approx(row["tokens_prompt"] * PROMPT_PRICE / 1e6, abs=1e-12)
    assert [a["status"] for a in json.loads(row["attempts"])] == ["cancelled"]
    # A whole answer may still be written (and billed) upstream: at most the output
    # reserved, not the key's to pay. A stream stops when the proxy closes it.
    expected_operator = 0.0 if stream else MAX_TOKENS * COMPLETION_PRICE / 1e6
    assert row["operator_cost"] == pytest.approx(expected_operator, abs=1e-12)
    assert await spent(proxy) == pytest.approx(row["cost"], abs=1e-12)


async def test_leaving_over_and_over_is_paid_each_time(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy) -> None:
    proxy, fake = await started_proxy(config_factory, aiohttp_server, start_proxy)
    fake.meter.gate = asyncio.Event()
    for n in range(5):
        fake.meter.arrived.clear()
        await leave_once_upstream(proxy, fake, "/api/v1/chat/completions",
                                  body_for("", OPENAI_MODEL, False), f"trace-again-{n}")
    rows = [await proxy.usage_row("trace_id", f"trace-again-{n}") for n in range(5)]
    fake.meter.gate.set()
    assert len(fake.requests) == 5
    assert all(row["cost"] > 0 for row in rows)
    assert await spent(proxy) == pytest.approx(sum(row["cost"] for row in rows), abs=1e-12)


async def test_a_client_that_leaves_before_its_request_went_out_pays_nothing(
        config_factory: ConfigFactory, aiohttp_server: Any, start_proxy: StartProxy) -> None:
    """Bob's request waits for the provider's only connection, which Alice's holds; Bob
    leaves meanwhile: nothing of his reached the upstream, nothing is charged."""
    proxy, fake = await started_proxy(config_factory, aiohttp_server, start_proxy,
                                      max_connections=1)
    fake.meter.gate = asyncio.Event()
    async with aiohttp.ClientSession() as session:
        alice = asyncio.ensure_future(session.post(
            proxy.url("/api/v1/chat/completions"), json=body_for("", OPENAI_MODEL, False),
            headers=auth()))
        await asyncio.wait_for(fake.meter.arrived.wait(), 5)
        waiting = asyncio.Event()
        asyncio.get_running_loop().call_later(0.3, waiting.set)  # Bob is in line by then
        await leave_once_upstream(proxy, fake, "/api/v1/chat/completions",
                                  body_for("", OPENAI_MODEL, False), "trace-bob",
                                  key=BOB_KEY, arrived=waiting)
        fake.meter.gate.set()
        async with await alice as response:
            assert response.status == 200
    row = await proxy.usage_row("trace_id", "trace-bob")
    assert (row["cancelled"], row["status_code"], row["cost"]) == (1, 499, 0)
    assert row["usage_source"] == "none" and json.loads(row["attempts"]) == []
    assert row["operator_cost"] == 0
    assert len(fake.requests) == 1  # Alice's only
    assert await spent(proxy, BOB_KEY) == 0
