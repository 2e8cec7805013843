"""End to end: usage rows, GET /generation, the audit trail and `anyrouter-proxy usage`.

Rows are compared with what the FakeOpenAI upstream reported; the SQLite file is read
directly (sqlite3) where the HTTP API does not expose a table (audit) or an id.
"""

from __future__ import annotations

import asyncio
import contextlib
import csv
import datetime as dt
import io
import json
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.reload import reload_config
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import EMBEDDING_USAGE, USAGE, Behaviour, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

MODEL = "openai/gpt-4o-mini"
EMBEDDING_MODEL = "openai/text-embedding-3-small"
MESSAGES = [{"role": "user", "content": "hi"}]
CHAT: dict[str, Any] = {"model": MODEL, "messages": MESSAGES}
# The openai_proxy fixture's prices (USD per 1M tokens).
PROMPT_PRICE, COMPLETION_PRICE, CACHED_PRICE, EMBEDDING_PRICE = 0.15, 0.60, 0.075, 0.02


def chat_cost(prompt: int, completion: int, cached: int = 0) -> float:
    return ((prompt - cached) * PROMPT_PRICE + cached * CACHED_PRICE
            + completion * COMPLETION_PRICE) / 1_000_000


@contextlib.asynccontextmanager
async def sdk(proxy: Proxy, key: str = ALICE_KEY) -> AsyncIterator[openai.AsyncOpenAI]:
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=key, max_retries=0)
    try:
        yield client
    finally:
        await client.close()


async def post(proxy: Proxy, body: dict[str, Any], *, key: str = ALICE_KEY,
               headers: dict[str, str] | None = None, path: str = "/api/v1/chat/completions"
               ) -> tuple[int, dict[str, str], bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url(path), json=body, headers={**auth(key), **(headers or {})}) as response:
        return response.status, dict(response.headers), await response.read()


async def generation(proxy: Proxy, gen_id: str, key: str = ALICE_KEY,
                     path: str | None = None) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path or f"/api/v1/generation/{gen_id}"), headers=auth(key)) as response:
        assert response.content_type == "application/json"
        return response.status, await response.json()


async def generation_eventually(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    """For requests whose end the client did not wait for (it went away)."""
    deadline = time.monotonic() + 5
    while True:
        status, body = await generation(proxy, gen_id)
        if status == 200:
            return body["data"]  # type: ignore[no-any-return]
        assert status == 404 and time.monotonic() < deadline, body
        await asyncio.sleep(0.05)


def db_rows(proxy: Proxy, sql: str, params: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
    db = sqlite3.connect(proxy.config.storage.sqlite_path)
    try:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute(sql, params).fetchall()]
    finally:
        db.close()


async def rows_by_trace(proxy: Proxy, trace_id: str) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 5
    while True:
        await proxy.flush()
        rows = db_rows(proxy, "SELECT * FROM generations WHERE trace_id = ?", (trace_id,))
        if rows or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.05)


def fail_every_try(proxy: Proxy, fake: FakeOpenAI) -> int:
    """Script a 500 for the first try and every retry (server.retries); returns the tries."""
    tries = proxy.config.server.retries + 1
    fake.then(*[Behaviour(status=500) for _ in range(tries)])
    return tries


def assert_iso_utc(text: str, not_before: float, not_after: float) -> None:
    assert text.endswith("Z") or text.endswith("+00:00"), text
    moment = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    assert moment.utcoffset() == dt.timedelta(0)
    assert not_before - 1 <= moment.timestamp() <= not_after + 1


def assert_attempts(attempts: Any, statuses: list[int | str]) -> None:
    assert isinstance(attempts, list)
    assert [a["provider"] for a in attempts] == ["openai"] * len(statuses)
    assert [a["status"] for a in attempts] == statuses
    assert all(isinstance(a["latency_ms"], int | float) and a["latency_ms"] >= 0
               for a in attempts)


# -- rows and GET /generation ------------------------------------------------------------


