"""Operations: Prometheus metrics, request logs, hot reload,
deprecation headers and API versions.

Metrics are read with prometheus-client's own parser. Logs are read from the stdout of a
real `serve` process. Reloads are driven in-process through `reload_config(app)` and, on
a real process, through SIGHUP and the file watcher.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.reload import reload_config
from anyrouter_proxy.server.state import LIMITER
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import ANSWER, USAGE, Behaviour, FakeOpenAI
from tests.net import free_port

StartProxy = Callable[[Config], Awaitable[Proxy]]
Sample = tuple[str, dict[str, str], float]

MODEL = "openai/gpt-4o-mini"
PRICING = {"prompt": 0.15, "completion": 0.60, "cached_prompt": 0.075}
CAROL_KEY = "sk-ar-test-carol-PLANTED-0123456789abcdef0123"
DAVE_KEY = "sk-ar-test-dave-PLANTED-0123456789abcdef01234"
PROMPT = "PLANTED-PROMPT-TEXT-do-not-log-7f3a9c"
SECRET_MODEL = "PLANTED-MODEL-invented-by-client-91ad"
SECRET_PATH = "PLANTED-PATH-segment-c0ffee"
# The fake's usage (tests/fakes.py USAGE), typed.
PROMPT_TOKENS, COMPLETION_TOKENS, CACHED_TOKENS = 11, 5, 3
assert USAGE["prompt_tokens"] == PROMPT_TOKENS and USAGE["completion_tokens"] == COMPLETION_TOKENS
assert USAGE["prompt_tokens_details"] == {"cached_tokens": CACHED_TOKENS}
METRICS_TOKEN = "PLANTED-metrics-token-5e1f"


def chat_body(model: str = MODEL, **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": PROMPT}], **extra}


def model_entry(provider: str = "openai", upstream: str = "gpt-4o-mini",
                **extra: Any) -> dict[str, Any]:
    return {"pricing": PRICING, "routes": [{"provider": provider, "model": upstream}], **extra}


# -- HTTP helpers ------------------------------------------------------------------------


async def post(url: str, body: Any, headers: dict[str, str] | None = None
               ) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            url, json=body, headers=headers if headers is not None else auth()) as response:
        raw = await response.read()
        data = json.loads(raw) if response.content_type == "application/json" else raw
        return response.status, dict(response.headers), data


async def get(url: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(
            url, headers=headers if headers is not None else auth()) as response:
        raw = await response.read()
        data = json.loads(raw) if response.content_type == "application/json" else raw
        return response.status, dict(response.headers), data


async def stream(url: str, body: dict[str, Any], headers: dict[str, str] | None = None
                 ) -> tuple[int, dict[str, str], list[bytes]]:
    async with aiohttp.ClientSession() as session, session.post(
            url, json={**body, "stream": True},
            headers=headers if headers is not None else auth()) as response:
        raw = await response.read()
        return response.status, dict(response.headers), [b for b in raw.split(b"\n\n") if b]


def assert_envelope(body: Any, status_type: str, code: str) -> dict[str, Any]:
    assert isinstance(body, dict), body
    error: dict[str, Any] = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert (error["type"], error["code"]) == (status_type, code), error
    assert isinstance(error["message"], str) and error["message"]
    return error


def assert_stream_complete(blocks: list[bytes]) -> None:
    assert blocks[-1] == b"data: [DONE]", blocks[-3:]
    for block in blocks[:-1]:
        if block.startswith(b"data: "):
            assert "error" not in json.loads(block.removeprefix(b"data: ")), block


# -- metrics helpers ---------------------------------------------------------------------


async def scrape(proxy: Proxy, headers: dict[str, str] | None = None) -> str:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url("/metrics"), headers=headers or {}) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain")
        return await response.text()


def samples(text: str) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]


def value(parsed: list[Sample], name: str, **labels: str) -> float | None:
    """Sum of the samples called `name` whose labels include `labels`; None if none."""
    found = [v for n, lab, v in parsed if n == name and labels.items() <= lab.items()]
    return sum(found) if found else None


def delta(before: list[Sample], after: list[Sample], name: str, **labels: str) -> float:
    return (value(after, name, **labels) or 0.0) - (value(before, name, **labels) or 0.0)


# -- the metrics -------------------------------------------------------------------------


@pytest.fixture
async def metered(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                  start_proxy: StartProxy) -> Proxy:
    return await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: model_entry()},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10},
              "carol": {"key_sha256": sha256(CAROL_KEY),
                        "limits": {"requests_per_minute": 1}},
              "dave": {"key_sha256": sha256(DAVE_KEY), "credits": 0}}))


async def test_metrics_move_with_traffic(metered: Proxy, fake_openai: FakeOpenAI) -> None:
    proxy = metered
    before = samples(await scrape(proxy))
    assert value(before, "anyrouter_requests_total") is None
    assert value(before, "anyrouter_in_flight_requests") == 0

    status, headers, body = await post(proxy.url("/api/v1/chat/completions"), chat_body())
    assert status == 200
    plain_id, plain_cost = headers["X-AnyRouter-Generation-Id"], body["usage"]["cost"]
    assert plain_cost > 0
    status, headers, blocks = await stream(proxy.url("/api/v1/chat/completions"), chat_body())
    assert status == 200
    assert_stream_complete(blocks)
    stream_id = headers["X-AnyRouter-Generation-Id"]
    status, _, body = await post(proxy.url("/api/v1/chat/completions"),
                                 chat_body(SECRET_MODEL))
    assert status == 404
    assert_envelope(body, "not_found_error", "model_not_found")
    # carol may make one request a minute: the second is refused.
    assert (await post(proxy.url("/api/v1/chat/completions"), chat_body(),
                       auth(CAROL_KEY)))[0] == 200
    status, _, body = await post(proxy.url("/api/v1/chat/completions"), chat_body(),
                                 auth(CAROL_KEY))
    assert status == 429
    # dave has no credits left.
    status, _, body = await post(proxy.url("/api/v1/chat/completions"), chat_body(),
                                 auth(DAVE_KEY))
    assert status == 402
    assert (await get(proxy.url(f"/api/v1/{SECRET_PATH}")))[0] == 404
    await proxy.flush()
    status, _, generation = await get(proxy.url(f"/api/v1/generation/{stream_id}"))
    assert status == 200
    stream_cost = generation["data"]["total_cost"]

    text = await scrape(proxy)
    after = samples(text)
    alice = {"endpoint": "chat", "model": MODEL, "provider": "openai", "key": "alice"}
    assert delta(before, after, "anyrouter_requests_total", **alice, status_class="2xx") == 2
    assert delta(before, after, "anyrouter_requests_total", key="carol",
                 status_class="2xx") == 1
    assert delta(before, after, "anyrouter_request_duration_seconds_count",
                 endpoint="chat", model=MODEL) == 3  # alice's two, carol's one
    assert delta(before, after, "anyrouter_request_duration_seconds_sum",
                 endpoint="chat", model=MODEL) > 0
    # Time to first token: only the stream has one.
    assert delta(before, after, "anyrouter_time_to_first_token_seconds_count",
                 model=MODEL, provider="openai") == 1
    assert delta(before, after, "anyrouter_upstream_attempt_duration_seconds_count",
                 provider="openai", outcome="ok") == 3

    # Tokens by direction are the upstream's usage: the plain answer's USAGE, and the
    # stream's usage chunk (same prompt, one completion token per content chunk).
    prompt, cached = PROMPT_TOKENS, CACHED_TOKENS
    tokens = {direction: delta(before, after, "anyrouter_tokens_total", model=MODEL,
                               provider="openai", key="alice", direction=direction)
              for direction in ("prompt", "completion", "cached", "reasoning")}
    assert tokens == {"prompt": 2 * prompt, "completion": COMPLETION_TOKENS + 3,
                      "cached": 2 * cached, "reasoning": 0}
    assert delta(before, after, "anyrouter_cost_usd_total", model=MODEL, key="alice") \
        == pytest.approx(plain_cost + stream_cost, rel=1e-9)

    assert delta(before, after, "anyrouter_rejections_total", key="carol",
                 reason="rate_limited") == 1
    assert delta(before, after, "anyrouter_rejections_total", key="dave",
                 reason="insufficient_credits") == 1
    assert value(after, "anyrouter_rejections_total", key="alice") is None
    assert value(after, "anyrouter_in_flight_requests") == 0
    assert value(after, "anyrouter_in_flight_streams") == 0
    assert value(after, "anyrouter_usage_queue_depth") is not None
    assert value(after, "anyrouter_usage_rows_dropped") == 0
    assert value(after, "anyrouter_circuit_state", provider="openai") == 0
    assert value(after, "anyrouter_key_credits_remaining_usd", key="alice") \
        == pytest.approx(10 - plain_cost - stream_cost, rel=1e-9)
    assert value(after, "anyrouter_key_credits_remaining_usd", key="dave") == 0
    assert value(after, "anyrouter_key_credits_remaining_usd", key="carol") is None  # unlimited
    loaded = value(after, "anyrouter_config_loaded_timestamp_seconds")
    assert loaded is not None and time.time() - 600 < loaded <= time.time()

    # Low cardinality and no secrets: nothing a client sent or was given ends up here.
    for planted in (ALICE_KEY, CAROL_KEY, DAVE_KEY, PROVIDER_KEY, sha256(ALICE_KEY), PROMPT,
                    SECRET_MODEL, SECRET_PATH, plain_id, stream_id, "/api/v1",
                    "/chat/completions", "gen-", ANSWER):
        assert planted not in text, planted
    label_values = {v for _, labels, _ in after for k, v in labels.items() if k != "le"}
    assert label_values <= {"chat", MODEL, "openai", "alice", "carol", "dave", "2xx", "ok",
                            "prompt", "completion", "cached", "reasoning", "rate_limited",
                            "insufficient_credits", "none", "4xx", "unknown",
                            "billing", "audit"}, label_values  # dropped usage rows' kinds


async def test_latency_buckets_span_milliseconds_to_minutes(metered: Proxy) -> None:
    assert (await stream(metered.url("/api/v1/chat/completions"), chat_body()))[0] == 200
    parsed = samples(await scrape(metered))
    for name in ("anyrouter_request_duration_seconds_bucket",
                 "anyrouter_time_to_first_token_seconds_bucket",
                 "anyrouter_upstream_attempt_duration_seconds_bucket"):
        bounds = {float(labels["le"]) for n, labels, _ in parsed if n == name}
        finite = sorted(b for b in bounds if b != float("inf"))
        assert finite[0] <= 0.01 and finite[-1] >= 120, (name, finite)


async def test_in_flight_gauges_follow_a_stream(metered: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=6, chunk_delay_s=0.1))
    async with aiohttp.ClientSession() as session, session.post(
            metered.url("/api/v1/chat/completions"), json=chat_body(stream=True),
            headers=auth()) as response:
        assert response.status == 200
        assert (await response.content.readline()).startswith(b"data: ")
        during = samples(await scrape(metered))
        assert value(during, "anyrouter_in_flight_requests") == 1
        assert value(during, "anyrouter_in_flight_streams") == 1
        await response.read()
    after = samples(await scrape(metered))
    assert value(after, "anyrouter_in_flight_requests") == 0
    assert value(after, "anyrouter_in_flight_streams") == 0


async def test_client_errors_are_counted_without_the_invented_model(metered: Proxy) -> None:
    before = samples(await scrape(metered))
    status, _, _ = await post(metered.url("/api/v1/chat/completions"), chat_body(SECRET_MODEL))
    assert status == 404
    text = await scrape(metered)
    assert SECRET_MODEL not in text  # never a label a client can invent
    assert delta(before, samples(text), "anyrouter_requests_total", endpoint="chat",
                 key="alice", status_class="4xx") == 1


async def test_metrics_token_guards_the_exposition(config_factory: ConfigFactory,
                                                   start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(server={"metrics_token": METRICS_TOKEN}))
    for headers in ({}, {"Authorization": "Bearer wrong"}, auth(ALICE_KEY),
                    {"Authorization": METRICS_TOKEN}):
        status, response_headers, body = await get(proxy.url("/metrics"), headers)
        assert status == 401, headers
        assert response_headers["Content-Type"].startswith("application/json")
        assert_envelope(body, "authentication_error", "invalid_api_key")
        assert METRICS_TOKEN not in json.dumps(body)
    text = await scrape(proxy, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert "anyrouter_config_loaded_timestamp_seconds" in text
    assert METRICS_TOKEN not in text


async def test_metrics_need_no_key_without_a_token(metered: Proxy) -> None:
    status, _, raw = await get(metered.url("/metrics"), {})
    assert status == 200 and b"anyrouter_in_flight_requests" in raw


# -- hot reload, in process --------------------------------------------------------------


def audit_events(config: Config) -> list[tuple[str, dict[str, Any]]]:
    db = sqlite3.connect(config.storage.sqlite_path)
    try:
        return [(event, json.loads(detail or "{}")) for event, detail in
                db.execute("SELECT event, detail FROM audit ORDER BY id")]
    finally:
        db.close()


async def model_ids(url: str) -> set[str]:
    status, _, body = await get(url)
    assert status == 200, body
    return {m["id"] for m in body["data"]}


async def test_reload_adds_a_model_and_keeps_bucket_state(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    alice = {"key_sha256": sha256(ALICE_KEY), "limits": {"requests_per_minute": 5}}
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: model_entry()}, keys={"alice": alice}))
    chat_url = proxy.url("/api/v1/chat/completions")
    for _ in range(2):
        assert (await post(chat_url, chat_body()))[0] == 200
    status, headers, _ = await get(proxy.url("/api/v1/auth/key"))
    assert (headers["X-RateLimit-Limit"], headers["X-RateLimit-Remaining"]) == ("5", "3")
    before = samples(await scrape(proxy))
    stamp = time.time()

    # A new provider and a model it serves; alice's limits unchanged.
    config_factory(providers={"openai": openai_provider(fake_openai),
                              "backup": openai_provider(fake_backup)},
                   models={MODEL: model_entry(), "backup/new": model_entry("backup", "new")},
                   keys={"alice": alice})
    assert reload_config(proxy.app) is True
    assert await model_ids(proxy.url("/api/v1/models")) == {MODEL, "backup/new"}
    assert (await get(proxy.url("/api/v1/models/count")))[2] == {"data": {"count": 2}}
    status, headers, _ = await get(proxy.url("/api/v1/auth/key"))
    assert headers["X-RateLimit-Remaining"] == "3"  # the bucket survived the reload
    status, headers, body = await post(chat_url, chat_body("backup/new"))
    assert status == 200, body
    assert headers["X-AnyRouter-Provider"] == "backup" and len(fake_backup.requests) == 1
    assert headers["X-RateLimit-Remaining"] == "2"

    # Raise alice's rpm: the limit grows, the consumed part stays consumed.
    config_factory(providers={"openai": openai_provider(fake_openai),
                              "backup": openai_provider(fake_backup)},
                   models={MODEL: model_entry(), "backup/new": model_entry("backup", "new")},
                   keys={"alice": {**alice, "limits": {"requests_per_minute": 10}}})
    assert reload_config(proxy.app) is True
    status, headers, _ = await get(proxy.url("/api/v1/auth/key"))
    assert headers["X-RateLimit-Limit"] == "10"
    assert 4 <= int(headers["X-RateLimit-Remaining"]) <= 7  # 3 of 5 used: not refilled
    for _ in range(int(headers["X-RateLimit-Remaining"])):
        assert (await post(chat_url, chat_body()))[0] == 200
    assert (await post(chat_url, chat_body()))[0] == 429

    after = samples(await scrape(proxy))
    assert delta(before, after, "anyrouter_config_reloads_total", result="accepted") == 2
    assert value(after, "anyrouter_config_reloads_total", result="rejected") in (None, 0)
    loaded = value(after, "anyrouter_config_loaded_timestamp_seconds")
    assert loaded is not None and loaded >= stamp
    await proxy.flush()
    assert [e for e, _ in audit_events(proxy.config)].count("config_reloaded") == 2


async def test_reload_drops_a_removed_model_and_key(config_factory: ConfigFactory,
                                                    fake_openai: FakeOpenAI,
                                                    start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: model_entry(), "openai/old": model_entry()}))
    config_factory(providers={"openai": openai_provider(fake_openai)},
                   models={MODEL: model_entry()},
                   keys={"alice": {"key_sha256": sha256(ALICE_KEY)}})
    assert reload_config(proxy.app) is True
    assert await model_ids(proxy.url("/api/v1/models")) == {MODEL}
    status, _, body = await post(proxy.url("/api/v1/chat/completions"), chat_body("openai/old"))
    assert status == 404
    assert_envelope(body, "not_found_error", "model_not_found")
    status, _, body = await post(proxy.url("/api/v1/chat/completions"), chat_body(),
                                 auth(BOB_KEY))
    assert status == 401
    assert_envelope(body, "authentication_error", "invalid_api_key")


async def test_reload_applies_metrics_token_and_warns_about_restart_only_fields(
        config_factory: ConfigFactory, start_proxy: StartProxy,
        caplog: pytest.LogCaptureFixture) -> None:
    proxy = await start_proxy(config_factory())
    assert (await get(proxy.url("/metrics"), {}))[0] == 200
    config_factory(server={"metrics_token": METRICS_TOKEN, "port": proxy.config.server.port + 1})
    with caplog.at_level(logging.WARNING, logger="anyrouter_proxy.server.reload"):
        assert reload_config(proxy.app) is True
    assert any("server.port" in r.getMessage() and r.levelno == logging.WARNING
               for r in caplog.records)
    status, _, body = await get(proxy.url("/metrics"), {})
    assert status == 401
    assert_envelope(body, "authentication_error", "invalid_api_key")
    await scrape(proxy, {"Authorization": f"Bearer {METRICS_TOKEN}"})
    # Still listening where it started.
    assert (await get(proxy.url("/api/v1/models")))[0] == 200


async def test_stream_in_flight_finishes_on_the_config_it_started_with(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, fake_backup: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    """A reload that removes the model, its provider and changes nothing else: the stream
    already under way ends normally and is billed at the prices it started with."""
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "backup": openai_provider(fake_backup)},
        models={MODEL: model_entry(), "backup/other": model_entry("backup", "other")}))
    fake_openai.then(Behaviour(chunks=8, chunk_delay_s=0.1))
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json=chat_body(stream=True),
            headers=auth()) as response:
        assert response.status == 200
        gen_id = response.headers["X-AnyRouter-Generation-Id"]
        assert (await response.content.readline()).startswith(b"data: ")
        config_factory(providers={"backup": openai_provider(fake_backup)},
                       models={"backup/other": {"pricing": {"prompt": 99, "completion": 99},
                                                "routes": [{"provider": "backup",
                                                            "model": "other"}]}})
        assert reload_config(proxy.app) is True
        status, _, _ = await post(proxy.url("/api/v1/chat/completions"), chat_body())
        assert status == 404  # new requests already see the new config
        raw = await response.read()
    blocks = [b for b in raw.split(b"\n\n") if b]
    assert_stream_complete(blocks)
    assert fake_openai.cancelled == 0 and fake_openai.completed == 1
    await proxy.flush()
    status, _, generation = await get(proxy.url(f"/api/v1/generation/{gen_id}"))
    assert status == 200
    data = generation["data"]
    assert (data["model"], data["provider_name"], data["cancelled"]) == (MODEL, "openai", False)
    expected = (PROMPT_TOKENS - CACHED_TOKENS) * 0.15e-6 + 3 * 0.075e-6 + 8 * 0.60e-6
    assert data["total_cost"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("content", [
    pytest.param("version: 1\nproviders: {demo: {kind: mock}}\nmodels:\n"
                 "  demo/echo: {routes: [{provider: ghost, model: x}]}\n", id="unknown-provider"),
    pytest.param("version: 1\nproviders: [\n", id="broken-yaml"),
    pytest.param("", id="empty-file"),
    pytest.param(None, id="file-removed"),
])
async def test_invalid_reload_is_rejected_and_old_config_serves(
        config_factory: ConfigFactory, start_proxy: StartProxy,
        caplog: pytest.LogCaptureFixture, content: str | None) -> None:
    proxy = await start_proxy(config_factory())
    assert proxy.config.path is not None
    before = samples(await scrape(proxy))
    if content is None:
        proxy.config.path.unlink()
    else:
        proxy.config.path.write_text(content)
    with caplog.at_level(logging.ERROR, logger="anyrouter_proxy.server.reload"):
        assert reload_config(proxy.app) is False
    assert any(r.levelno == logging.ERROR and "rejected" in r.getMessage()
               for r in caplog.records)
    assert proxy.gateway.config is proxy.config
    status, _, body = await post(proxy.url("/api/v1/chat/completions"), chat_body("demo/echo"))
    assert status == 200, body
    assert await model_ids(proxy.url("/api/v1/models")) == {"demo/echo"}

    after = samples(await scrape(proxy))
    assert delta(before, after, "anyrouter_config_reloads_total", result="rejected") == 1
    assert value(after, "anyrouter_config_reloads_total", result="accepted") in (None, 0)
    assert value(after, "anyrouter_config_loaded_timestamp_seconds") \
        == value(before, "anyrouter_config_loaded_timestamp_seconds")
    await proxy.flush()
    rejected = [detail for event, detail in audit_events(proxy.config)
                if event == "config_reload_rejected"]
    assert len(rejected) == 1 and rejected[0]["problems"], rejected
    if content is not None and "ghost" in content:
        assert "ghost" in json.dumps(rejected[0])


async def test_reload_under_load_fails_no_request(config_factory: ConfigFactory,
                                                  fake_openai: FakeOpenAI,
                                                  start_proxy: StartProxy) -> None:
    def write(generation: int) -> Config:
        # Each reload changes the provider's timeouts (its HTTP session is retired while
        # requests still use it), the pricing, and adds a model of its own.
        return config_factory(
            providers={"openai": openai_provider(
                fake_openai, timeouts={"total_s": 600 + generation})},
            models={MODEL: {"pricing": {"prompt": 0.1 + generation, "completion": 0.5},
                            "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                    f"openai/gen-{generation}": model_entry()},
            keys={"alice": {"key_sha256": sha256(ALICE_KEY),
                            "limits": {"requests_per_minute": 100000,
                                       "concurrent_requests": 500}}})

    proxy = await start_proxy(write(0))
    fake_openai.then(*[Behaviour(delay_s=0.02, chunks=4, chunk_delay_s=0.01)
                       for _ in range(20000)])
    chat_url = proxy.url("/api/v1/chat/completions")
    stop = asyncio.Event()
    failures: list[str] = []
    done = [0]

    async def worker(session: aiohttp.ClientSession, n: int) -> None:
        streamed = n % 2 == 1
        while not stop.is_set():
            try:
                async with session.post(chat_url, json=chat_body(stream=streamed),
                                        headers=auth()) as response:
                    raw = await response.read()
                    if response.status != 200:
                        failures.append(f"{response.status}: {raw[:300]!r}")
                    elif streamed:
                        assert_stream_complete([b for b in raw.split(b"\n\n") if b])
                    else:
                        assert json.loads(raw)["choices"][0]["message"]["content"] == ANSWER
            except (AssertionError, aiohttp.ClientError) as exc:
                failures.append(repr(exc))
            done[0] += 1

    limiter = proxy.app[LIMITER]
    in_flight_at_reload: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        workers = [asyncio.ensure_future(worker(session, n)) for n in range(50)]
        try:
            for generation in range(1, 6):
                await asyncio.sleep(0.15)
                # On a busy machine the 50 workers can take longer than that to start.
                deadline = asyncio.get_running_loop().time() + 5
                while (limiter.in_flight("alice") < 10
                       and asyncio.get_running_loop().time() < deadline):
                    await asyncio.sleep(0.01)
                in_flight_at_reload.append(limiter.in_flight("alice"))
                write(generation)
                assert reload_config(proxy.app) is True
                status, _, body = await post(chat_url, chat_body(f"openai/gen-{generation}"))
                assert status == 200, body
            await asyncio.sleep(0.15)
        finally:
            stop.set()
            await asyncio.gather(*workers)
    assert failures == []
    assert done[0] >= 200
    assert all(n >= 10 for n in in_flight_at_reload), in_flight_at_reload
    assert limiter.in_flight("alice") == 0  # no concurrency slot lost across the reloads
    parsed = samples(await scrape(proxy))
    assert value(parsed, "anyrouter_config_reloads_total", result="accepted") == 5
    assert value(parsed, "anyrouter_in_flight_requests") == 0
    assert value(parsed, "anyrouter_in_flight_streams") == 0


async def test_reload_removes_metrics_of_removed_keys_and_providers(
        config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    two = {"demo": {"kind": "mock"}, "spare": {"kind": "mock"}}
    models = {"demo/echo": {"pricing": {"prompt": 1, "completion": 2},
                            "routes": [{"provider": "demo", "model": "echo"},
                                       {"provider": "spare", "model": "echo"}]}}
    proxy = await start_proxy(config_factory(providers=two, models=models, keys={
        "alice": {"key_sha256": sha256(ALICE_KEY), "credits": 5},
        "bob": {"key_sha256": sha256(BOB_KEY), "credits": 5}}))
    parsed = samples(await scrape(proxy))
    assert value(parsed, "anyrouter_key_credits_remaining_usd", key="bob") == 5
    assert value(parsed, "anyrouter_circuit_state", provider="spare") == 0
    # bob gone, alice unlimited, spare gone
    config_factory(keys={"alice": {"key_sha256": sha256(ALICE_KEY)}})
    assert reload_config(proxy.app) is True
    parsed = samples(await scrape(proxy))
    assert value(parsed, "anyrouter_circuit_state", provider="demo") == 0
    assert value(parsed, "anyrouter_circuit_state", provider="spare") is None
    assert value(parsed, "anyrouter_key_credits_remaining_usd", key="bob") is None
    assert value(parsed, "anyrouter_key_credits_remaining_usd", key="alice") is None


# -- deprecation and versions ------------------------------------------------------------

SINCE_2025 = "@1735689600"  # 2025-01-01T00:00:00Z
SUNSET_2099 = "Thu, 01 Jan 2099 00:00:00 GMT"
OLD, NEW = "openai/old", "openai/new"


def deprecated_models(sunset: str, since: str = "2025-01-01") -> dict[str, Any]:
    return {OLD: model_entry(deprecated={"since": since, "sunset": sunset, "successor": NEW}),
            NEW: model_entry()}


async def test_deprecated_model_carries_headers(config_factory: ConfigFactory,
                                                fake_openai: FakeOpenAI,
                                                start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models=deprecated_models("2099-01-01")))
    expected = {"Deprecation": SINCE_2025, "Sunset": SUNSET_2099,
                "Link": f'</api/v1/models/{NEW}>; rel="successor-version"'}

    def check(headers: dict[str, str]) -> None:
        assert {name: headers.get(name) for name in expected} == expected

    status, headers, _ = await post(proxy.url("/api/v1/chat/completions"), chat_body(OLD))
    assert status == 200
    check(headers)
    status, headers, blocks = await stream(proxy.url("/v1/chat/completions"), chat_body(OLD))
    assert status == 200
    assert_stream_complete(blocks)
    check(headers)
    for path in (f"/api/v1/models/{OLD}", "/api/v1/models/openai%2Fold"):
        status, headers, body = await get(proxy.url(path))
        assert status == 200 and body["id"] == OLD
        check(headers)
        assert body["deprecated"] == {"since": "2025-01-01", "sunset": "2099-01-01",
                                      "successor": NEW}
    assert await model_ids(proxy.url("/api/v1/models")) == {OLD, NEW}
    # The successor itself is not deprecated.
    status, headers, _ = await post(proxy.url("/api/v1/chat/completions"), chat_body(NEW))
    assert status == 200
    assert not {"Deprecation", "Sunset", "Link"} & set(headers)
    status, headers, _ = await get(proxy.url(f"/api/v1/models/{NEW}"))
    assert not {"Deprecation", "Sunset", "Link"} & set(headers)


async def test_deprecated_model_headers_survive_keepalive(config_factory: ConfigFactory,
                                                          fake_openai: FakeOpenAI,
                                                          start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models=deprecated_models("2099-01-01"), server={"sse_keepalive_interval_s": 0.05}))
    fake_openai.then(Behaviour(delay_s=0.3))
    status, headers, blocks = await stream(proxy.url("/api/v1/chat/completions"), chat_body(OLD))
    assert status == 200
    assert blocks[0].startswith(b": ANYROUTER PROCESSING")  # the keep-alive path
    assert_stream_complete(blocks)
    assert headers.get("Deprecation") == SINCE_2025
    assert headers.get("Sunset") == SUNSET_2099
    assert headers.get("Link") == f'</api/v1/models/{NEW}>; rel="successor-version"'


async def test_sunset_model_is_gone(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                    start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models=deprecated_models("2020-06-01", since="2019-01-01")))
    for path, body in (("/api/v1/chat/completions", chat_body(OLD)),
                       ("/v1/chat/completions", chat_body(OLD, stream=True)),
                       ("/api/v1/completions", {"model": OLD, "prompt": PROMPT})):
        status, _, answer = await post(proxy.url(path), body)
        assert status == 410, (path, answer)
        error = assert_envelope(answer, "invalid_request_error", "model_sunset")
        assert NEW in error["message"]
        assert error["metadata"]["successor"] == NEW
    assert fake_openai.requests == []
    assert await model_ids(proxy.url("/api/v1/models")) == {NEW}
    assert (await get(proxy.url("/api/v1/models/count")))[2] == {"data": {"count": 1}}
    # The successor serves.
    assert (await post(proxy.url("/api/v1/chat/completions"), chat_body(NEW)))[0] == 200


async def test_sunset_date_is_the_same_for_listing_and_requests(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    """The Sunset header is midnight GMT: /models and the request path must agree on
    whether the day has come, whatever the server's local time zone."""
    now = dt.datetime.now(dt.UTC)
    if now.hour >= 10:  # UTC+14 is already tomorrow: sunset tomorrow (UTC) is not yet due
        zone, sunset = "Etc/GMT-14", now.date() + dt.timedelta(days=1)
    else:  # UTC-12 is still yesterday: sunset today (UTC) is due
        zone, sunset = "Etc/GMT+12", now.date()
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models=deprecated_models(sunset.isoformat(), since="2020-01-01")))
    saved = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        assert dt.date.today() != now.date()  # the zone really is on another day
        status, _, _ = await post(proxy.url("/api/v1/chat/completions"), chat_body(OLD))
        listed = OLD in await model_ids(proxy.url("/api/v1/models"))
    finally:
        if saved is None:
            os.environ.pop("TZ", None)
        else:
            os.environ["TZ"] = saved
        time.tzset()
    assert status in (200, 410)
    assert listed == (status == 200), (zone, sunset, status, listed)


