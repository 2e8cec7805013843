"""End to end: provider choice, failover, retries, timeouts, circuit breakers and
the final error, with two or three fault-injecting fake upstreams on their own ports."""

from __future__ import annotations

import asyncio
import json
import random
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fakes import ANSWER, Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

FAST = {"first_byte_s": 0.3, "idle_s": 0.3}  # every fake provider's timeouts
SERVER = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}
CHAT: dict[str, Any] = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
STREAM_TEXT = "tok0 tok1 tok2 "


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture
async def fake_third(aiohttp_server: Any) -> FakeOpenAI:
    fake = FakeOpenAI("third")
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


def closed_port() -> int:
    """A port nothing listens on: connections to it are refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def fake_provider(fake: FakeOpenAI, timeouts: dict[str, float] | None = None,
                  **extra: Any) -> dict[str, Any]:
    return openai_provider(fake, timeouts={**FAST, **(timeouts or {})}, **extra)


def refused_provider(**extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": f"http://127.0.0.1:{closed_port()}/v1",
            "api_key": PROVIDER_KEY, "timeouts": FAST, **extra}


def routes(*pids: str) -> list[dict[str, Any]]:
    return [{"provider": pid, "model": f"{pid}-model"} for pid in pids]


async def start(config_factory: ConfigFactory, start_proxy: StartProxy,
                providers: dict[str, dict[str, Any]], model_routes: list[dict[str, Any]] | None
                = None, *, models: dict[str, Any] | None = None,
                server: dict[str, Any] | None = None) -> Proxy:
    """The proxy with model `m` served by `providers` in the order given (unless told)."""
    models = models or {"m": {"routes": model_routes or routes(*providers)}}
    return await start_proxy(config_factory(providers=providers, models=models,
                                            server={**SERVER, **(server or {})}))


@pytest.fixture
async def pair(config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
               fake_backup: FakeOpenAI) -> Proxy:
    """Model `m`: provider `primary` (fake_openai) first, then `backup` (fake_backup)."""
    return await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai),
                                                     "backup": fake_provider(fake_backup)})


async def post(proxy: Proxy, body: Any = None, headers: dict[str, str] | None = None,
               path: str = "/api/v1/chat/completions") -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url(path), json=CHAT if body is None else body,
            headers={**auth(), **(headers or {})}) as response:
        assert response.content_type == "application/json"
        return response.status, dict(response.headers), await response.json()


async def get(proxy: Proxy, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth() if headers is None else headers) as response:
        if response.content_type == "application/json":
            return response.status, await response.json()
        return response.status, await response.text()


async def stream(proxy: Proxy, body: dict[str, Any] | None = None,
                 headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], list[bytes]]:
    """A streamed chat completion read to its end: status, headers and SSE blocks."""
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json={**(body or CHAT), "stream": True},
            headers={**auth(), **(headers or {})}) as response:
        raw = await response.read()
        return response.status, dict(response.headers), [b for b in raw.split(b"\n\n") if b]


def data_events(blocks: list[bytes]) -> list[Any]:
    return [json.loads(b.removeprefix(b"data: ")) for b in blocks
            if b.startswith(b"data: {")]


def streamed_text(blocks: list[bytes]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in data_events(blocks)
                   if c.get("choices"))


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    await proxy.flush()
    status, body = await get(proxy, f"/api/v1/generation/{gen_id}")
    assert status == 200, body
    return body["data"]  # type: ignore[no-any-return]


def attempts(row: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(a["provider"], a["status"]) for a in row["attempts"]]


@asynccontextmanager
async def sdk(proxy: Proxy) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def providers(proxy: Proxy) -> dict[str, Any]:
    status, body = await get(proxy, "/api/v1/providers")
    assert status == 200
    return {p["id"]: p for p in body["data"]}


async def circuit_gauges(proxy: Proxy) -> dict[str, float]:
    status, text = await get(proxy, "/metrics", headers={})
    assert status == 200
    return {s.labels["provider"]: s.value for family in text_string_to_metric_families(text)
            if family.name == "anyrouter_circuit_state" for s in family.samples}


async def eventually(condition: Callable[[], bool], within_s: float = 1.0) -> float:
    """Seconds until `condition` held; fails if it did not within `within_s`."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < within_s, "condition not met in time"
        await asyncio.sleep(0.01)
    return time.monotonic() - started


# -- failover before the first byte -----------------------------------------------------------

REFUSED = "refused"
FAILOVER_CASES: dict[str, tuple[Behaviour | str, Any]] = {
    "500": (Behaviour(status=500), 500),
    "502": (Behaviour(status=502), 502),
    "503": (Behaviour(status=503), 503),
    "504": (Behaviour(status=504), 504),
    "429": (Behaviour(status=429), 429),
    "connection_refused": (REFUSED, "error"),
    "first_byte_too_late": (Behaviour(delay_s=1), "timeout"),
    "invalid_json_200": (Behaviour(status=200, body="{not json"), "upstream_invalid_response"),
}


async def start_failover_pair(config_factory: ConfigFactory, start_proxy: StartProxy,
                              fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
                              fault: Behaviour | str) -> Proxy:
    primary = refused_provider() if fault == REFUSED else fake_provider(fake_openai)
    if isinstance(fault, Behaviour):
        fake_openai.then(fault)
    # retry_slow_answers: a non-stream answer late after the upstream took the request
    # fails over too (by default it is the final answer; see test_fair_share.py).
    return await start(config_factory, start_proxy,
                       {"primary": primary, "backup": fake_provider(fake_backup)},
                       server={"retry_slow_answers": True})