async def test_non_stream_row_matches_upstream_usage(openai_proxy: Proxy,
                                                     fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(delay_s=0.05))
    before = time.time()
    async with sdk(openai_proxy) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, extra_headers={"X-AnyRouter-Trace-Id": "trace-ns"})
    after = time.time()
    completion = raw.parse()
    gen_id = raw.headers["X-AnyRouter-Generation-Id"]
    assert gen_id == completion.id and gen_id.startswith("gen-")
    assert raw.headers["X-AnyRouter-Trace-Id"] == "trace-ns"

    status, body = await generation(openai_proxy, gen_id)
    assert status == 200
    row = body["data"]
    cached = USAGE["prompt_tokens_details"]["cached_tokens"]  # type: ignore[index]
    assert row["id"] == gen_id
    assert row["model"] == MODEL
    assert row["provider_name"] == "openai"
    assert row["upstream_model"] == "gpt-4o-mini"
    assert row["upstream_id"] == "chatcmpl-openai-1"
    assert row["tokens_prompt"] == USAGE["prompt_tokens"]
    assert row["tokens_completion"] == USAGE["completion_tokens"]
    assert row["native_tokens_cached"] == cached
    assert row["native_tokens_reasoning"] == 0
    expected = chat_cost(USAGE["prompt_tokens"], USAGE["completion_tokens"],  # type: ignore[arg-type]
                         cached)
    assert row["total_cost"] == pytest.approx(expected, rel=1e-9)
    assert completion.usage is not None
    assert row["total_cost"] == pytest.approx(completion.usage.model_dump()["cost"], rel=1e-9)
    assert row["streamed"] is False
    assert row["cancelled"] is False
    assert row["finish_reason"] == "stop"
    assert row["status_code"] == 200
    assert row["error_code"] is None
    assert row["usage_source"] == "provider"
    assert row["trace_id"] == "trace-ns"
    assert_iso_utc(row["created_at"], before, after)
    assert_attempts(row["attempts"], [200])
    assert row["attempts"][0]["latency_ms"] >= 50
    assert row["latency"] >= 50  # ms; the fake waited 50 ms


async def test_stream_row_matches_upstream_usage(openai_proxy: Proxy,
                                                 fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=4, chunk_delay_s=0.02))
    before = time.time()
    async with sdk(openai_proxy) as client:
        raw = await client.chat.completions.with_raw_response.create(
            model=MODEL, messages=MESSAGES, stream=True,
            extra_headers={"X-AnyRouter-Trace-Id": "trace-stream"})
        gen_id = raw.headers["X-AnyRouter-Generation-Id"]
        stream = raw.parse()
        chunks = [chunk async for chunk in stream]
    after = time.time()
    assert {c.id for c in chunks} == {gen_id}

    status, body = await generation(openai_proxy, gen_id)
    assert status == 200
    row = body["data"]
    # The fake's stream usage: USAGE's prompt side, one completion token per chunk.
    assert row["tokens_prompt"] == USAGE["prompt_tokens"]
    assert row["tokens_completion"] == 4
    assert row["native_tokens_cached"] == 3
    assert row["total_cost"] == pytest.approx(chat_cost(11, 4, 3), rel=1e-9)
    assert row["provider_name"] == "openai"
    assert row["model"] == MODEL
    assert row["streamed"] is True
    assert row["cancelled"] is False
    assert row["finish_reason"] == "stop"
    assert row["status_code"] == 200
    assert row["usage_source"] == "provider"
    assert row["trace_id"] == "trace-stream"
    assert_iso_utc(row["created_at"], before, after)
    assert_attempts(row["attempts"], [200])
    assert row["latency"] >= 60  # four chunks 20 ms apart
    assert row["time_to_first_token"] is not None
    assert row["generation_time"] is not None and row["generation_time"] >= 0


async def test_embeddings_row(openai_proxy: Proxy) -> None:
    async with sdk(openai_proxy) as client:
        raw = await client.embeddings.with_raw_response.create(model=EMBEDDING_MODEL,
                                                              input="hello")
    gen_id = raw.headers["X-AnyRouter-Generation-Id"]
    status, body = await generation(openai_proxy, gen_id)
    assert status == 200
    row = body["data"]
    assert row["endpoint"] == "embeddings"
    assert row["tokens_prompt"] == EMBEDDING_USAGE["prompt_tokens"]
    assert row["tokens_completion"] == 0
    assert row["total_cost"] == pytest.approx(
        EMBEDDING_USAGE["prompt_tokens"] * EMBEDDING_PRICE / 1_000_000, rel=1e-9)