async def test_deprecated_endpoint_carries_headers(config_factory: ConfigFactory,
                                                   fake_openai: FakeOpenAI,
                                                   start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)}, models={MODEL: model_entry()},
        deprecations={"/completions": {"since": "2025-01-01", "sunset": "2099-01-01",
                                       "successor": "/chat/completions"}}))
    expected = {"Deprecation": SINCE_2025, "Sunset": SUNSET_2099,
                "Link": '</api/v1/chat/completions>; rel="successor-version"'}
    for path in ("/api/v1/completions", "/v1/completions"):
        status, headers, body = await post(proxy.url(path), {"model": MODEL, "prompt": "x"})
        assert status == 200, body
        assert body["choices"][0]["text"] == ANSWER
        assert {name: headers.get(name) for name in expected} == expected
    status, headers, blocks = await stream(proxy.url("/api/v1/completions"),
                                           {"model": MODEL, "prompt": "x"})
    assert status == 200
    assert_stream_complete(blocks)
    assert {name: headers.get(name) for name in expected} == expected
    status, headers, _ = await post(proxy.url("/api/v1/chat/completions"), chat_body())
    assert status == 200
    assert not {"Deprecation", "Sunset", "Link"} & set(headers)


async def test_sunset_endpoint_is_gone(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                       start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)}, models={MODEL: model_entry()},
        deprecations={"/completions": {"since": "2019-01-01", "sunset": "2020-01-01",
                                       "successor": "/chat/completions"}}))
    for body in ({"model": MODEL, "prompt": "x"}, {"model": MODEL, "prompt": "x",
                                                   "stream": True}):
        status, _, answer = await post(proxy.url("/api/v1/completions"), body)
        assert status == 410, answer
        error = assert_envelope(answer, "invalid_request_error", "endpoint_sunset")
        assert "/chat/completions" in error["message"]
        assert error["metadata"]["successor"] == "/chat/completions"
    # Still authenticated first: no key, no hint.
    status, _, answer = await post(proxy.url("/api/v1/completions"),
                                   {"model": MODEL, "prompt": "x"}, headers={})
    assert status == 401
    assert fake_openai.requests == []
    assert (await post(proxy.url("/api/v1/chat/completions"), chat_body()))[0] == 200