@pytest.mark.parametrize("case", list(FAILOVER_CASES))
async def test_failover_to_backup(case: str, config_factory: ConfigFactory,
                                  start_proxy: StartProxy, fake_openai: FakeOpenAI,
                                  fake_backup: FakeOpenAI) -> None:
    fault, attempt_status = FAILOVER_CASES[case]
    proxy = await start_failover_pair(config_factory, start_proxy, fake_openai, fake_backup,
                                      fault)
    async with sdk(proxy) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    completion = raw.parse()
    assert completion.choices[0].message.content == ANSWER
    assert completion.model == "m"
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert len(fake_openai.requests) == (0 if fault == REFUSED else 1)  # failover, not retry
    assert len(fake_backup.requests) == 1
    assert fake_backup.requests[0].body["model"] == "backup-model"
    row = await generation(proxy, completion.id)
    assert row["provider_name"] == "backup"
    assert attempts(row) == [("primary", attempt_status), ("backup", 200)]


STREAM_FAILOVER_CASES: dict[str, tuple[Behaviour | str, Any]] = {
    "503": (Behaviour(status=503), 503),
    "429": (Behaviour(status=429), 429),
    "connection_refused": (REFUSED, "error"),
    "headers_too_late": (Behaviour(delay_s=1), "timeout"),
    "first_event_too_late": (Behaviour(first_event_delay_s=1), "timeout"),
    "stalled_before_first_event": (Behaviour(stall_after=0), "timeout"),
    "error_event_first": (Behaviour(error_event_after=0), "upstream_error"),
    "not_sse": (Behaviour(status=200, body="<html>oops</html>"), "upstream_invalid_response"),
}


@pytest.mark.parametrize("case", list(STREAM_FAILOVER_CASES))
async def test_stream_failover_to_backup(case: str, config_factory: ConfigFactory,
                                         start_proxy: StartProxy, fake_openai: FakeOpenAI,
                                         fake_backup: FakeOpenAI) -> None:
    fault, attempt_status = STREAM_FAILOVER_CASES[case]
    proxy = await start_failover_pair(config_factory, start_proxy, fake_openai, fake_backup,
                                      fault)
    status, headers, blocks = await stream(proxy)
    assert status == 200
    assert headers["X-AnyRouter-Provider"] == "backup"
    assert streamed_text(blocks) == STREAM_TEXT  # the backup's whole answer, once
    assert not any(b"error" in b for b in blocks)
    assert blocks[-1] == b"data: [DONE]"
    assert len(fake_openai.requests) == (0 if fault == REFUSED else 1)
    assert len(fake_backup.requests) == 1
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert attempts(row) == [("primary", attempt_status), ("backup", 200)]


async def test_stream_dropped_before_first_event_fails_over(
        pair: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(drop_after=0))
    status, headers, blocks = await stream(pair)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert streamed_text(blocks) == STREAM_TEXT and blocks[-1] == b"data: [DONE]"
    row = await generation(pair, headers["X-AnyRouter-Generation-Id"])
    (first, first_status), second = attempts(row)
    assert first == "primary" and first_status in ("upstream_error", "upstream_invalid_response")
    assert second == ("backup", 200)


async def test_failover_after_keepalive_comments(config_factory: ConfigFactory,
                                                 start_proxy: StartProxy,
                                                 fake_openai: FakeOpenAI,
                                                 fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup)},
        server={"sse_keepalive_interval_s": 0.05})
    fake_openai.then(Behaviour(first_event_delay_s=1))
    status, headers, blocks = await stream(proxy)
    assert status == 200
    assert blocks[0].startswith(b": ANYROUTER PROCESSING")  # committed to 200 already...
    assert streamed_text(blocks) == STREAM_TEXT  # ...yet the backup still answers
    assert not any(b"error" in b for b in blocks) and blocks[-1] == b"data: [DONE]"
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert row["provider_name"] == "backup"
    assert attempts(row) == [("primary", "timeout"), ("backup", 200)]


async def test_total_timeout_fails_over(config_factory: ConfigFactory, start_proxy: StartProxy,
                                        fake_openai: FakeOpenAI,
                                        fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, {"first_byte_s": 5, "total_s": 0.3}),
        "backup": fake_provider(fake_backup)}, server={"retry_slow_answers": True})
    fake_openai.then(Behaviour(delay_s=1))
    started = time.monotonic()
    status, headers, body = await post(proxy)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert time.monotonic() - started < 0.9
    row = await generation(proxy, body["id"])
    assert attempts(row) == [("primary", "timeout"), ("backup", 200)]


# -- request faults are passed on; credential faults fail over --------------------------------

UPSTREAM_REJECTION = {"error": {"message": "Invalid 'messages[0].content': string too long",
                                "type": "invalid_request_error", "param": "messages",
                                "code": "string_above_max_length"}}


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
@pytest.mark.parametrize("upstream_status", [400, 404, 413, 422])
async def test_request_faults_are_returned_as_is(pair: Proxy, fake_openai: FakeOpenAI,
                                                 fake_backup: FakeOpenAI, upstream_status: int,
                                                 streamed: bool) -> None:
    fake_openai.then(Behaviour(status=upstream_status, body=UPSTREAM_REJECTION))
    status, _, body = await post(pair, {**CHAT, "stream": streamed})
    assert status == upstream_status
    error = body["error"]
    assert error["message"] == UPSTREAM_REJECTION["error"]["message"]
    assert (error["param"], error["code"]) == ("messages", "string_above_max_length")
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["metadata"]["provider_name"] == "primary"
    assert len(fake_openai.requests) == 1  # not retried...
    assert fake_backup.requests == []  # ...nor failed over