async def test_generation_lookup_forms_and_isolation(openai_proxy: Proxy) -> None:
    status, headers, _ = await post(openai_proxy, CHAT)
    assert status == 200
    gen_id = headers["X-AnyRouter-Generation-Id"]
    by_path = await generation(openai_proxy, gen_id)
    by_query = await generation(openai_proxy, gen_id, path=f"/api/v1/generation?id={gen_id}")
    by_v1 = await generation(openai_proxy, gen_id, path=f"/v1/generation/{gen_id}")
    assert by_path[0] == by_query[0] == by_v1[0] == 200
    assert by_path[1] == by_query[1] == by_v1[1]

    for path in (None, f"/api/v1/generation?id={gen_id}"):
        status, body = await generation(openai_proxy, gen_id, key=BOB_KEY, path=path)
        assert status == 404
        assert body["error"]["code"] == "generation_not_found"
        assert body["error"]["type"] == "not_found_error"
        assert "alice" not in json.dumps(body)
    status, body = await generation(openai_proxy, "gen-000000000000000000000000")
    assert status == 404 and body["error"]["code"] == "generation_not_found"
    status, body = await generation(openai_proxy, "", path="/api/v1/generation")
    assert status == 400 and body["error"]["param"] == "id"


async def test_generation_readable_immediately(config_factory: ConfigFactory,
                                               fake_openai: FakeOpenAI,
                                               start_proxy: StartProxy) -> None:
    """The writer lingers up to flush_interval_s (here 5 s) to fill batches; a lookup of a
    just-finished id makes it write at once instead of answering 404."""
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        storage={"flush_interval_s": 5}))
    for body in (CHAT, {**CHAT, "stream": True}):
        status, headers, _ = await post(proxy, body)
        assert status == 200
        started = time.monotonic()
        status, data = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
        assert status == 200, data
        assert data["data"]["streamed"] is body.get("stream", False)
        assert time.monotonic() - started < 1.0


async def test_cancelled_stream_row(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=50, chunk_delay_s=0.1))
    async with aiohttp.ClientSession() as session:
        response = await session.post(openai_proxy.url("/api/v1/chat/completions"),
                                      json={**CHAT, "stream": True}, headers=auth())
        gen_id = response.headers["X-AnyRouter-Generation-Id"]
        assert (await response.content.readline()).startswith(b"data: ")
        response.close()
    row = await generation_eventually(openai_proxy, gen_id)
    assert row["cancelled"] is True
    assert row["status_code"] == 499
    assert row["streamed"] is True
    assert row["provider_name"] == "openai"
    # The upstream never got to its usage chunk: the proxy estimated it.
    assert row["usage_source"] == "estimated"
    assert row["tokens_completion"] >= 1
    assert row["total_cost"] > 0
    assert_attempts(row["attempts"], [200])