@pytest.mark.parametrize(("method", "path"), [
    ("GET", "/api/v2/anything"),
    ("GET", "/api/v2/models"),
    ("POST", "/api/v2/chat/completions"),
    ("GET", "/v3/models"),
    ("POST", "/v2/chat/completions"),
    ("GET", "/api/v0/models"),
])
async def test_unknown_api_versions_are_404_envelopes(openai_proxy: Proxy, method: str,
                                                      path: str) -> None:
    async with aiohttp.ClientSession() as session, session.request(
            method, openai_proxy.url(path), json=chat_body(), headers=auth()) as response:
        assert response.status == 404
        assert response.content_type == "application/json"
        assert_envelope(await response.json(), "not_found_error", "route_not_found")


# -- a real `serve` process: logs, SIGHUP, file watch ------------------------------------


class Served:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, stdout: Path,
                 stderr: Path) -> None:
        self.proc, self.port, self.stdout, self.stderr = proc, port, stdout, stderr

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def out(self) -> str:
        return self.stdout.read_text(errors="replace")

    def err(self) -> str:
        return self.stderr.read_text(errors="replace")

    def lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.out().splitlines() if line.strip()]

    def access(self, trace_id: str) -> list[dict[str, Any]]:
        return [e for e in self.lines()
                if e.get("logger") == "anyrouter_proxy.access" and e.get("trace_id") == trace_id]


