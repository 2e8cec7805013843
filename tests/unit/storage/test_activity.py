"""The daily roll-up behind GET /activity (kept by triggers on both backends) and the SQL
that both backends must read alike."""

from __future__ import annotations

import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from anyrouter_proxy.errors import InvalidRequest, PermissionDenied
from anyrouter_proxy.storage.activity import (
    HOUR_S,
    MEASURES,
    Filters,
    daily_sql,
    day_range,
    floor_div,
    hourly_sql,
    key_scope,
)
from anyrouter_proxy.storage.postgres import PostgresStore
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.types import GenerationRecord, Usage
from tests.pg_server import PgServer
from tests.usage_backends import pg_cluster  # noqa: F401  (fixture)

DAY = 86_400.0
MAY_1 = 1_714_521_600.0  # 2024-05-01T00:00:00Z
ROLLUP = f"SELECT day, key_name, model, provider, {', '.join(MEASURES)} FROM activity_daily"
FROM_ROWS = (
    "SELECT " + floor_div("created_at", 86400) + " AS day, key_name, model,"
    " COALESCE(provider, '') AS provider, COUNT(*) AS requests,"
    " SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END) AS errors,"
    " SUM(cancelled) AS cancelled, SUM(tokens_prompt) AS tokens_prompt,"
    " SUM(tokens_completion) AS tokens_completion, SUM(tokens_reasoning) AS tokens_reasoning,"
    " SUM(tokens_cached) AS tokens_cached, SUM(cost) AS cost, SUM(latency_ms) AS latency_ms"
    " FROM generations GROUP BY 1, 2, 3, 4")


def rec(n: int, at: float, **fields: Any) -> GenerationRecord:
    base: dict[str, Any] = {"id": f"gen-{n}", "created_at": at, "key_name": "alice",
                            "endpoint": "chat", "model": "m/a", "provider": "p", "cost": 0.25,
                            "latency_ms": 10.0,
                            "usage": Usage(prompt_tokens=3, completion_tokens=2,
                                           reasoning_tokens=1, cached_tokens=1)}
    base.update(fields)
    return GenerationRecord(**base)


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[SqliteStore]:
    if request.param == "sqlite":
        opened = SqliteStore(tmp_path / "usage.db", flush_interval_s=0.01)
    else:
        cluster: PgServer = request.getfixturevalue("pg_cluster")
        opened = PostgresStore(cluster.new_schema(), flush_interval_s=0.01)
    await opened.open()
    yield opened
    await opened.close()


def normalized(rows: list[Any]) -> list[tuple[Any, ...]]:
    out = [(int(r["day"]), r["key_name"], r["model"], r["provider"],
            *(round(float(r[m]), 9) for m in MEASURES)) for r in rows
           if int(r["requests"]) > 0]
    return sorted(out)


async def assert_rollup_matches(store: SqliteStore) -> list[tuple[Any, ...]]:
    await store.flush()
    rollup = normalized(await store.report(ROLLUP))
    assert rollup == normalized(await store.report(FROM_ROWS))
    return rollup