async def test_request_fault_reaches_the_sdk(pair: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=422, body=UPSTREAM_REJECTION))
    async with sdk(pair) as client:
        with pytest.raises(openai.UnprocessableEntityError) as info:
            await client.chat.completions.create(model="m",
                                                 messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 422
    assert "string too long" in info.value.message


@pytest.mark.parametrize("upstream_status", [401, 403])
async def test_credential_faults_fail_over(pair: Proxy, fake_openai: FakeOpenAI,
                                           fake_backup: FakeOpenAI, upstream_status: int) -> None:
    fake_openai.then(Behaviour(status=upstream_status))
    status, headers, body = await post(pair)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert len(fake_openai.requests) == 1 and len(fake_backup.requests) == 1
    row = await generation(pair, body["id"])
    assert attempts(row) == [("primary", upstream_status), ("backup", 200)]


@pytest.mark.parametrize("upstream_status", [401, 403])
async def test_credential_fault_without_backup_is_502_naming_provider(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        upstream_status: int) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)})
    fake_openai.then(Behaviour(status=upstream_status, body={"error": {
        "message": f"Incorrect API key provided: {PROVIDER_KEY}"}}))
    status, _, body = await post(proxy)
    assert status == 502
    error = body["error"]
    assert (error["type"], error["code"]) == ("upstream_error", "upstream_error")
    assert "primary" in error["message"]
    assert error["metadata"]["provider_name"] == "primary"
    assert error["metadata"]["provider_status"] == upstream_status
    assert PROVIDER_KEY not in json.dumps(body)
    assert len(fake_openai.requests) == 1  # the same credentials would fail again


# -- retries on the same route, with backoff --------------------------------------------------


@pytest.mark.parametrize("streamed", [False, True], ids=["json", "stream"])
async def test_single_route_retried_after_503(config_factory: ConfigFactory,
                                              start_proxy: StartProxy, fake_openai: FakeOpenAI,
                                              streamed: bool) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)})
    fake_openai.then(Behaviour(status=503))
    if streamed:
        status, headers, blocks = await stream(proxy)
        assert streamed_text(blocks) == STREAM_TEXT and blocks[-1] == b"data: [DONE]"
        gen_id = headers["X-AnyRouter-Generation-Id"]
    else:
        status, headers, body = await post(proxy)
        assert body["choices"][0]["message"]["content"] == ANSWER
        gen_id = body["id"]
    assert status == 200 and headers["X-AnyRouter-Provider"] == "primary"
    assert len(fake_openai.requests) == 2
    assert attempts(await generation(proxy, gen_id)) == [("primary", 503), ("primary", 200)]


async def test_retry_round_comes_after_failover(pair: Proxy, fake_openai: FakeOpenAI,
                                                fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=503))
    fake_backup.then(Behaviour(status=503))
    status, headers, body = await post(pair)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "primary")
    assert attempts(await generation(pair, body["id"])) == [
        ("primary", 503), ("backup", 503), ("primary", 200)]


async def test_retry_after_is_honoured(config_factory: ConfigFactory, start_proxy: StartProxy,
                                       fake_openai: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)})
    fake_openai.then(Behaviour(status=429, headers={"Retry-After": "1"}))
    started = time.monotonic()
    async with sdk(proxy) as client:
        completion = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}])
    elapsed = time.monotonic() - started
    assert completion.choices[0].message.content == ANSWER
    assert len(fake_openai.requests) == 2
    assert 0.95 <= elapsed < 3


async def test_retry_after_beyond_the_max_is_not_waited_for(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)},
                        server={"retry_after_max_s": 0.5})
    fake_openai.then(Behaviour(status=429, headers={"Retry-After": "5"}))
    started = time.monotonic()
    status, headers, body = await post(proxy)
    assert time.monotonic() - started < 1
    assert status == 429
    assert (body["error"]["type"], body["error"]["code"]) == ("rate_limit_error",
                                                              "upstream_rate_limited")
    assert headers["Retry-After"] == "5"  # the client learns how long to wait
    assert len(fake_openai.requests) == 1


async def test_retries_zero_disables_retrying(config_factory: ConfigFactory,
                                              start_proxy: StartProxy,
                                              fake_openai: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)},
                        server={"retries": 0})
    fake_openai.then(Behaviour(status=503))
    status, _, body = await post(proxy)
    assert status == 502 and body["error"]["code"] == "upstream_error"
    assert len(fake_openai.requests) == 1


async def test_backoff_grows_between_rounds(config_factory: ConfigFactory,
                                            start_proxy: StartProxy,
                                            fake_openai: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)},
                        server={"retries": 2, "retry_backoff_s": 0.2,
                                "retry_backoff_max_s": 10})
    fake_openai.then(Behaviour(status=503), Behaviour(status=500))
    started = time.monotonic()
    status, _, _ = await post(proxy)
    elapsed = time.monotonic() - started
    assert status == 200 and len(fake_openai.requests) == 3
    # 0.2 s then 0.4 s, each with jitter in [50 %, 100 %]
    assert 0.3 <= elapsed < 1.5


async def test_backoff_is_capped(config_factory: ConfigFactory, start_proxy: StartProxy,
                                 fake_openai: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {"primary": fake_provider(fake_openai)},
                        server={"retries": 3, "retry_backoff_s": 5, "retry_backoff_max_s": 0.05})
    fake_openai.then(Behaviour(status=503), Behaviour(status=503), Behaviour(status=503))
    started = time.monotonic()
    status, _, _ = await post(proxy)
    assert status == 200 and len(fake_openai.requests) == 4
    assert time.monotonic() - started < 1


# -- nothing is retried once the stream began -----------------------------------------------