ServeProc = Callable[..., Awaitable[Served]]


@pytest.fixture
async def serve_proc(tmp_path: Path) -> AsyncIterator[ServeProc]:
    started: list[Served] = []

    async def start(config: Config, *args: str) -> Served:
        assert config.path is not None
        port = free_port()
        stdout, stderr = tmp_path / f"out-{port}.log", tmp_path / f"err-{port}.log"
        with stdout.open("wb") as out, stderr.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config.path),
                "--port", str(port), *args, stdout=out, stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        served = Served(proc, port, stdout, stderr)
        started.append(served)
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.returncode is None, served.out() + served.err()
                try:
                    async with session.get(served.url("/health")) as response:
                        if response.status == 200:
                            return served
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, served.out() + served.err()
                await asyncio.sleep(0.05)

    yield start
    for served in started:
        if served.proc.returncode is None:
            served.proc.terminate()
            try:
                await asyncio.wait_for(served.proc.wait(), 10)
            except TimeoutError:
                served.proc.kill()
                await served.proc.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


def serve_config(config_factory: ConfigFactory, fake: FakeOpenAI, *, extra_models: Any = None,
                 **sections: Any) -> Config:
    return config_factory(providers={"openai": openai_provider(fake)},
                          models={MODEL: model_entry(), **(extra_models or {})},
                          **sections)