async def test_cancelled_non_stream_row(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(delay_s=5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(openai_proxy.url("/api/v1/chat/completions"), json=CHAT,
                                   headers={**auth(), "X-AnyRouter-Trace-Id": "trace-gone"})
    rows = await rows_by_trace(openai_proxy, "trace-gone")
    assert len(rows) == 1
    row = rows[0]
    assert (row["cancelled"], row["status_code"], row["streamed"]) == (1, 499, 0)
    assert row["provider"] == "openai"


async def test_upstream_failure_row_has_the_error_code(openai_proxy: Proxy,
                                                       fake_openai: FakeOpenAI) -> None:
    tries = fail_every_try(openai_proxy, fake_openai)
    status, headers, _ = await post(openai_proxy, CHAT,
                                    headers={"X-AnyRouter-Trace-Id": "trace-500"})
    assert status == 502
    rows = await rows_by_trace(openai_proxy, "trace-500")
    assert len(rows) == 1
    row = rows[0]
    assert (row["status_code"], row["error_code"], row["cancelled"]) == (502, "upstream_error", 0)
    assert row["provider"] == "openai"
    assert_attempts(json.loads(row["attempts"]), [500] * tries)
    # The failed request carries its generation id, and the row is readable.
    assert headers["X-AnyRouter-Generation-Id"] == row["id"]
    status, body = await generation(openai_proxy, row["id"])
    assert status == 200
    assert (body["data"]["status_code"], body["data"]["error_code"]) == (502, "upstream_error")
    assert body["data"]["trace_id"] == "trace-500"


async def test_upstream_400_row(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=400, body={"error": {
        "message": "temperature too high", "type": "invalid_request_error",
        "param": "temperature", "code": "invalid_value"}}))
    status, headers, raw = await post(openai_proxy, {**CHAT, "temperature": 9})
    assert status == 400
    assert json.loads(raw)["error"]["message"] == "temperature too high"
    status, body = await generation(openai_proxy, headers["X-AnyRouter-Generation-Id"])
    assert status == 200
    assert (body["data"]["status_code"], body["data"]["error_code"]) == (400, "invalid_value")
    assert_attempts(body["data"]["attempts"], [400])


async def test_upstream_error_costs_nothing(openai_proxy: Proxy,
                                            fake_openai: FakeOpenAI) -> None:
    fail_every_try(openai_proxy, fake_openai)
    status, _, _ = await post(openai_proxy, CHAT, headers={"X-AnyRouter-Trace-Id": "trace-free"})
    assert status == 502
    rows = await rows_by_trace(openai_proxy, "trace-free")
    assert len(rows) == 1
    assert rows[0]["cost"] == 0
    async with aiohttp.ClientSession() as session, session.get(
            openai_proxy.url("/api/v1/credits"), headers=auth()) as response:
        assert (await response.json())["data"]["total_usage"] == 0


async def test_stream_error_event_row(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(error_event_after=2))
    status, headers, raw = await post(openai_proxy, {**CHAT, "stream": True})
    assert status == 200 and raw.endswith(b"data: [DONE]\n\n")
    status, body = await generation(openai_proxy, headers["X-AnyRouter-Generation-Id"])
    assert status == 200
    row = body["data"]
    assert row["status_code"] == 502 and row["error_code"] == "upstream_error"
    assert row["cancelled"] is False and row["streamed"] is True


def rejecting_config(config_factory: ConfigFactory, fake: FakeOpenAI) -> Config:
    """alice may make one request a minute; bob's credit covers nothing."""
    return config_factory(
        providers={"openai": openai_provider(fake)},
        models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY),
                        "limits": {"requests_per_minute": 1}},
              "bob": {"key_sha256": sha256(BOB_KEY), "credits": 0.000001}})


async def rejected_requests(proxy: Proxy) -> dict[str, dict[str, str]]:
    """A 429 (trace t-429) and a 402 (trace t-402), by trace id: their response headers."""
    assert (await post(proxy, CHAT))[0] == 200
    status, headers_429, _ = await post(proxy, CHAT, headers={"X-AnyRouter-Trace-Id": "t-429"})
    assert status == 429
    status, headers_402, _ = await post(proxy, CHAT, key=BOB_KEY,
                                        headers={"X-AnyRouter-Trace-Id": "t-402"})
    assert status == 402
    return {"t-429": headers_429, "t-402": headers_402}