MID_STREAM_CASES: dict[str, tuple[Behaviour, int, tuple[str, ...]]] = {
    # behaviour, content events the client gets, acceptable error codes
    "dropped": (Behaviour(drop_after=2, chunk_delay_s=0.05), 2,
                ("upstream_error", "upstream_invalid_response")),
    "stalled": (Behaviour(stall_after=2, chunk_delay_s=0.05), 2, ("upstream_timeout",)),
    "error_event": (Behaviour(error_event_after=2, chunk_delay_s=0.05), 2,
                    ("upstream_error",)),
    "no_done": (Behaviour(no_done=True, chunk_delay_s=0.05), 4,
                ("upstream_invalid_response",)),
}


@pytest.mark.parametrize("case", list(MID_STREAM_CASES))
async def test_mid_stream_failure_is_final_event_without_retry(
        case: str, pair: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> None:
    behaviour, events, codes = MID_STREAM_CASES[case]
    fake_openai.then(behaviour)
    status, headers, blocks = await stream(pair)
    assert status == 200 and headers["X-AnyRouter-Provider"] == "primary"
    chunks = data_events(blocks)
    assert len(chunks) == events + 1
    assert all("choices" in c for c in chunks[:-1])  # the first events reached the client
    assert streamed_text(blocks).startswith("tok0 tok1 ")
    error = chunks[-1]["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["code"] in codes and "primary" in error["message"]
    assert blocks[-2].startswith(b'data: {"error"')
    assert blocks[-1] == b"data: [DONE]"
    assert len(fake_openai.requests) == 1  # only one upstream request...
    assert fake_backup.requests == []  # ...and no fallback to the backup
    row = await generation(pair, headers["X-AnyRouter-Generation-Id"])
    assert [a["provider"] for a in row["attempts"]] == ["primary"]


async def test_mid_stream_failure_on_messages_is_an_error_event(
        pair: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(drop_after=2, chunk_delay_s=0.05))
    body = {"model": "m", "max_tokens": 50, "stream": True,
            "messages": [{"role": "user", "content": "hi"}]}
    async with aiohttp.ClientSession() as session, session.post(
            pair.url("/api/v1/messages"), json=body, headers=auth()) as response:
        assert response.status == 200
        blocks = [b for b in (await response.read()).split(b"\n\n") if b]
    assert blocks[0].startswith(b"event: message_start")
    assert any(b"tok0" in b for b in blocks)
    name, data = blocks[-1].split(b"\n", 1)
    assert name == b"event: error"
    error = json.loads(data.removeprefix(b"data: "))
    assert error["type"] == "error" and error["error"]["code"] in (
        "upstream_error", "upstream_invalid_response")
    assert len(fake_openai.requests) == 1 and fake_backup.requests == []


async def test_mid_stream_error_raises_in_the_sdk_after_the_first_chunks(
        pair: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(error_event_after=2, chunk_delay_s=0.05))
    received: list[str] = []
    async with sdk(pair) as client:
        response = await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "hi"}], stream=True)
        with pytest.raises(openai.APIError) as info:
            async for chunk in response:
                received.append(chunk.choices[0].delta.content or "")
    assert "".join(received) == "tok0 tok1 "
    assert "upstream exploded" in info.value.message
    assert len(fake_openai.requests) == 1 and fake_backup.requests == []


async def test_total_timeout_mid_stream_is_final_event(config_factory: ConfigFactory,
                                                       start_proxy: StartProxy,
                                                       fake_openai: FakeOpenAI,
                                                       fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, {"total_s": 0.4}),
        "backup": fake_provider(fake_backup)})
    fake_openai.then(Behaviour(chunks=40, chunk_delay_s=0.05))
    status, _, blocks = await stream(proxy)
    assert status == 200
    chunks = data_events(blocks)
    assert len(chunks) > 2 and chunks[-1]["error"]["code"] == "upstream_timeout"
    assert blocks[-1] == b"data: [DONE]"
    assert fake_backup.requests == []


# -- provider choice: header and request preferences ----------------------------------------


async def test_header_forces_a_provider(pair: Proxy, fake_openai: FakeOpenAI,
                                        fake_backup: FakeOpenAI) -> None:
    async with sdk(pair) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}],
            extra_headers={"X-AnyRouter-Provider": "backup"})
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert fake_openai.requests == [] and len(fake_backup.requests) == 1
    assert (await generation(pair, raw.parse().id))["provider_name"] == "backup"


async def test_forced_provider_does_not_fail_over(pair: Proxy, fake_openai: FakeOpenAI,
                                                  fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=500), Behaviour(status=500))
    status, _, body = await post(pair, headers={"X-AnyRouter-Provider": "primary"})
    assert status == 502 and body["error"]["metadata"]["provider_name"] == "primary"
    assert fake_backup.requests == []


@pytest.mark.parametrize("forced", ["nope", "third"])
async def test_forced_provider_unknown_or_not_serving_is_400(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI, fake_third: FakeOpenAI, forced: str) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup),
        "third": fake_provider(fake_third)}, models={
        "m": {"routes": routes("primary", "backup")},
        "other": {"routes": routes("third")}})
    for streamed in (False, True):
        status, _, body = await post(proxy, {**CHAT, "stream": streamed},
                                     headers={"X-AnyRouter-Provider": forced})
        assert status == 400
        error = body["error"]
        assert (error["type"], error["code"]) == ("invalid_request_error",
                                                  "provider_not_available")
        assert forced in error["message"] and "allowed: primary, backup" in error["message"]
        assert error["param"] == "X-AnyRouter-Provider"
    assert fake_openai.requests == fake_backup.requests == fake_third.requests == []