async def test_json_request_logs_on_stdout(config_factory: ConfigFactory,
                                           fake_openai: FakeOpenAI,
                                           serve_proc: ServeProc) -> None:
    # Debug level: even the chattiest logs must not carry a key or a prompt.
    served = await serve_proc(serve_config(config_factory, fake_openai),
                              "--log-format", "json", "--log-level", "debug")
    chat_url = served.url("/api/v1/chat/completions")
    status, plain_headers, _ = await post(chat_url, chat_body(),
                                             {**auth(), "X-AnyRouter-Trace-Id": "log-plain"})
    assert status == 200
    status, stream_headers, _ = await stream(chat_url, chat_body(),
                                             {**auth(), "X-AnyRouter-Trace-Id": "log-stream"})
    assert status == 200
    bad_key = "sk-ar-PLANTED-invalid-client-key-0000"
    status, _, _ = await post(chat_url, chat_body(),
                              {"Authorization": f"Bearer {bad_key}",
                               "X-AnyRouter-Trace-Id": "log-badkey"})
    assert status == 401
    status, _, _ = await post(chat_url, chat_body(SECRET_MODEL),
                              {**auth(), "X-AnyRouter-Trace-Id": "log-404"})
    assert status == 404

    await eventually(lambda: _has(served, "log-404"))
    output = served.out() + served.err()
    for planted in (ALICE_KEY, bad_key, PROVIDER_KEY, PROMPT, ANSWER, sha256(ALICE_KEY)):
        assert planted not in output, planted
    for line in served.out().splitlines():  # every stdout line is one JSON object
        assert isinstance(json.loads(line), dict), line

    for trace, headers, streamed, completion in (
            ("log-plain", plain_headers, False, COMPLETION_TOKENS),
            ("log-stream", stream_headers, True, 3)):
        entries = served.access(trace)
        assert len(entries) == 1, entries
        entry = entries[0]
        assert dt.datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).tzinfo
        assert entry["request_id"] == headers["X-AnyRouter-Generation-Id"]
        assert (entry["key"], entry["model"], entry["provider"], entry["status"]) \
            == ("alice", MODEL, "openai", 200)
        assert entry["streamed"] is streamed
        assert isinstance(entry["latency_ms"], int | float) and entry["latency_ms"] > 0
        assert entry["tokens_prompt"] == PROMPT_TOKENS
        assert entry["tokens_completion"] == completion
    (bad,) = served.access("log-badkey")
    assert bad["status"] == 401 and bad["key"] is None
    (missing,) = served.access("log-404")
    assert missing["status"] == 404 and missing["key"] == "alice"


