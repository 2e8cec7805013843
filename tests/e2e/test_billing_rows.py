"""Billing rows are never dropped to make room for audit rows.

The usage database is locked by another connection (a stalled disk: tests/serve_process.py
`locked`) while a flood of requests with invalid keys (each an `auth_failed` audit row)
runs beside paying requests. Usage rows and audit rows have bounds of their own
(`storage.queue_max`, `storage.audit_queue_max`): every usage row survives and is written
once the disk recovers, audit rows beyond their bound are dropped and counted, /health
says the usage log is degraded (for good: rows were lost), and the key's spend survives a
restart.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fakes import FakeOpenAI
from tests.stalled_disk import locked

StartProxy = Callable[[Config], Awaitable[Proxy]]
MODEL = "openai/gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
PAID, FLOOD = 40, 360  # requests of the key / with invalid keys, interleaved 1 to 9
QUEUE_MAX, AUDIT_QUEUE_MAX = 60, 25


async def post(session: aiohttp.ClientSession, proxy: Proxy, key: str) -> str:
    async with session.post(proxy.url("/api/v1/chat/completions"), json=CHAT,
                            headers=auth(key)) as response:
        await response.read()
        assert response.status == (200 if key == ALICE_KEY else 401)
        return response.headers.get("X-AnyRouter-Generation-Id", "")


async def usage_log(session: aiohttp.ClientSession, proxy: Proxy) -> dict[str, Any]:
    async with session.get(proxy.url("/health")) as response:
        return (await response.json())["usage_log"]  # type: ignore[no-any-return]


async def dropped_metric(session: aiohttp.ClientSession, proxy: Proxy) -> dict[str, float]:
    async with session.get(proxy.url("/metrics")) as response:
        text = await response.text()
    return {s.labels["kind"]: s.value for family in text_string_to_metric_families(text)
            for s in family.samples if s.name == "anyrouter_usage_rows_dropped_by_kind_total"}


async def test_a_flood_of_refused_keys_on_a_stalled_disk_drops_no_billing_row(
        config_factory: ConfigFactory, start_proxy: StartProxy,
        fake_openai: FakeOpenAI) -> None:
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        storage={"queue_max": QUEUE_MAX, "audit_queue_max": AUDIT_QUEUE_MAX})
    proxy = await start_proxy(config)
    db_path = config.storage.sqlite_path
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=20)) as session:
        assert (await usage_log(session, proxy))["status"] == "ok"
        with locked(db_path):
            calls = [post(session, proxy, ALICE_KEY if i % 10 == 0 else f"sk-bad-{i}")
                     for i in range(PAID + FLOOD)]
            gen_ids = [g for g in await asyncio.gather(*calls) if g]
            assert len(gen_ids) == PAID
            report = await usage_log(session, proxy)
            assert report["status"] == "degraded"
            assert report["dropped_by_kind"] == {"billing": 0, "audit": FLOOD - AUDIT_QUEUE_MAX}
            assert report["dropped"] == FLOOD - AUDIT_QUEUE_MAX
            assert await dropped_metric(session, proxy) == {
                "billing": 0, "audit": FLOOD - AUDIT_QUEUE_MAX}
        for _ in range(300):  # the disk is back: the queue drains
            report = await usage_log(session, proxy)
            if report["queue_depth"] == 0 and report["last_error"] is None:
                break
            await asyncio.sleep(0.1)
        assert report["queue_depth"] == 0
        assert report["status"] == "degraded"  # rows were lost since start: it stays so
    db = sqlite3.connect(db_path)
    try:
        rows = dict(db.execute("SELECT id, cost FROM generations").fetchall())
        (audits,) = db.execute("SELECT count(*) FROM audit WHERE event = 'auth_failed'"
                               ).fetchone()
    finally:
        db.close()
    assert set(rows) == set(gen_ids) and audits == AUDIT_QUEUE_MAX
    spend = sum(rows.values())
    assert spend > 0

    again = await start_proxy(config)  # a restart: the key's spend is all there
    async with aiohttp.ClientSession() as session:
        async with session.get(again.url("/api/v1/credits"), headers=auth()) as response:
            credits = (await response.json())["data"]
        assert credits["total_usage"] == pytest.approx(spend, abs=1e-12)
        assert (await usage_log(session, again))["status"] == "ok"