async def test_rejections_before_upstream_are_audited_not_billed(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    """gateway._open_books: a request refused by a limit or by credits never goes upstream,
    spends nothing and leaves an audit event."""
    proxy = await start_proxy(rejecting_config(config_factory, fake_openai))
    rejected = await rejected_requests(proxy)
    assert len(fake_openai.requests) == 1
    await proxy.flush()
    for trace, headers in rejected.items():
        assert headers["X-AnyRouter-Generation-Id"].startswith("gen-")
        rows = db_rows(proxy, "SELECT * FROM generations WHERE trace_id = ?", (trace,))
        assert all(row["cost"] == 0 for row in rows)
    events = {row["event"]: row for row in db_rows(proxy, "SELECT * FROM audit")}
    assert events["rate_limited"]["trace_id"] == "t-429"
    assert events["insufficient_credits"]["trace_id"] == "t-402"
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/api/v1/credits"), headers=auth(BOB_KEY)) as response:
        assert (await response.json())["data"]["total_usage"] == 0


async def test_rejected_requests_generation_id_resolves(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(rejecting_config(config_factory, fake_openai))
    rejected = await rejected_requests(proxy)
    for trace, key, status, code in (("t-429", ALICE_KEY, 429, "rate_limited"),
                                     ("t-402", BOB_KEY, 402, "insufficient_credits")):
        got, body = await generation(proxy, rejected[trace]["X-AnyRouter-Generation-Id"], key)
        assert got == 200, body
        row = body["data"]
        assert (row["status_code"], row["error_code"], row["trace_id"]) == (status, code, trace)
        assert row["total_cost"] == 0 and row["attempts"] == []


# -- audit ------------------------------------------------------------------------------


async def test_audit_trail(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                           start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY),
                        "limits": {"requests_per_minute": 2}},
              "bob": {"key_sha256": sha256(BOB_KEY), "credits": 0.000001}}))
    wrong_key = "sk-ar-wrong-0123456789abcdefghijklmnopqrstuv"
    status, _, _ = await post(proxy, CHAT, key=wrong_key,
                              headers={"X-AnyRouter-Trace-Id": "t-auth"})
    assert status == 401
    status, headers, _ = await post(proxy, CHAT, headers={"X-AnyRouter-Trace-Id": "t-forced",
                                                          "X-AnyRouter-Provider": "openai"})
    assert status == 200 and headers["X-AnyRouter-Provider"] == "openai"
    assert (await post(proxy, CHAT))[0] == 200
    status, _, _ = await post(proxy, CHAT, headers={"X-AnyRouter-Trace-Id": "t-429"})
    assert status == 429
    status, _, _ = await post(proxy, CHAT, key=BOB_KEY, headers={"X-AnyRouter-Trace-Id": "t-402"})
    assert status == 402
    await proxy.flush()

    rows = db_rows(proxy, "SELECT * FROM audit ORDER BY id")
    for row in rows:
        assert isinstance(row["created_at"], float)
        assert abs(row["created_at"] - time.time()) < 60
        row["detail"] = json.loads(row["detail"])
    by_event = {row["event"]: row for row in rows}
    assert set(by_event) >= {"auth_failed", "forced_provider", "rate_limited",
                             "insufficient_credits"}

    auth_failed = by_event["auth_failed"]
    assert auth_failed["trace_id"] == "t-auth"
    assert auth_failed["key_name"] is None
    prefix = auth_failed["detail"]["key_prefix"]
    assert wrong_key.startswith(prefix) and 0 < len(prefix) <= 12
    dump = json.dumps(rows)
    for secret in (wrong_key, ALICE_KEY, BOB_KEY, sha256(wrong_key), sha256(ALICE_KEY)):
        assert secret not in dump

    forced = by_event["forced_provider"]
    assert (forced["key_name"], forced["trace_id"]) == ("alice", "t-forced")
    assert forced["detail"]["provider"] == "openai" and forced["detail"]["model"] == MODEL

    limited = by_event["rate_limited"]
    assert (limited["key_name"], limited["trace_id"]) == ("alice", "t-429")
    assert limited["detail"]["limit"] == "requests_per_minute"
    assert limited["detail"]["model"] == MODEL

    broke = by_event["insufficient_credits"]
    assert (broke["key_name"], broke["trace_id"]) == ("bob", "t-402")
    assert broke["detail"]["model"] == MODEL


async def test_config_reloads_are_audited(config_factory: ConfigFactory,
                                          fake_openai: FakeOpenAI,
                                          start_proxy: StartProxy) -> None:
    def write_config() -> Config:
        return config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}})

    config = write_config()
    proxy = await start_proxy(config)
    write_config()
    assert reload_config(proxy.app) is True
    assert config.path is not None
    config.path.write_text("version: 1\nproviders: {}\nmodels: 5\n")
    assert reload_config(proxy.app) is False
    assert (await post(proxy, CHAT))[0] == 200  # the running config stays
    await proxy.flush()
    rows = db_rows(proxy, "SELECT event, detail FROM audit WHERE event LIKE 'config%' "
                          "ORDER BY id")
    assert [row["event"] for row in rows] == ["config_reloaded", "config_reload_rejected"]
    problems = json.loads(rows[1]["detail"])["problems"]
    assert problems and any("models" in problem for problem in problems)


# -- the usage CLI ----------------------------------------------------------------------