@pytest.mark.parametrize(("prefs", "served_by"), [
    ({"order": ["backup", "primary"]}, "backup"),
    ({"order": ["backup"]}, "backup"),
    ({"only": ["backup"]}, "backup"),
    ({"ignore": ["primary"]}, "backup"),
    ({"order": ["nope"], "allow_fallbacks": True}, "primary"),
    ({"allow_fallbacks": False}, "primary"),
])
async def test_request_provider_preferences(pair: Proxy, fake_openai: FakeOpenAI,
                                            fake_backup: FakeOpenAI, prefs: dict[str, Any],
                                            served_by: str) -> None:
    async with sdk(pair) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "hi"}],
            extra_body={"provider": prefs})
    assert raw.headers["X-AnyRouter-Provider"] == served_by
    upstream = (fake_openai.requests + fake_backup.requests)
    assert len(upstream) == 1
    assert "provider" not in upstream[0].body  # the gateway's field never goes upstream
    assert upstream[0].body["messages"] == [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("prefs", [{"only": ["backup"]}, {"ignore": ["primary"]},
                                   {"order": ["backup"], "allow_fallbacks": False}])
async def test_preferences_exclude_the_others_on_failure(pair: Proxy, fake_openai: FakeOpenAI,
                                                         fake_backup: FakeOpenAI,
                                                         prefs: dict[str, Any]) -> None:
    fake_backup.then(Behaviour(status=500), Behaviour(status=500))
    status, _, body = await post(pair, {**CHAT, "provider": prefs})
    assert status == 502 and body["error"]["metadata"]["provider_name"] == "backup"
    assert fake_openai.requests == []


async def test_order_with_fallbacks_falls_back(pair: Proxy, fake_openai: FakeOpenAI,
                                               fake_backup: FakeOpenAI) -> None:
    fake_backup.then(Behaviour(status=500))
    status, headers, body = await post(pair, {**CHAT, "provider": {"order": ["backup"]}})
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "primary")
    assert attempts(await generation(pair, body["id"])) == [("backup", 500), ("primary", 200)]


async def test_sort_price_uses_route_pricing(config_factory: ConfigFactory,
                                             start_proxy: StartProxy, fake_openai: FakeOpenAI,
                                             fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup)},
        [{"provider": "primary", "model": "p", "pricing": {"prompt": 10, "completion": 30}},
         {"provider": "backup", "model": "b", "pricing": {"prompt": 1, "completion": 2}}])
    status, headers, body = await post(proxy, {**CHAT, "provider": {"sort": "price"}})
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    status, headers, _ = await post(proxy)  # without the preference: the config's order
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "primary")
    row = await generation(proxy, body["id"])
    # billed at the backup route's price: 11 prompt tokens at $1/M + 5 completion at $2/M
    assert row["total_cost"] == pytest.approx(21e-6, rel=0.2)


async def test_sort_latency_uses_measured_latency(pair: Proxy, fake_openai: FakeOpenAI,
                                                  fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(delay_s=0.15), Behaviour(delay_s=0.15))
    for forced in ("primary", "primary", "backup"):
        status, _, _ = await post(pair, headers={"X-AnyRouter-Provider": forced})
        assert status == 200
    status, headers, _ = await post(pair, {**CHAT, "provider": {"sort": "latency"}})
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    stats = await providers(pair)
    assert stats["primary"]["latency_ms"]["p50"] > stats["backup"]["latency_ms"]["p50"]


async def test_sort_throughput_uses_measured_throughput(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup)})
    fake_openai.then(Behaviour(chunks=8, chunk_delay_s=0.04))  # slow tokens
    fake_backup.then(Behaviour(chunks=8))  # fast tokens
    for forced in ("primary", "backup"):
        status, _, blocks = await stream(proxy, headers={"X-AnyRouter-Provider": forced})
        assert status == 200 and blocks[-1] == b"data: [DONE]"
    stats = await providers(proxy)
    assert stats["backup"]["throughput_tps"] is not None
    assert stats["primary"]["throughput_tps"] is not None
    status, headers, _ = await post(proxy, {**CHAT, "provider": {"sort": "throughput"}})
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")


@pytest.mark.parametrize(("provider_field", "param"), [
    ("backup", "provider"),
    ({"order": "backup"}, "provider.order"),
    ({"only": [1]}, "provider.only"),
    ({"ignore": "primary"}, "provider.ignore"),
    ({"allow_fallbacks": "no"}, "provider.allow_fallbacks"),
    ({"sort": "cheapest"}, "provider.sort"),
    ({"only": ["nope"]}, "provider"),
])
async def test_malformed_provider_field_is_400(pair: Proxy, fake_openai: FakeOpenAI,
                                               fake_backup: FakeOpenAI, provider_field: Any,
                                               param: str) -> None:
    status, _, body = await post(pair, {**CHAT, "provider": provider_field})
    assert status == 400
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["param"] == param
    assert fake_openai.requests == fake_backup.requests == []


# -- model fallbacks ----------------------------------------------------------------------------


@pytest.fixture
async def two_models(config_factory: ConfigFactory, start_proxy: StartProxy,
                     fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> Proxy:
    return await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup)},
        models={"a": {"routes": routes("primary")}, "b": {"routes": routes("backup")}})


async def test_models_fallback_answers_with_the_next_model(
        two_models: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=500))
    async with sdk(two_models) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model="a", messages=[{"role": "user", "content": "hi"}],
            extra_body={"models": ["b"]})
    completion = raw.parse()
    assert completion.model == "b"
    assert raw.headers["X-AnyRouter-Provider"] == "backup"
    assert len(fake_openai.requests) == 1  # a's provider is not retried before b is tried
    assert fake_backup.requests[0].body["model"] == "backup-model"
    assert "models" not in fake_backup.requests[0].body
    row = await generation(two_models, completion.id)
    assert (row["model"], row["provider_name"]) == ("b", "backup")
    assert attempts(row) == [("primary", 500), ("backup", 200)]


