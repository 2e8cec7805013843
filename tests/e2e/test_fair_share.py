"""Fair sharing of a provider's connection pool between keys, and timeouts a hostile or
careless client cannot hold open, over real HTTP against fake upstreams: two keys (alice
floods, bob must still be served), slow upstreams, and raw-socket clients that stop
reading or send their headers a byte at a time."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from anyrouter_proxy.server.state import STORE
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import Behaviour, FakeOpenAI
from tests.served import eventually, raw_connect, read_until_closed, serve_like_cli

StartProxy = Callable[[Config], Awaitable[Proxy]]

GPT = "openai/gpt-4o-mini"
PRICING = {"prompt": 1.0, "completion": 2.0}  # USD per 1M tokens
CHAT: dict[str, Any] = {"model": GPT, "messages": [{"role": "user", "content": "hello"}]}
SLOW_STREAM = Behaviour(chunks=3, chunk_delay_s=0.6)  # about 2.5 s from first to last event
KEYS = {"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10,
                  "limits": {"requests_per_minute": 1000, "concurrent_requests": 50}},
        "bob": {"key_sha256": sha256(BOB_KEY)}}


def make_config(config_factory: ConfigFactory, fake: FakeOpenAI, *,
                backup: FakeOpenAI | None = None, server: dict[str, Any] | None = None,
                **provider: Any) -> Config:
    provider.setdefault("timeouts", {"first_byte_s": 1, "idle_s": 5})
    provider.setdefault("circuit", {"failures": 1})  # one failure that counts opens it
    providers = {"openai": openai_provider(fake, **provider)}
    routes = [{"provider": "openai", "model": "gpt-4o-mini"}]
    if backup is not None:
        providers["backup"] = openai_provider(backup)
        routes.append({"provider": "backup", "model": "gpt-4o-mini"})
    return config_factory(providers=providers, models={GPT: {"pricing": PRICING,
                                                             "routes": routes}},
                          keys=KEYS, server={"retry_backoff_s": 0.01, **(server or {})})


async def post(proxy: Proxy, body: dict[str, Any], key: str = ALICE_KEY
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json=body, headers=auth(key)) as response:
        return response.status, dict(response.headers), await response.read()


async def get_json(proxy: Proxy, path: str, key: str = ALICE_KEY) -> Any:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth(key)) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def provider_status(proxy: Proxy, pid: str = "openai") -> dict[str, Any]:
    listed = await get_json(proxy, "/api/v1/providers")
    return next(p for p in listed["data"] if p["id"] == pid)  # type: ignore[no-any-return]


async def generation(proxy: Proxy, gen_id: str, key: str = ALICE_KEY) -> dict[str, Any]:
    await proxy.flush()
    return (await get_json(proxy, f"/api/v1/generation/{gen_id}", key))["data"]  # type: ignore[no-any-return]


async def open_stream(stack: AsyncExitStack, session: aiohttp.ClientSession, proxy: Proxy,
                      key: str = ALICE_KEY) -> aiohttp.ClientResponse:
    """A stream started and its first event read: it now holds a connection upstream."""
    response = await stack.enter_async_context(session.post(
        proxy.url("/api/v1/chat/completions"), json={**CHAT, "stream": True},
        headers=auth(key)))
    assert response.status == 200
    assert (await response.content.readline()).startswith(b"data: {")
    return response


def error_of(raw: bytes) -> dict[str, Any]:
    return json.loads(raw)["error"]  # type: ignore[no-any-return]


# -- each key's share of a provider's pool ------------------------------------------------------


async def test_a_flooding_key_is_refused_past_its_share_and_another_key_is_served(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, max_connections=4))
    fake_openai.then(SLOW_STREAM, SLOW_STREAM)
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        held = [await open_stream(stack, session, proxy) for _ in range(2)]  # alice's share
        flood = await asyncio.gather(*(post(proxy, {**CHAT, "stream": True})
                                       for _ in range(6)))
        for status, headers, raw in flood:
            assert status == 429
            assert error_of(raw)["code"] == "rate_limited"
            assert "openai" in error_of(raw)["message"]
            assert int(headers["Retry-After"]) >= 1
        assert len(fake_openai.requests) == 2  # the flood never reached the upstream
        # bob is served at once, by the same provider, while alice's streams go on
        status, _, raw = await post(proxy, CHAT, BOB_KEY)
        assert status == 200, raw
        status, _, raw = await post(proxy, {**CHAT, "stream": True}, BOB_KEY)
        assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
        assert fake_openai.completed == 2  # bob's two; alice's streams still running
        openai = await provider_status(proxy)
        assert openai["connections"] == {"max": 4, "per_key": 2, "in_flight": 2}
        assert (openai["status"], openai["circuit"], openai["consecutive_failures"]) == (
            "ok", "closed", 0)
        for response in held:  # alice's streams end normally
            assert (await response.read()).endswith(b"data: [DONE]\n\n")
    await eventually(lambda: fake_openai.completed == 4, 2)
    assert (await provider_status(proxy))["connections"]["in_flight"] == 0
    status, _, _ = await post(proxy, CHAT)  # her share is free again
    assert status == 200
    refused = await generation(proxy, flood[0][1]["X-AnyRouter-Generation-Id"])
    assert (refused["status_code"], refused["error_code"], refused["total_cost"]) == (
        429, "rate_limited", 0)


async def test_non_stream_answers_give_their_share_back(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, max_connections=2,
                                          per_key_connections=1, circuit={"failures": 5}))
    for _ in range(5):  # one at a time, each within the share of one
        status, _, raw = await post(proxy, CHAT)
        assert status == 200, raw
    fake_openai.then(Behaviour(status=500))  # a failed attempt gives it back too
    status, _, _ = await post(proxy, {**CHAT, "stream": True})
    assert status == 200  # the retry round
    assert (await provider_status(proxy))["connections"]["in_flight"] == 0


async def test_a_key_at_its_share_of_one_provider_fails_over_to_another(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, backup=fake_backup,
                                          per_key_connections=1))
    fake_openai.then(SLOW_STREAM)
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        held = await open_stream(stack, session, proxy)
        status, headers, _ = await post(proxy, CHAT)
        assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
        status, headers, _ = await post(proxy, CHAT, BOB_KEY)  # bob has his own share
        assert (status, headers["X-AnyRouter-Provider"]) == (200, "openai")
        await held.read()


async def test_waiting_for_a_saturated_pool_does_not_open_the_circuit(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(
        config_factory, fake_openai, max_connections=1, per_key_connections=1,
        timeouts={"first_byte_s": 0.5, "idle_s": 5}, server={"retries": 0}))
    fake_openai.then(Behaviour(chunks=2, chunk_delay_s=0.8))
    async with AsyncExitStack() as stack, aiohttp.ClientSession() as session:
        held = await open_stream(stack, session, proxy)  # the pool's only connection
        status, _, raw = await post(proxy, CHAT, BOB_KEY)
        assert status == 504
        assert "free connection" in error_of(raw)["message"]
        assert len(fake_openai.requests) == 1  # bob's request never left the pool's queue
        openai = await provider_status(proxy)
        assert (openai["circuit"], openai["consecutive_failures"]) == ("closed", 0)
        await held.read()
    status, _, _ = await post(proxy, CHAT, BOB_KEY)
    assert status == 200


# -- slow answers ---------------------------------------------------------------------------------


async def test_a_slow_non_stream_answer_is_not_retried_and_is_the_operators_cost(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai, backup=fake_backup,
                                          timeouts={"first_byte_s": 0.3, "idle_s": 5}))
    body = {**CHAT, "max_tokens": 100}
    expected = (estimate_prompt_tokens(body) * PRICING["prompt"]
                + 100 * PRICING["completion"]) / 1_000_000
    fake_openai.then(*[Behaviour(delay_s=1)] * 3)
    for n in range(1, 4):  # three in a row, each with a retry round and a backup available
        status, headers, raw = await post(proxy, body)
        assert status == 504, raw
        assert error_of(raw)["code"] == "upstream_timeout"
        assert len(fake_openai.requests) == n  # sent once, never again
        assert not fake_backup.requests  # nor to the backup: it would be generated twice
        row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
        assert (row["status_code"], row["total_cost"]) == (504, 0)
        assert row["operator_cost"] == pytest.approx(expected)
        assert [(a["provider"], a["status"]) for a in row["attempts"]] == [
            ("openai", "timeout")]
    openai = await provider_status(proxy)
    assert (openai["circuit"], openai["consecutive_failures"]) == ("closed", 0)
    credits = await get_json(proxy, "/api/v1/credits")
    assert credits["data"]["total_usage"] == 0


async def test_slow_answers_are_retried_when_the_config_says_so(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai,
                                          timeouts={"first_byte_s": 0.3, "idle_s": 5},
                                          server={"retry_slow_answers": True}))
    fake_openai.then(Behaviour(delay_s=1))
    status, headers, raw = await post(proxy, {**CHAT, "max_tokens": 50})
    assert status == 200, raw  # the retry answered
    assert len(fake_openai.requests) == 2
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert row["total_cost"] > 0 and row["operator_cost"] > 0


async def test_a_stream_that_does_not_start_in_time_still_opens_the_circuit(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(make_config(config_factory, fake_openai,
                                          timeouts={"first_byte_s": 0.3, "idle_s": 5},
                                          server={"retries": 0}))
    fake_openai.then(Behaviour(delay_s=1))
    status, _, raw = await post(proxy, {**CHAT, "stream": True})
    assert status == 504, raw
    openai = await provider_status(proxy)
    assert openai["circuit"] == "open"


# -- clients that stop reading -----------------------------------------------------------------


def raw_request(body: dict[str, Any], key: str = ALICE_KEY) -> bytes:
    payload = json.dumps(body).encode()
    return (f"POST /api/v1/chat/completions HTTP/1.1\r\nHost: proxy\r\n"
            f"Authorization: Bearer {key}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode() + payload


async def test_a_client_that_stops_reading_is_released_within_the_write_timeout(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, aiohttp_server: Any) -> None:
    proxy = await serve_like_cli(aiohttp_server, make_config(
        config_factory, fake_openai, server={"write_timeout_s": 1}))
    # ~10 MB of events: far more than the socket buffers between the proxy and a client
    # that reads nothing (its receive buffer shrunk), so the proxy's writes back up.
    fake_openai.then(Behaviour(chunks=1200, content="x" * 8192, chunk_delay_s=0.001))
    sock = await raw_connect(proxy.server.port, receive_buffer=4096)
    try:
        await asyncio.get_running_loop().sock_sendall(
            sock, raw_request({**CHAT, "stream": True}))
        await eventually(lambda: fake_openai.cancelled == 1, 10)  # upstream closed
        assert fake_openai.completed == 0
        info = await get_json(proxy, "/api/v1/auth/key")
        assert info["data"]["in_flight"] == 0  # the concurrency slot is free
        assert (await provider_status(proxy))["connections"]["in_flight"] == 0
        # The proxy dropped the connection: what the client still has buffered, then EOF.
        head = await read_until_closed(sock, 5)
        assert head.startswith(b"HTTP/1.1 200 ")
        assert not head.endswith(b"data: [DONE]\n\n")
    finally:
        sock.close()
    await proxy.flush()
    (row,) = await proxy.app[STORE].fetch("SELECT id FROM generations")
    data = await generation(proxy, row["id"])
    assert data["cancelled"] is True and data["status_code"] == 499
    assert data["streamed"] is True
    assert data["tokens_completion"] > 0 and data["total_cost"] > 0  # what was relayed


async def test_a_client_that_reads_slowly_gets_the_whole_stream_in_order(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, aiohttp_server: Any) -> None:
    """The relay stops while the client is behind and goes on once it has caught up: the
    events in between are buffered, none lost, none repeated, none out of order."""
    proxy = await serve_like_cli(aiohttp_server, make_config(config_factory, fake_openai))
    # ~10 MB of events, more than the socket buffers hold (see the test above)
    pieces = [f"<{i}>" + "x" * 8192 for i in range(1200)]
    fake_openai.then(Behaviour(chunks=len(pieces), content="x" * 8192, numbered=True,
                               chunk_delay_s=0.001))
    sock = await raw_connect(proxy.server.port, receive_buffer=4096)
    loop = asyncio.get_running_loop()
    received = b""
    try:
        await loop.sock_sendall(sock, raw_request({**CHAT, "stream": True}))
        async with asyncio.timeout(30):
            while not received.endswith(b"\r\n0\r\n\r\n"):
                data = await loop.sock_recv(sock, 65536)
                assert data, "the proxy closed the stream"
                received += data
                await asyncio.sleep(0.002)  # a slow reader: the proxy's writes back up
    finally:
        sock.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    events = dechunked(body).split(b"\n\n")
    texts = [json.loads(e[6:])["choices"][0]["delta"].get("content", "")
             for e in events if e.startswith(b"data: {") and b'"content"' in e]
    assert "".join(texts) == "".join(pieces)
    assert events[-2:] == [b"data: [DONE]", b""]
    await proxy.flush()
    (row,) = await proxy.app[STORE].fetch("SELECT id FROM generations")
    data = await generation(proxy, row["id"])
    assert data["cancelled"] is False and data["status_code"] == 200


def dechunked(body: bytes) -> bytes:
    out, at = [], 0
    while True:
        end = body.index(b"\r\n", at)
        size = int(body[at:end], 16)
        if size == 0:
            return b"".join(out)
        out.append(body[end + 2:end + 2 + size])
        at = end + 2 + size + 2


# -- request heads that never end, idle keep-alive connections --------------------------------


async def test_request_headers_sent_byte_by_byte_are_cut_at_the_keepalive_timeout(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, aiohttp_server: Any) -> None:
    proxy = await serve_like_cli(aiohttp_server, make_config(
        config_factory, fake_openai, server={"keepalive_timeout_s": 1}))
    sock = await raw_connect(proxy.server.port)
    loop = asyncio.get_running_loop()
    head = raw_request(CHAT).split(b"\r\n\r\n")[0]

    async def drip() -> None:
        for byte in head:  # 0.1 s a byte: the whole head would take many seconds
            await loop.sock_sendall(sock, bytes([byte]))
            await asyncio.sleep(0.1)

    dripping = asyncio.ensure_future(drip())
    started = time.monotonic()
    try:
        answer = await read_until_closed(sock, 5)
    finally:
        dripping.cancel()
        await asyncio.gather(dripping, return_exceptions=True)
        sock.close()
    assert time.monotonic() - started >= 0.9  # not before the timeout
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout"
    envelope = json.loads(rest.split(b"\r\n\r\n", 1)[1])
    assert envelope["error"]["code"] == "request_timeout"
    assert envelope["error"]["type"] == "invalid_request_error"
    assert not fake_openai.requests


async def test_an_idle_keepalive_connection_is_closed_after_the_timeout(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, aiohttp_server: Any) -> None:
    proxy = await serve_like_cli(aiohttp_server, make_config(
        config_factory, fake_openai, server={"keepalive_timeout_s": 1}))
    loop = asyncio.get_running_loop()
    used = await raw_connect(proxy.server.port)
    silent = await raw_connect(proxy.server.port)  # connects, never says a word
    try:
        await loop.sock_sendall(used, b"GET /health HTTP/1.1\r\nHost: proxy\r\n\r\n")
        started = time.monotonic()
        answer = await read_until_closed(used, 5)  # the answer, then the close
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer
        assert time.monotonic() - started >= 0.9  # kept alive for the timeout, not less
        assert await read_until_closed(silent, 5) == b""  # closed without a word
    finally:
        used.close()
        silent.close()