async def run_cli(*args: str) -> tuple[int, str, str]:
    script = Path(sys.executable).with_name("anyrouter-proxy")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "anyrouter_proxy"]
    proc = await asyncio.create_subprocess_exec(
        *command, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_usage_cli(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    assert (await post(openai_proxy, CHAT))[0] == 200
    assert (await post(openai_proxy, {**CHAT, "stream": True}))[0] == 200
    fail_every_try(openai_proxy, fake_openai)
    assert (await post(openai_proxy, CHAT))[0] == 502
    status, _, _ = await post(openai_proxy, {"model": EMBEDDING_MODEL, "input": "x"},
                              key=BOB_KEY, path="/api/v1/embeddings")
    assert status == 200
    await openai_proxy.flush()
    db = str(openai_proxy.config.storage.sqlite_path)
    rows = db_rows(openai_proxy, "SELECT key_name, model, cost FROM generations")
    assert len(rows) == 4
    alice_cost = sum(r["cost"] for r in rows if r["key_name"] == "alice")
    chat_total = sum(r["cost"] for r in rows if r["model"] == MODEL)
    assert chat_total > 0

    async def report(*args: str) -> list[dict[str, Any]]:
        code, out, err = await run_cli("usage", "--db", db, "--format", "json", *args)
        assert code == 0, err
        return json.loads(out)  # type: ignore[no-any-return]

    by_model = {r["model"]: r for r in await report()}  # by model is the default
    assert set(by_model) == {MODEL, EMBEDDING_MODEL}
    chat = by_model[MODEL]
    assert (chat["requests"], chat["errors"], chat["cancelled"]) == (3, 1, 0)
    # 11 + 11 from the answers; the failed request's prompt is estimated.
    assert chat["tokens_prompt"] >= 22
    assert chat["tokens_completion"] == USAGE["completion_tokens"] + 3  # stream: 3 chunks
    assert chat["tokens_cached"] == 6
    assert chat["cost"] == pytest.approx(chat_total, rel=1e-9)
    assert by_model[EMBEDDING_MODEL]["requests"] == 1
    assert by_model[EMBEDDING_MODEL]["tokens_prompt"] == EMBEDDING_USAGE["prompt_tokens"]

    by_key = {r["key"]: r for r in await report("--by", "key")}
    assert {k: r["requests"] for k, r in by_key.items()} == {"alice": 3, "bob": 1}
    assert by_key["alice"]["cost"] == pytest.approx(alice_cost, rel=1e-9)

    by_provider = await report("--by", "provider")
    assert [(r["provider"], r["requests"]) for r in by_provider] == [("openai", 4)]

    today = dt.datetime.now(dt.UTC).date()
    by_day = await report("--by", "day")
    assert [(r["day"], r["requests"]) for r in by_day] == [(today.isoformat(), 4)]

    yesterday, tomorrow = today - dt.timedelta(days=1), today + dt.timedelta(days=1)
    assert await report("--since", tomorrow.isoformat()) == []
    assert await report("--until", yesterday.isoformat()) == []
    window = await report("--by", "key", "--since", today.isoformat(),
                          "--until", today.isoformat())
    assert sum(r["requests"] for r in window) == 4
    now = dt.datetime.now(dt.UTC)
    recent = await report("--by", "key", "--since",
                          (now - dt.timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S"))
    assert sum(r["requests"] for r in recent) == 4
    assert await report("--since", (now + dt.timedelta(minutes=5)).isoformat()) == []

    code, out, err = await run_cli("usage", "--db", db, "--by", "key", "--format", "csv")
    assert code == 0, err
    lines = list(csv.DictReader(io.StringIO(out)))
    assert {line["key"]: int(line["requests"]) for line in lines} == {"alice": 3, "bob": 1}
    assert float(next(r for r in lines if r["key"] == "alice")["cost"]) == pytest.approx(
        alice_cost, rel=1e-9)

    code, out, err = await run_cli("usage", "--db", db, "--format", "table")
    assert code == 0, err
    table = out.splitlines()
    assert table[0].split()[:2] == ["model", "requests"]
    assert any(line.split()[:2] == [MODEL, "3"] for line in table)
    assert table[-1].split()[:2] == ["TOTAL", "4"]

    # Without --db the database is the config's storage.sqlite_path.
    config_path = openai_proxy.config.path
    assert config_path is not None
    code, out, err = await run_cli("usage", "--config", str(config_path), "--by", "provider",
                                   "--format", "json")
    assert code == 0, err
    assert [(r["provider"], r["requests"]) for r in json.loads(out)] == [("openai", 4)]

    code, _, err = await run_cli("usage", "--db", db, "--since", "yesterday-ish")
    assert code != 0 and "invalid time" in err