async def test_models_fallback_not_needed_keeps_the_first(two_models: Proxy,
                                                          fake_backup: FakeOpenAI) -> None:
    status, _, body = await post(two_models, {**CHAT, "model": "a", "models": ["b"]})
    assert status == 200 and body["model"] == "a"
    assert fake_backup.requests == []


async def test_models_fallback_streamed(two_models: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=503))
    status, headers, blocks = await stream(two_models, {**CHAT, "model": "a", "models": ["b"]})
    assert status == 200 and headers["X-AnyRouter-Provider"] == "backup"
    assert {c["model"] for c in data_events(blocks)} == {"b"}
    row = await generation(two_models, headers["X-AnyRouter-Generation-Id"])
    assert row["model"] == "b"


async def test_models_field_must_be_a_list(two_models: Proxy) -> None:
    status, _, body = await post(two_models, {**CHAT, "model": "a", "models": "b"})
    assert status == 400 and body["error"]["param"] == "models"


# -- weights --------------------------------------------------------------------------------


async def test_weights_spread_load_within_a_priority(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI) -> None:
    # 20 requests at a time: on a busy machine some took longer than FAST's 0.3 s to the
    # first byte and failed over, which is routing working, not what this test counts.
    roomy = {"first_byte_s": 10, "idle_s": 10}
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, roomy), "backup": fake_provider(fake_backup, roomy)},
        [{"provider": "primary", "model": "p", "priority": 0, "weight": 3},
         {"provider": "backup", "model": "b", "priority": 0, "weight": 1}])
    # A seeded draw keeps the test deterministic; the config's weights do the rest.
    proxy.gateway._draw = random.Random(3).random
    async with aiohttp.ClientSession() as session:
        async def one() -> str:
            async with session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                                    headers=auth()) as response:
                assert response.status == 200
                return response.headers["X-AnyRouter-Provider"]

        served: list[str] = []
        for _ in range(10):
            served += await asyncio.gather(*(one() for _ in range(20)))
    assert served.count("primary") == len(fake_openai.requests)
    assert served.count("backup") == len(fake_backup.requests) > 0
    assert 2 <= served.count("primary") / served.count("backup") <= 4.5


async def test_priority_outranks_weight(config_factory: ConfigFactory, start_proxy: StartProxy,
                                        fake_openai: FakeOpenAI,
                                        fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup)},
        [{"provider": "primary", "model": "p", "priority": 2, "weight": 100},
         {"provider": "backup", "model": "b", "priority": 1, "weight": 1}])
    for _ in range(10):
        status, headers, _ = await post(proxy)
        assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert fake_openai.requests == []


# -- circuit breaker ----------------------------------------------------------------------------


@pytest.fixture
async def breaker_pair(config_factory: ConfigFactory, start_proxy: StartProxy,
                       fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> Proxy:
    """`primary` opens after 2 consecutive failures, for 0.3 s."""
    return await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, circuit={"failures": 2, "cooldown_s": 0.3}),
        "backup": fake_provider(fake_backup)})


async def open_primary(proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=500), Behaviour(status=500))
    for _ in range(2):
        status, headers, _ = await post(proxy)
        assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert len(fake_openai.requests) == 2


async def test_breaker_opens_skips_then_probe_closes(breaker_pair: Proxy,
                                                     fake_openai: FakeOpenAI,
                                                     fake_backup: FakeOpenAI) -> None:
    proxy = breaker_pair
    stats = await providers(proxy)
    assert (stats["primary"]["circuit"], stats["primary"]["status"]) == ("closed", "ok")
    await open_primary(proxy, fake_openai)
    opened_at = time.monotonic()

    stats = await providers(proxy)
    assert (stats["primary"]["circuit"], stats["primary"]["status"]) == ("open",
                                                                         "circuit_open")
    assert stats["primary"]["consecutive_failures"] == 2
    assert (stats["backup"]["circuit"], stats["backup"]["status"]) == ("closed", "ok")
    assert await circuit_gauges(proxy) == {"primary": 2.0, "backup": 0.0}
    status, body = await get(proxy, "/api/v1/health", headers={})
    assert status == 200 and body["providers"]["primary"]["circuit"] == "open"

    # Open: skipped without being contacted.
    status, headers, body = await post(proxy)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert len(fake_openai.requests) == 2
    assert attempts(await generation(proxy, body["id"])) == [("backup", 200)]
    assert time.monotonic() - opened_at < 0.3, "the test was too slow to see the open state"

    # After the cooldown: the next real request probes it, and its success closes it.
    await asyncio.sleep(0.35)
    stats = await providers(proxy)
    assert (stats["primary"]["circuit"], stats["primary"]["status"]) == ("half_open", "ok")
    status, headers, _ = await post(proxy)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "primary")
    assert len(fake_openai.requests) == 3
    stats = await providers(proxy)
    assert (stats["primary"]["circuit"], stats["primary"]["status"]) == ("closed", "ok")
    assert stats["primary"]["consecutive_failures"] == 0
    assert await circuit_gauges(proxy) == {"primary": 0.0, "backup": 0.0}