async def _has(served: Served, trace: str) -> bool:
    return bool(served.access(trace))


async def test_refused_requests_log_request_id_and_model(config_factory: ConfigFactory,
                                                         fake_openai: FakeOpenAI,
                                                         serve_proc: ServeProc) -> None:
    served = await serve_proc(serve_config(
        config_factory, fake_openai,
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "limits": {"requests_per_minute": 1}}}))
    chat_url = served.url("/api/v1/chat/completions")
    assert (await post(chat_url, chat_body()))[0] == 200
    status, _, _ = await post(chat_url, chat_body(), {**auth(), "X-AnyRouter-Trace-Id": "r429"})
    assert status == 429
    await eventually(lambda: _has(served, "r429"))
    (entry,) = served.access("r429")
    assert entry["status"] == 429
    assert entry.get("request_id")
    assert entry.get("model") == MODEL


async def test_text_log_format_and_log_level(config_factory: ConfigFactory,
                                             fake_openai: FakeOpenAI,
                                             serve_proc: ServeProc) -> None:
    config = serve_config(config_factory, fake_openai)
    text = await serve_proc(config, "--log-format", "text")
    status, headers, _ = await post(text.url("/api/v1/chat/completions"), chat_body(),
                                    {**auth(), "X-AnyRouter-Trace-Id": "text-1"})
    assert status == 200

    async def logged() -> bool:
        return "trace_id=text-1" in text.out()

    await eventually(logged)
    (line,) = [ln for ln in text.out().splitlines() if "trace_id=text-1" in ln]
    assert not line.lstrip().startswith("{")
    for part in ("anyrouter_proxy.access", "status=200", "key=alice", f"model={MODEL}",
                 "provider=openai", f"request_id={headers['X-AnyRouter-Generation-Id']}"):
        assert part in line, (part, line)
    assert PROMPT not in text.out() and ALICE_KEY not in text.out()

    # The level from the config, overridden by the flag: at warning, no access lines.
    quiet = await serve_proc(serve_config(config_factory, fake_openai,
                                          server={"log_level": "warning"}))
    assert (await post(quiet.url("/api/v1/chat/completions"), chat_body(),
                       {**auth(), "X-AnyRouter-Trace-Id": "quiet-1"}))[0] == 200
    loud = await serve_proc(serve_config(config_factory, fake_openai,
                                         server={"log_level": "warning"}),
                            "--log-level", "info")
    assert (await post(loud.url("/api/v1/chat/completions"), chat_body(),
                       {**auth(), "X-AnyRouter-Trace-Id": "loud-1"}))[0] == 200
    await eventually(lambda: _has(loud, "loud-1"))
    await asyncio.sleep(0.3)
    assert "quiet-1" not in quiet.out()