async def test_rollup_follows_inserts_replacements_and_retention(store: SqliteStore) -> None:
    records = [
        rec(1, MAY_1 + 5), rec(2, MAY_1 + DAY - 0.001, status_code=502),
        rec(3, MAY_1 + DAY, key_name="bob", provider=None, status_code=429),
        rec(4, MAY_1 + DAY + 7, cancelled=True, status_code=499, model="m/b"),
    ]
    for record in records:
        store.record(record)
    rollup = await assert_rollup_matches(store)
    may_1 = int(MAY_1 // DAY)
    assert [(r[0], r[1], r[3], r[4], r[5]) for r in rollup] == [
        (may_1, "alice", "p", 2, 1), (may_1 + 1, "alice", "p", 1, 1),
        (may_1 + 1, "bob", "", 1, 1)]
    store.record(rec(2, MAY_1 + DAY - 0.001, cost=1.0))  # recorded twice: replaced
    store.record(rec(1, MAY_1 + 5, model="m/c"))  # moved to another model
    rollup = await assert_rollup_matches(store)
    assert sum(r[4] for r in rollup) == 4
    assert [(r[2], r[4], r[11]) for r in rollup if r[0] == may_1] == [
        ("m/a", 1, 1.0), ("m/c", 1, 0.25)]
    # Retention: the deleted rows leave the roll-up too; a recent row stays.
    store.record(rec(5, time.time()))
    await store.flush()
    assert await store.prune(1) >= 4
    rollup = await assert_rollup_matches(store)
    assert [(r[0], r[4]) for r in rollup] == [(int(time.time() // DAY), 1)]


async def test_floor_div_floors_on_both_backends(store: SqliteStore) -> None:
    # 10.5 hours: a CAST rounds to 11 in PostgreSQL, truncates to 10 in SQLite.
    store.record(rec(1, MAY_1 + 10.5 * HOUR_S))
    store.record(rec(2, MAY_1 + 11 * HOUR_S - 0.001))
    store.record(rec(3, MAY_1 + 11 * HOUR_S))
    await store.flush()
    sql, params = hourly_sql(MAY_1, MAY_1 + DAY, "key")
    rows = await store.report(sql, params)
    first = int(MAY_1 // HOUR_S)
    assert sorted((int(r["bucket"]) - first, int(r["requests"])) for r in rows) == [
        (10, 2), (11, 1)]


async def test_daily_sql_filters(store: SqliteStore) -> None:
    store.record(rec(1, MAY_1, key_name="bob"))
    store.record(rec(2, MAY_1, provider=None))
    store.record(rec(3, MAY_1 + DAY))
    await store.flush()
    day = int(MAY_1 // DAY)
    for filters, expected in ((Filters(), 3), (Filters(key="bob"), 1),
                              (Filters(provider=""), 1), (Filters(model="m/x"), 0)):
        sql, params = daily_sql(day, day + 2, filters)
        rows = await store.report(sql, params)
        assert sum(int(r["requests"]) for r in rows) == expected, filters
    sql, params = daily_sql(day + 1, day + 2)
    assert [int(r["requests"]) for r in await store.report(sql, params)] == [1]


def test_an_older_database_gets_its_rollup_at_upgrade(tmp_path: Path) -> None:
    from anyrouter_proxy.storage.sqlite import MIGRATIONS
    from anyrouter_proxy.storage.store import generation_params as _generation_params

    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for step, sql in enumerate(MIGRATIONS[:3]):
        db.executescript(f"BEGIN; {sql}; PRAGMA user_version = {step + 1}; COMMIT;")
    params = _generation_params(rec(1, MAY_1 + 60, cost=0.5))
    db.execute(f"INSERT INTO generations VALUES ({', '.join('?' * len(params))})", params)
    db.close()

    async def upgraded() -> list[Any]:
        store = SqliteStore(path)
        await store.open()
        try:
            return await store.report(ROLLUP)
        finally:
            await store.close()

    import asyncio
    rows = asyncio.run(upgraded())
    assert [(r["key_name"], r["requests"], r["cost"]) for r in rows] == [("alice", 1, 0.5)]


def test_day_range() -> None:
    today = dt.date(2024, 5, 31)
    first, end = day_range({}, today)
    assert (end - first, end) == (30, (today - dt.date(1970, 1, 1)).days + 1)
    assert day_range({"date": "2024-05-02"}, today) == (19845, 19846)
    assert day_range({"since": "2024-05-01", "until": "2024-05-02"}, today) == (19844, 19846)
    for bad in ({"since": "2024-5-1"}, {"until": "x"}, {"since": "2024-05-03",
                                                         "until": "2024-05-02"}):
        with pytest.raises(InvalidRequest):
            day_range(bad, today)


def test_key_scope() -> None:
    assert key_scope("root", True, None) is None
    assert key_scope("root", True, "bob") == "bob"
    assert key_scope("alice", False, None) == "alice"
    assert key_scope("alice", False, "alice") == "alice"
    with pytest.raises(PermissionDenied) as info:
        key_scope("alice", False, "bob")
    assert info.value.code == "admin_required" and info.value.status == 403