async def test_failed_probe_reopens(breaker_pair: Proxy, fake_openai: FakeOpenAI,
                                    fake_backup: FakeOpenAI) -> None:
    proxy = breaker_pair
    await open_primary(proxy, fake_openai)
    await asyncio.sleep(0.35)
    fake_openai.then(Behaviour(status=503))
    status, headers, _ = await post(proxy)  # the probe fails; the backup answers
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    assert len(fake_openai.requests) == 3
    assert (await providers(proxy))["primary"]["circuit"] == "open"
    status, headers, _ = await post(proxy)  # open again: skipped
    assert headers["X-AnyRouter-Provider"] == "backup" and len(fake_openai.requests) == 3


async def test_half_open_lets_exactly_one_probe_through(breaker_pair: Proxy,
                                                        fake_openai: FakeOpenAI,
                                                        fake_backup: FakeOpenAI) -> None:
    proxy = breaker_pair
    await open_primary(proxy, fake_openai)
    await asyncio.sleep(0.35)
    backup_before = len(fake_backup.requests)
    fake_openai.then(Behaviour(delay_s=0.15))  # a slow probe
    results = await asyncio.gather(*(post(proxy) for _ in range(3)))
    served = sorted(headers["X-AnyRouter-Provider"] for _, headers, _ in results)
    assert served == ["backup", "backup", "primary"]
    assert len(fake_openai.requests) == 3  # one probe, not three
    assert len(fake_backup.requests) == backup_before + 2


async def test_rate_limits_and_request_faults_do_not_open_the_breaker(
        breaker_pair: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=429), Behaviour(status=400), Behaviour(status=429),
                     Behaviour(status=422))
    for _ in range(4):
        await post(breaker_pair)
    stats = await providers(breaker_pair)
    assert stats["primary"]["circuit"] == "closed"


async def test_every_breaker_open_is_503_no_provider_available(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
        fake_backup: FakeOpenAI) -> None:
    circuit = {"failures": 1, "cooldown_s": 30}
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, circuit=circuit),
        "backup": fake_provider(fake_backup, circuit=circuit)}, server={"retries": 0})
    status, body = await get(proxy, "/api/v1/health", headers={})
    assert status == 200 and body["status"] == "ok"
    fake_openai.then(Behaviour(status=500))
    fake_backup.then(Behaviour(status=502))
    status, _, _ = await post(proxy)
    assert status == 502

    status, body = await get(proxy, "/api/v1/health", headers={})
    assert status == 503
    assert body["error"]["code"] == "no_provider_available"
    assert body["error"]["type"] == "service_unavailable"
    assert {p: s["status"] for p, s in body["providers"].items()} == {
        "primary": "circuit_open", "backup": "circuit_open"}
    assert await circuit_gauges(proxy) == {"primary": 2.0, "backup": 2.0}

    for streamed in (False, True):
        status, _, body = await post(proxy, {**CHAT, "stream": streamed})
        assert status == 503
        error = body["error"]
        assert (error["type"], error["code"]) == ("service_unavailable", "no_provider_available")
        assert "primary: circuit open" in error["message"]
        assert "backup: circuit open" in error["message"]
        assert error["metadata"]["skipped"] == ["primary: circuit open", "backup: circuit open"]
    assert len(fake_openai.requests) == len(fake_backup.requests) == 1


async def test_streams_breaking_mid_way_open_the_breaker(breaker_pair: Proxy,
                                                         fake_openai: FakeOpenAI,
                                                         fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(error_event_after=1, chunk_delay_s=0.02),
                     Behaviour(error_event_after=1, chunk_delay_s=0.02))
    for _ in range(2):
        status, headers, blocks = await stream(breaker_pair)
        assert (status, headers["X-AnyRouter-Provider"]) == (200, "primary")
        assert blocks[-2].startswith(b'data: {"error"')
    stats = await providers(breaker_pair)
    assert stats["primary"]["circuit"] == "open"
    assert stats["primary"]["uptime"]["5m"] == 0.0  # two requests, both failed


# -- the final error when every route fails -----------------------------------------------------


@pytest.fixture
async def trio(config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI,
               fake_backup: FakeOpenAI, fake_third: FakeOpenAI) -> Proxy:
    return await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup),
        "third": fake_provider(fake_third)}, server={"retries": 0, "retry_slow_answers": True})


async def final_failure(proxy: Proxy) -> tuple[int, dict[str, str], dict[str, Any]]:
    status, headers, body = await post(proxy)
    assert status >= 400
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert error["metadata"]["attempts"] == ["primary", "backup", "third"]
    for pid in ("primary", "backup", "third"):
        assert pid in error["message"]
    return status, headers, error


async def test_all_rate_limited_is_429(trio: Proxy, fake_openai: FakeOpenAI,
                                       fake_backup: FakeOpenAI, fake_third: FakeOpenAI) -> None:
    for fake in (fake_openai, fake_backup, fake_third):
        fake.then(Behaviour(status=429, headers={"Retry-After": "2"}))
    status, headers, error = await final_failure(trio)
    assert (status, error["type"], error["code"]) == (429, "rate_limit_error",
                                                      "upstream_rate_limited")
    assert headers["Retry-After"] == "2"


async def test_upstream_rate_limited_429_always_has_retry_after(
        trio: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        fake_third: FakeOpenAI) -> None:
    for fake in (fake_openai, fake_backup, fake_third):
        fake.then(Behaviour(status=429))
    status, headers, _ = await final_failure(trio)
    assert status == 429
    assert headers.get("Retry-After", "").isdigit()


async def test_all_timed_out_is_504(trio: Proxy, fake_openai: FakeOpenAI,
                                    fake_backup: FakeOpenAI, fake_third: FakeOpenAI) -> None:
    for fake in (fake_openai, fake_backup, fake_third):
        fake.then(Behaviour(delay_s=1))
    status, _, error = await final_failure(trio)
    assert (status, error["type"], error["code"]) == (504, "timeout_error", "upstream_timeout")