@posix_only
async def test_sighup_reloads_a_real_process(config_factory: ConfigFactory,
                                             fake_openai: FakeOpenAI,
                                             serve_proc: ServeProc) -> None:
    config = serve_config(config_factory, fake_openai)
    served = await serve_proc(config)
    models_url = served.url("/api/v1/models")
    assert await model_ids(models_url) == {MODEL}

    serve_config(config_factory, fake_openai, extra_models={"openai/added": model_entry()})
    await asyncio.sleep(0.5)  # no watch: an edit alone changes nothing
    assert await model_ids(models_url) == {MODEL}
    served.proc.send_signal(signal.SIGHUP)

    async def added() -> bool:
        return "openai/added" in await model_ids(models_url)

    await eventually(added)
    status, _, body = await post(served.url("/api/v1/chat/completions"),
                                 chat_body("openai/added"))
    assert status == 200, body

    # An invalid file: logged, the process lives on, the running config stays.
    assert config.path is not None
    config.path.write_text("version: 1\nproviders: {openai: {kind: nonsense}}\nmodels: {}\n")
    served.proc.send_signal(signal.SIGHUP)

    async def rejected() -> bool:
        return "config reload rejected" in served.out()

    await eventually(rejected)
    assert served.proc.returncode is None
    errors = [e for e in served.lines() if "config reload rejected" in e.get("message", "")]
    assert errors and errors[0]["level"] == "error" and "providers.openai" in errors[0]["message"]
    assert await model_ids(models_url) == {MODEL, "openai/added"}
    status, _, body = await get(served.url("/metrics"), {})
    assert b'anyrouter_config_reloads_total{result="rejected"} 1.0' in body
    assert b'anyrouter_config_reloads_total{result="accepted"} 1.0' in body


@posix_only
async def test_file_watch_reloads_a_real_process(config_factory: ConfigFactory,
                                                 fake_openai: FakeOpenAI,
                                                 serve_proc: ServeProc) -> None:
    watch = {"watch": True, "interval_s": 0.2}
    config = serve_config(config_factory, fake_openai, reload=watch)
    served = await serve_proc(config)
    models_url = served.url("/api/v1/models")
    assert await model_ids(models_url) == {MODEL}

    serve_config(config_factory, fake_openai, reload=watch,
                 extra_models={"openai/watched": model_entry()})

    async def has(model: str) -> bool:
        return model in await model_ids(models_url)

    await eventually(lambda: has("openai/watched"))

    # A broken save is rejected; the watcher keeps watching and takes the next good one.
    assert config.path is not None
    config.path.write_text("version: 1\nproviders: [\n")

    async def rejected() -> bool:
        return "config reload rejected" in served.out()

    await eventually(rejected)
    assert await has("openai/watched")
    serve_config(config_factory, fake_openai, reload=watch,
                 extra_models={"openai/watched-2": model_entry()})
    await eventually(lambda: has("openai/watched-2"))
    assert not await has("openai/watched")
    assert served.proc.returncode is None