async def test_mixed_failures_are_502_listing_every_attempt(
        trio: Proxy, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        fake_third: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=500))
    fake_backup.then(Behaviour(delay_s=1))
    fake_third.then(Behaviour(status=429))
    status, _, error = await final_failure(trio)
    assert (status, error["type"], error["code"]) == (502, "upstream_error", "upstream_error")
    assert "primary (502 upstream_error)" in error["message"]
    assert "backup (504 upstream_timeout)" in error["message"]
    assert "third (429 upstream_rate_limited)" in error["message"]


async def test_failed_request_keeps_its_attempts(config_factory: ConfigFactory,
                                                 start_proxy: StartProxy,
                                                 fake_openai: FakeOpenAI,
                                                 fake_backup: FakeOpenAI) -> None:
    proxy = await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai), "backup": fake_provider(fake_backup),
        "dead": refused_provider()}, server={"retries": 0, "retry_slow_answers": True})
    fake_openai.then(Behaviour(status=503))
    fake_backup.then(Behaviour(delay_s=1))
    status, headers, body = await post(proxy)
    assert status == 502
    assert body["error"]["metadata"]["attempts"] == ["primary", "backup", "dead"]
    recorded = (await generation(proxy, headers["X-AnyRouter-Generation-Id"]))["attempts"]
    assert [(a["provider"], a["status"]) for a in recorded] == [
        ("primary", 503), ("backup", "timeout"), ("dead", "error")]
    assert all(isinstance(a["latency_ms"], int | float) for a in recorded)
    assert recorded[1]["latency_ms"] >= 250  # the first-byte timeout of 0.3 s


# -- client disconnects cancel the upstream --------------------------------------------------


@pytest.fixture
async def patient_pair(config_factory: ConfigFactory, start_proxy: StartProxy,
                       fake_openai: FakeOpenAI, fake_backup: FakeOpenAI) -> Proxy:
    slow = {"first_byte_s": 10, "idle_s": 10}
    return await start(config_factory, start_proxy, {
        "primary": fake_provider(fake_openai, slow), "backup": fake_provider(fake_backup, slow)},
        server={"sse_keepalive_interval_s": 0.05})


async def test_disconnect_cancels_non_stream_upstream(patient_pair: Proxy,
                                                      fake_openai: FakeOpenAI,
                                                      fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(delay_s=5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(patient_pair.url("/api/v1/chat/completions"), json=CHAT,
                                   headers=auth())
    assert await eventually(lambda: fake_openai.cancelled == 1) < 1
    assert fake_backup.requests == []  # a client that left is not failed over


async def test_disconnect_mid_stream_cancels_upstream(patient_pair: Proxy,
                                                      fake_openai: FakeOpenAI,
                                                      fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=100, chunk_delay_s=0.05))
    async with aiohttp.ClientSession() as session:
        response = await session.post(patient_pair.url("/api/v1/chat/completions"),
                                      json={**CHAT, "stream": True}, headers=auth())
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()
        assert await eventually(lambda: fake_openai.cancelled == 1) < 1
    assert fake_openai.completed == 0 and fake_backup.requests == []
    row = await generation(patient_pair, response.headers["X-AnyRouter-Generation-Id"])
    assert row["cancelled"] is True


async def test_disconnect_before_first_event_cancels_upstream(patient_pair: Proxy,
                                                              fake_openai: FakeOpenAI,
                                                              fake_backup: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(first_event_delay_s=5))
    async with aiohttp.ClientSession() as session:
        response = await session.post(patient_pair.url("/api/v1/chat/completions"),
                                      json={**CHAT, "stream": True}, headers=auth())
        assert (await response.content.readline()).startswith(b": ANYROUTER PROCESSING")
        response.close()
        assert await eventually(lambda: fake_openai.cancelled == 1) < 1
    assert fake_backup.requests == []


# -- /providers stats ---------------------------------------------------------------------------


async def test_providers_report_recent_stats(pair: Proxy, fake_openai: FakeOpenAI,
                                             fake_backup: FakeOpenAI) -> None:
    stats = await providers(pair)
    assert stats["primary"]["uptime"] == {"5m": None, "30m": None, "1d": None}
    assert stats["primary"]["latency_ms"] is None and stats["primary"]["ttft_ms"] is None

    fake_openai.then(Behaviour(status=500), Behaviour(delay_s=0.05))
    for _ in range(4):
        assert (await post(pair))[0] == 200
    for _ in range(2):
        assert (await stream(pair))[0] == 200
    stats = await providers(pair)
    primary = stats["primary"]
    assert primary["uptime"] == {"5m": 83.33, "30m": 83.33, "1d": 83.33}  # 5 of 6
    latency, ttft = primary["latency_ms"], primary["ttft_ms"]
    assert set(latency) == set(ttft) == {"p50", "p90", "p99"}
    assert 0 < latency["p50"] <= latency["p90"] <= latency["p99"]
    assert latency["p99"] >= 50  # the slow answer
    assert 0 < ttft["p50"] <= ttft["p99"]
    assert stats["backup"]["uptime"]["5m"] == 100.0  # served the first request
    assert stats["backup"]["models"] == ["m"]
    assert PROVIDER_KEY not in json.dumps(stats)


async def test_provider_ttft_excludes_other_providers_time(pair: Proxy,
                                                           fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(first_event_delay_s=1))  # times out after 0.3 s
    status, headers, _ = await stream(pair)
    assert (status, headers["X-AnyRouter-Provider"]) == (200, "backup")
    backup = (await providers(pair))["backup"]
    assert backup["ttft_ms"]["p50"] < 250  # the backup answered at once
