"""PostgresStore, the PostgreSQL `usage` report and the proxy on `storage.backend:
postgres`, all against a real PostgreSQL started by tests/pg_server.py (each test gets a
fresh schema on the module's one cluster). Mirrors test_sqlite.py and
test_report.py; where the SQLite store answers, the answers must be the same."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from anyrouter_proxy.cli import main
from anyrouter_proxy.config.loader import ConfigError
from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.state import STORE
from anyrouter_proxy.storage import sqlite as usage_store
from anyrouter_proxy.storage import writer
from anyrouter_proxy.storage.activity import Filters
from anyrouter_proxy.storage.batches import BatchRecord, BatchStore
from anyrouter_proxy.storage.postgres import (
    SCHEMA_VERSION,
    PostgresStore,
    redact_dsn,
    to_postgres,
)
from anyrouter_proxy.storage.report import build_report, format_report
from anyrouter_proxy.storage.report_pg import build_report_pg
from anyrouter_proxy.storage.sqlite import SqliteStore, StoreError
from anyrouter_proxy.storage.store import GENERATION_COLUMNS, INSERT_GENERATION, generation_params
from anyrouter_proxy.types import Usage
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import USAGE, FakeOpenAI
from tests.pg_server import PgServer, free_port, running_pg_server
from tests.retention import GONE, ITEMS_PER_BATCH, KEPT, RESULT, RETENTION_DAYS, seed_batches
from tests.usage_records import RECORDS, full_record, make_record

StartProxy = Callable[[Config], Awaitable[Proxy]]


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


@pytest.fixture
def dsn(pg: PgServer) -> str:
    return pg.new_schema()


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[PostgresStore]:
    s = PostgresStore(dsn, flush_interval_s=0.01)
    await s.open()
    yield s
    await s.close()


async def query(dsn: str, sql: str, *args: Any) -> list[Any]:
    conn = await asyncpg.connect(dsn)
    try:
        return list(await conn.fetch(sql, *args))
    finally:
        await conn.close()


async def count(dsn: str, table: str = "generations") -> int:
    return int((await query(dsn, f"SELECT count(*) AS n FROM {table}"))[0]["n"])


async def ids(dsn: str) -> list[str]:
    return [r["id"] for r in await query(dsn, "SELECT id FROM generations ORDER BY id")]


# -- opening and migrating ---------------------------------------------------------------


async def test_open_creates_schema_and_sets_version(store: PostgresStore) -> None:
    dsn = store.dsn
    tables = {r["tablename"] for r in await query(
        dsn, "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()")}
    assert tables == {"schema_version", "generations", "audit", "spend_carryover", "batches",
                      "batch_items", "activity_daily", "settings", "responses",
                      "reservation_journal", "response_items"}
    indexes = {r["indexname"] for r in await query(
        dsn, "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()")}
    assert {"generations_key_created", "generations_created", "audit_created",
            "batches_key", "responses_created", "response_items_pkey",
            "response_items_response", "response_items_created"} <= indexes
    assert [r["version"] for r in await query(dsn, "SELECT version FROM schema_version")] == [
        SCHEMA_VERSION]
    # The same steps as the SQLite store: adding a migration there needs one here.
    assert SCHEMA_VERSION == usage_store.SCHEMA_VERSION
    columns = [r["column_name"] for r in await query(
        dsn, "SELECT column_name FROM information_schema.columns "
             "WHERE table_name = 'generations' AND table_schema = current_schema() "
             "ORDER BY ordinal_position")]
    assert tuple(columns) == GENERATION_COLUMNS


async def test_reopen_keeps_rows_and_does_not_migrate_again(dsn: str) -> None:
    first = PostgresStore(dsn)
    await first.open()
    first.record(make_record())
    await first.close()
    second = PostgresStore(dsn)
    await second.open()  # CREATE TABLE again would raise "already exists"
    assert await second.get_generation("gen-1", "alice") is not None
    await second.close()


async def test_replicas_starting_together_migrate_once(dsn: str) -> None:
    stores = [PostgresStore(dsn) for _ in range(4)]
    await asyncio.gather(*(s.open() for s in stores))
    assert [r["version"] for r in await query(dsn, "SELECT version FROM schema_version")] == [
        SCHEMA_VERSION]
    stores[0].record(make_record(1))
    await stores[0].flush()
    assert await stores[3].get_generation("gen-1", "alice") is not None  # any replica reads
    for s in stores:
        await s.close()


async def test_a_version_2_database_gains_operator_cost_zero_for_old_rows(dsn: str) -> None:
    from anyrouter_proxy.storage.postgres import MIGRATIONS

    conn = await asyncpg.connect(dsn)
    try:  # the database as the previous release left it
        await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        for step in MIGRATIONS[:2]:
            await conn.execute(step)  # several statements: execute, not a prepared fetch
        await conn.execute("INSERT INTO schema_version VALUES (2)")
    finally:
        await conn.close()
    old_columns = GENERATION_COLUMNS[:-1]
    await query(dsn, f"INSERT INTO generations ({', '.join(old_columns)}) VALUES "
                f"({', '.join(f'${i + 1}' for i in range(len(old_columns)))})",
                *generation_params(make_record(cost=0.5))[:-1])
    store = PostgresStore(dsn)
    await store.open()
    try:
        old = await store.get_generation("gen-1", "alice")
        assert old is not None and (old["total_cost"], old["operator_cost"]) == (0.5, 0.0)
        store.record(make_record(2, operator_cost=0.25))
        new = await store.get_generation("gen-2", "alice")
        assert new is not None and new["operator_cost"] == 0.25
    finally:
        await store.close()
    assert [r["version"] for r in await query(dsn, "SELECT version FROM schema_version")] == [
        SCHEMA_VERSION]


async def test_newer_schema_refuses_naming_both_versions(dsn: str) -> None:
    await query(dsn, "CREATE TABLE schema_version (version INTEGER NOT NULL)")
    await query(dsn, "INSERT INTO schema_version VALUES ($1)", SCHEMA_VERSION + 1)
    with pytest.raises(StoreError, match=rf"version {SCHEMA_VERSION + 1}.*version "
                                         rf"{SCHEMA_VERSION}"):
        await PostgresStore(dsn).open()
    assert await query(dsn, "SELECT tablename FROM pg_tables WHERE tablename = 'generations' "
                       "AND schemaname = current_schema()") \
        == []  # nothing touched


async def test_unreachable_dsn_refuses_without_the_password(pg: PgServer) -> None:
    secret = "s3cret-Pa55word"
    closed = f"postgresql://anyrouter:{secret}@127.0.0.1:{free_port()}/anyrouter"
    with pytest.raises(StoreError, match="cannot connect to usage database") as info:
        await PostgresStore(closed, connect_timeout_s=2).open()
    message = str(info.value)
    assert secret not in message
    assert "postgresql://anyrouter:***@127.0.0.1" in message and "storage.dsn" in message
    missing_db = pg.dsn("no_such_database").replace("postgres@", f"postgres:{secret}@")
    with pytest.raises(StoreError, match="does not exist") as info:
        await PostgresStore(missing_db).open()
    assert secret not in str(info.value)


def test_redact_dsn() -> None:
    assert redact_dsn("postgresql://u:p%40ss@h:5432/db") == "postgresql://u:***@h:5432/db"
    assert redact_dsn("postgres://u@h/db?password=x&sslmode=require") == \
        "postgres://u@h/db?password=***&sslmode=require"
    assert redact_dsn("postgresql://u@h/db") == "postgresql://u@h/db"


def test_placeholders_become_numbered() -> None:
    assert to_postgres("UPDATE t SET a = ?, b = '?' WHERE c = ? AND \"d?\" = ?") == \
        "UPDATE t SET a = $1, b = '?' WHERE c = $2 AND \"d?\" = $3"
    assert to_postgres(INSERT_GENERATION).endswith(
        "ON CONFLICT (id) DO UPDATE SET created_at = EXCLUDED.created_at, key_name = "
        "EXCLUDED.key_name, trace_id = EXCLUDED.trace_id, endpoint = EXCLUDED.endpoint, "
        "model = EXCLUDED.model, provider = EXCLUDED.provider, upstream_model = "
        "EXCLUDED.upstream_model, upstream_id = EXCLUDED.upstream_id, streamed = "
        "EXCLUDED.streamed, cancelled = EXCLUDED.cancelled, finish_reason = "
        "EXCLUDED.finish_reason, status_code = EXCLUDED.status_code, error_code = "
        "EXCLUDED.error_code, tokens_prompt = EXCLUDED.tokens_prompt, tokens_completion = "
        "EXCLUDED.tokens_completion, tokens_cached = EXCLUDED.tokens_cached, "
        "tokens_reasoning = EXCLUDED.tokens_reasoning, tokens_cache_write = "
        "EXCLUDED.tokens_cache_write, usage_source = EXCLUDED.usage_source, cost = "
        "EXCLUDED.cost, latency_ms = EXCLUDED.latency_ms, ttft_ms = EXCLUDED.ttft_ms, "
        "generation_time_ms = EXCLUDED.generation_time_ms, attempts = EXCLUDED.attempts, "
        "operator_cost = EXCLUDED.operator_cost")


# -- writing -----------------------------------------------------------------------------


async def test_row_matches_every_field(store: PostgresStore) -> None:
    assert store.record(full_record()) is True
    await store.flush()
    (row,) = await query(store.dsn, "SELECT * FROM generations")
    assert dict(row) == {
        "id": "gen-full", "created_at": 1_714_564_800.25, "key_name": "bob",
        "trace_id": "trace-1", "endpoint": "messages", "model": "anthropic/claude-sonnet-4",
        "provider": "anthropic", "upstream_model": "claude-sonnet-4-20250514",
        "upstream_id": "msg_123", "streamed": 1, "cancelled": 1, "finish_reason": "length",
        "status_code": 499, "error_code": "client_gone", "tokens_prompt": 11,
        "tokens_completion": 22, "tokens_cached": 3, "tokens_reasoning": 4,
        "tokens_cache_write": 5, "usage_source": "estimated", "cost": 0.0123,
        "latency_ms": 1234.4, "ttft_ms": 56.6, "generation_time_ms": 1100.2,
        "attempts": json.dumps([{"provider": "openai", "status": 503, "latency_ms": 12.3},
                                {"provider": "anthropic", "status": "timeout",
                                 "latency_ms": 30000.0}], separators=(",", ":")),
        "operator_cost": 0.0456,
    }


async def test_defaults_store_nulls(store: PostgresStore) -> None:
    store.record(make_record())
    await store.flush()
    (row,) = await query(store.dsn, "SELECT * FROM generations")
    assert (row["trace_id"], row["provider"], row["ttft_ms"], row["attempts"]) == (
        None, None, None, "[]")


async def test_recording_a_generation_twice_replaces_it(store: PostgresStore) -> None:
    store.record(make_record(1, cancelled=True, cost=0.0))
    store.record(make_record(1, cancelled=False, cost=0.5))  # same batch, same id
    await store.flush()
    store.record(make_record(1, cost=0.75))  # a later batch
    await store.flush()
    rows = await query(store.dsn, "SELECT id, cancelled, cost FROM generations")
    assert [tuple(r) for r in rows] == [("gen-1", 0, 0.75)]
    assert store.write_errors == 0 and store.dropped == 0


async def test_many_records_few_transactions(dsn: str) -> None:
    s = PostgresStore(dsn, flush_interval_s=0.05, batch_max=500)
    await s.open()
    for i in range(2000):
        assert s.record(make_record(i))
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the writer run while requests keep coming
    await s.flush()
    assert await count(dsn) == 2000
    assert 4 <= s.transactions <= 20
    await s.close()


async def test_queue_full_drops_without_blocking(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    s = PostgresStore(dsn, queue_max=3)
    await s.open()
    with caplog.at_level(logging.WARNING, logger="anyrouter_proxy.storage.writer"):
        started = time.monotonic()
        results = [s.record(make_record(i)) for i in range(5)]
        assert s.audit("auth_failed") is True  # audit rows have a bound of their own
        assert time.monotonic() - started < 0.1
    assert results == [True, True, True, False, False]
    assert (s.dropped, s.queue_depth) == (2, 4)
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1  # rate-limited
    await s.flush()
    assert await ids(dsn) == ["gen-0", "gen-1", "gen-2"]
    assert s.record(make_record(9)) is True  # room again once written
    await s.close()


async def test_bad_rows_are_dropped_alone(store: PostgresStore) -> None:
    store.record(make_record(1))
    store.record(make_record(2, usage=Usage(prompt_tokens=2**70)))  # no BIGINT: client side
    # A NOT NULL violation: rejected by the server, in the middle of the same batch.
    store.enqueue("INSERT INTO audit (created_at, event, detail) VALUES (?, ?, ?)",
                  (time.time(), None, "{}"))
    store.record(make_record(3))
    await asyncio.wait_for(store.flush(), 5)
    assert await ids(store.dsn) == ["gen-1", "gen-3"]
    assert store.dropped == 2 and store.write_errors == 1
    assert await count(store.dsn, "audit") == 0


async def test_close_flushes_and_later_records_are_refused(dsn: str) -> None:
    s = PostgresStore(dsn, flush_interval_s=10)  # only close() writes them
    await s.open()
    for i in range(3):
        s.record(make_record(i))
    await s.close()
    assert await count(dsn) == 3
    assert s.record(make_record(9)) is False and s.dropped == 1


async def test_audit_rows(store: PostgresStore) -> None:
    before = time.time()
    assert store.audit("auth_failed", trace_id="t-1", detail={"key_prefix": "sk-ab"})
    assert store.audit("config_reload", detail={"accepted": False, "reason": "bad yaml"})
    await store.flush()
    audit = await query(store.dsn, "SELECT * FROM audit ORDER BY id")
    assert [(r["event"], r["key_name"], r["trace_id"]) for r in audit] == [
        ("auth_failed", None, "t-1"), ("config_reload", None, None)]
    assert json.loads(audit[1]["detail"]) == {"accepted": False, "reason": "bad yaml"}
    assert before <= audit[0]["created_at"] <= time.time()


async def test_writes_resume_after_the_server_restarts(
    pg: PgServer, dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RETRY_MIN_S", 0.02)
    monkeypatch.setattr(writer, "RETRY_MAX_S", 0.2)
    # Trust auth ignores the password; it is there to check that no message shows it.
    dsn = dsn.replace("postgres@", "postgres:s3cret@")
    s = PostgresStore(dsn, flush_interval_s=0.01, queue_max=8, connect_timeout_s=2)
    await s.open()
    s.record(make_record(0))
    await s.flush()
    pg.stop()
    try:
        accepted = [s.record(make_record(i)) for i in range(1, 11)]
        for _ in range(500):
            if s.write_errors:
                break
            await asyncio.sleep(0.01)
        assert s.write_errors >= 1 and s.last_error is not None
        assert "s3cret" not in s.last_error
        assert accepted.count(True) == 8 and s.dropped == 2  # the queue bound holds
        assert s.queue_depth == 8  # kept in memory, not lost
    finally:
        pg.start()
    await asyncio.wait_for(s.flush(), 10)
    assert await ids(dsn) == [f"gen-{i}" for i in range(9)]
    assert s.last_error is None  # recovered
    s.record(make_record(42))
    assert await s.get_generation("gen-42", "alice") is not None
    await s.close()


# -- reading -----------------------------------------------------------------------------


async def test_get_generation_same_shape_as_sqlite(
    store: PostgresStore, tmp_path: Path
) -> None:
    lite = SqliteStore(tmp_path / "u.db")
    await lite.open()
    records = [full_record(), make_record(1), make_record(2, cost=1.0, streamed=True)]
    for rec in records:
        store.record(rec)
        lite.record(rec)
    try:
        for rec in records:
            ours = await store.get_generation(rec.id, rec.key_name)
            assert ours is not None
            assert ours == await lite.get_generation(rec.id, rec.key_name)
            assert [type(v) for v in ours.values()] == [
                type(v) for v in (await lite.get_generation(rec.id, rec.key_name) or {}).values()]
    finally:
        await lite.close()
    full = await store.get_generation("gen-full", "bob")
    assert full is not None and full["created_at"] == "2024-05-01T12:00:00.250Z"
    assert (full["latency"], full["time_to_first_token"], full["streamed"]) == (1234, 57, True)


async def test_get_generation_only_for_its_key(store: PostgresStore) -> None:
    store.record(make_record(1, key_name="alice"))
    await store.flush()
    assert await store.get_generation("gen-1", "mallory") is None
    assert await store.get_generation("gen-1", "alice") is not None


async def test_get_generation_waits_for_a_just_queued_row(dsn: str) -> None:
    s = PostgresStore(dsn, flush_interval_s=30)  # the writer would linger 30 s
    await s.open()
    s.record(make_record(1))
    started = time.monotonic()
    data = await s.get_generation("gen-1", "alice", wait_s=5)
    assert data is not None and data["id"] == "gen-1"
    assert time.monotonic() - started < 2  # flush() cut the linger short
    await s.close()


async def test_unknown_generation_answers_at_once(store: PostgresStore) -> None:
    started = time.monotonic()
    assert await store.get_generation("gen-nope", "alice", wait_s=5) is None
    assert time.monotonic() - started < 1


async def test_spend_by_key_survives_prune(store: PostgresStore) -> None:
    now = time.time()
    store.record(make_record(1, key_name="alice", cost=1.5, created_at=now - 40 * 86400))
    store.record(make_record(2, key_name="alice", cost=0.25, created_at=now))
    store.record(make_record(3, key_name="bob", cost=2.0, created_at=now - 1))
    store.record(make_record(4, key_name="carol", cost=0.5, created_at=now - 50 * 86400))
    await store.flush()
    assert await store.spend_by_key() == {"alice": 1.75, "bob": 2.0, "carol": 0.5}
    assert await store.prune(30) == 2
    assert await ids(store.dsn) == ["gen-2", "gen-3"]
    # A restart rebuilds spend from this: pruning must not give alice her 1.5 back.
    assert await store.spend_by_key() == {"alice": 1.75, "bob": 2.0, "carol": 0.5}
    store.record(make_record(5, key_name="alice", cost=1.0, created_at=now - 31 * 86400))
    await store.flush()
    assert await store.prune(30) == 1  # carried on top of the earlier carry-over
    assert await store.spend_by_key() == {"alice": 2.75, "bob": 2.0, "carol": 0.5}


async def test_spend_since_counts_rows_from_the_instant_on(store: PostgresStore) -> None:
    since = time.time() - 3600
    store.record(make_record(1, key_name="alice", cost=1.5, created_at=since - 0.001))
    store.record(make_record(2, key_name="alice", cost=0.25, created_at=since))
    store.record(make_record(3, key_name="alice", cost=0.5, created_at=since + 10))
    store.record(make_record(4, key_name="bob", cost=2.0, created_at=since + 20))
    store.record(make_record(5, key_name="carol", cost=3.0, created_at=since - 86400))
    await store.flush()
    assert await store.spend_since(since) == {"alice": 0.75, "bob": 2.0}
    assert await store.spend_since(since + 15) == {"bob": 2.0}
    assert await store.spend_since(time.time() + 1) == {}
    await query(store.dsn, "DROP TABLE generations CASCADE")
    with pytest.raises(StoreError, match="cannot read spend from usage database"):
        await store.spend_since(since)


async def test_unreadable_spend_refuses_with_a_store_error(store: PostgresStore) -> None:
    await query(store.dsn, "DROP TABLE spend_carryover")  # start-up must say, not crash
    with pytest.raises(StoreError, match="cannot read spend from usage database"):
        await store.spend_by_key()


async def test_replicas_pruning_together_carry_spend_once(store: PostgresStore) -> None:
    old = time.time() - 40 * 86400
    for i in range(200):
        store.record(make_record(i, cost=0.5, created_at=old))
    await store.flush()
    others = [PostgresStore(store.dsn) for _ in range(3)]
    await asyncio.gather(*(o.open() for o in others))
    deleted = await asyncio.gather(store.prune(30), *(o.prune(30) for o in others))
    assert sum(deleted) == 200
    assert await store.spend_by_key() == {"alice": 100.0}
    for o in others:
        await o.close()


async def test_prune_deletes_old_audit_rows(store: PostgresStore) -> None:
    store.audit("auth_failed")
    await store.flush()
    assert await store.prune(1) == 0
    await query(store.dsn, "UPDATE audit SET created_at = created_at - 2 * 86400")
    assert await store.prune(1) == 1
    assert await count(store.dsn, "audit") == 0


async def test_prune_deletes_old_finished_batches_whole(store: PostgresStore) -> None:
    seed_batches(store)
    await store.flush()
    assert await store.prune(RETENTION_DAYS) == len(GONE) * (1 + ITEMS_PER_BATCH)
    assert {r["id"] for r in await query(store.dsn, "SELECT id FROM batches")} == set(KEPT)
    items = await query(store.dsn, "SELECT batch_id, item, result FROM batch_items")
    assert {r["batch_id"] for r in items} == set(KEPT)  # no prompt or answer left behind
    assert len(items) == len(KEPT) * ITEMS_PER_BATCH
    batches = BatchStore(store)
    assert await batches.load(GONE[0]) is None
    kept = await batches.load("old-in-progress")
    assert kept is not None and kept[0].results[0] == RESULT  # still resumable
    assert await batches.unfinished() == ["old-in-progress", "old-cancelling"]
    assert await store.prune(RETENTION_DAYS) == 0


async def test_retention_task_prunes_in_background(store: PostgresStore) -> None:
    store.record(make_record(1, created_at=time.time() - 10 * 86400))
    store.record(make_record(2, created_at=time.time()))
    await store.flush()
    store.start_retention(7, interval_s=0.01)
    for _ in range(200):
        if await count(store.dsn) == 1:
            break
        await asyncio.sleep(0.01)
    assert await ids(store.dsn) == ["gen-2"]
    store.start_retention(None)  # turning retention off stops the task
    assert store.retention.task is None


async def test_batch_tables_through_enqueue_and_fetch(store: PostgresStore) -> None:
    batches = BatchStore(store)
    batch = BatchRecord(id="batch-1", key_name="alice", mode="async", total=3,
                        trace_id="t-b")
    items = [{"custom_id": "a", "body": {"x": 1}}, {"custom_id": 7}, "plain"]
    batches.create(batch, items)
    batches.started("batch-1", 0)
    batches.done("batch-1", 0, {"status": 200, "body": {"ok": True}})
    batches.started("batch-1", 1)
    assert await batches.unfinished() == []  # not flushed: unfinished() reads committed rows
    await store.flush()
    assert await batches.unfinished() == ["batch-1"]
    loaded = await batches.load("batch-1")
    assert loaded is not None
    record, pairs = loaded
    assert (record.id, record.key_name, record.mode, record.total, record.status,
            record.trace_id, record.completed_at) == (
        "batch-1", "alice", "async", 3, "in_progress", "t-b", None)
    assert record.created_at == batch.created_at
    assert record.results == [{"status": 200, "body": {"ok": True}}, None, None]
    assert pairs == [(items[0], "done"), (items[1], "running"), (items[2], "pending")]
    rows = await store.fetch("SELECT custom_id FROM batch_items WHERE batch_id = ? "
                             "ORDER BY idx", ("batch-1",))
    assert [r["custom_id"] for r in rows] == ["a", None, None]
    batch.status, batch.completed_at = "completed", time.time()
    batches.finish(batch)
    await store.flush()
    assert await batches.unfinished() == []
    loaded = await batches.load("batch-1")
    assert loaded is not None and loaded[0].status == "completed"
    assert loaded[0].completed_at == batch.completed_at
    assert await batches.load("batch-nope") is None


# -- the usage report --------------------------------------------------------------------


@pytest.fixture
def report_dsn(dsn: str) -> str:
    async def write() -> None:
        store = PostgresStore(dsn)
        await store.open()
        for record in RECORDS:
            assert store.record(record)
        await store.close()

    asyncio.run(write())
    return dsn


@pytest.fixture
def report_sqlite(tmp_path: Path) -> Path:
    path = tmp_path / "usage.db"

    async def write() -> None:
        store = SqliteStore(path)
        await store.open()
        for record in RECORDS:
            assert store.record(record)
        await store.close()

    asyncio.run(write())
    return path


def test_report_by_model(report_dsn: str) -> None:
    assert build_report_pg(report_dsn) == [
        {"model": "anthropic/claude-sonnet-4", "requests": 1, "errors": 0, "cancelled": 1,
         "tokens_prompt": 1000, "tokens_completion": 200, "tokens_cached": 10,
         "tokens_reasoning": 5, "cost": 2.0, "avg_latency_ms": 1000.0},
        {"model": "openai/gpt-4o-mini", "requests": 3, "errors": 2, "cancelled": 0,
         "tokens_prompt": 110, "tokens_completion": 55, "tokens_cached": 0,
         "tokens_reasoning": 0, "cost": 0.75, "avg_latency_ms": 134.0},
    ]


@pytest.mark.parametrize("by", ["key", "model", "provider", "day", "month", "key,model",
                                "day,provider"])
@pytest.mark.parametrize(("since", "until"), [
    (None, None), (1_714_521_600.0 + 86_400, 1_714_521_600.0 + 2 * 86_400 + 1),
    (1_714_521_600.0 + 10 * 86_400, None)])
def test_report_same_as_sqlite(report_dsn: str, report_sqlite: Path, by: str,
                               since: float | None, until: float | None) -> None:
    ours = build_report_pg(report_dsn, by=by, since=since, until=until)
    assert ours == build_report(report_sqlite, by=by, since=since, until=until)
    for fmt in ("table", "csv", "json"):
        assert format_report(ours, by=by, fmt=fmt) == format_report(
            build_report(report_sqlite, by=by, since=since, until=until), by=by, fmt=fmt)


def test_report_filters_like_sqlite(report_dsn: str, report_sqlite: Path) -> None:
    for filters in (Filters(key="bob"), Filters(model="openai/gpt-4o-mini", provider="openai")):
        ours = build_report_pg(report_dsn, by="key,model", filters=filters)
        assert ours and ours == build_report(report_sqlite, by="key,model", filters=filters)


def test_report_orders_like_sqlite(report_dsn: str) -> None:
    # Ties on cost fall back to byte order with the missing provider first, as in SQLite.
    report = build_report_pg(report_dsn, by="provider")
    assert [(r["provider"], r["requests"]) for r in report] == [
        ("anthropic", 1), ("openai", 2), (None, 1)]
    assert [r["day"] for r in build_report_pg(report_dsn, by="day")] == [
        "2024-05-01", "2024-05-02", "2024-05-03"]


def test_report_refuses_unknown_group_and_bad_databases(pg: PgServer, dsn: str) -> None:
    with pytest.raises(ValueError, match="key, model, provider, day, month"):
        build_report_pg(dsn, by="color")
    with pytest.raises(ValueError, match='relation "generations" does not exist'):
        build_report_pg(dsn)  # a database that is not a usage log
    closed = f"postgresql://u:hunter2@127.0.0.1:{free_port()}/x"
    with pytest.raises(ValueError, match="cannot connect to usage database") as info:
        build_report_pg(closed, timeout_s=2)
    assert "hunter2" not in str(info.value)


def test_usage_cli_reads_the_configured_postgres(
    report_dsn: str, config_factory: ConfigFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_factory(storage={"backend": "postgres", "dsn": report_dsn})
    assert main(["usage", "--config", str(config.path), "--by", "key",
                 "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["key"], r["requests"], r["cost"]) for r in rows] == [
        ("bob", 2, 2.0), ("alice", 2, 0.75)]
    assert main(["usage", "--config", str(config.path), "--by", "day",
                 "--since", "2024-05-02", "--until", "2024-05-02"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in out] == ["day", "2024-05-02", "TOTAL"]
    # --db is always a SQLite file, whatever the config says.
    assert main(["usage", "--config", str(config.path), "--db",
                 str(config.path.parent / "nope.db")]) == 1  # type: ignore[union-attr]
    assert "usage database not found" in capsys.readouterr().err


# -- config ------------------------------------------------------------------------------


def test_config_backend_and_dsn(config_factory: ConfigFactory) -> None:
    assert config_factory().storage.backend == "sqlite"
    config = config_factory(storage={"backend": "postgres",
                                     "dsn": "postgresql://u:pw@127.0.0.1/anyrouter"})
    assert (config.storage.backend, config.storage.dsn) == (
        "postgres", "postgresql://u:pw@127.0.0.1/anyrouter")
    assert "pw" not in repr(config.storage)
    with pytest.raises(ConfigError, match="'dsn' is a required property"):
        config_factory(storage={"backend": "postgres"})
    with pytest.raises(ConfigError, match="must be a postgresql:// URL") as info:
        config_factory(storage={"backend": "postgres", "dsn": "mysql://u:secretpw@h/db"})
    assert "secretpw" not in str(info.value)
    with pytest.raises(ConfigError, match=r"storage\.backend"):
        config_factory(storage={"backend": "mysql"})


# -- the proxy on PostgreSQL -------------------------------------------------------------


async def test_proxy_serves_and_restarts_on_postgres(
    dsn: str, config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy
) -> None:
    config = config_factory(
        storage={"backend": "postgres", "dsn": dsn},
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {
            "pricing": {"prompt": 0.15, "completion": 0.60, "cached_prompt": 0.075},
            "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10}})
    proxy = await start_proxy(config)
    assert isinstance(proxy.app[STORE], PostgresStore)
    async with aiohttp.ClientSession() as session:
        async with session.post(proxy.url("/api/v1/chat/completions"), headers=auth(),
                                json={"model": "openai/gpt-4o-mini",
                                      "messages": [{"role": "user", "content": "hi"}]}) as r:
            assert r.status == 200
            gen_id = r.headers["X-AnyRouter-Generation-Id"]
        async with session.get(proxy.url(f"/api/v1/generation/{gen_id}"),
                               headers=auth()) as r:
            assert r.status == 200
            row = (await r.json())["data"]
    cost = (8 * 0.15 + 3 * 0.075 + 5 * 0.60) / 1_000_000
    assert row["id"] == gen_id and row["provider_name"] == "openai"
    assert row["tokens_prompt"] == USAGE["prompt_tokens"]
    assert row["native_tokens_cached"] == 3
    assert row["total_cost"] == pytest.approx(cost, rel=1e-9)
    (stored,) = await query(dsn, "SELECT key_name, cost FROM generations WHERE id = $1", gen_id)
    assert (stored["key_name"], stored["cost"]) == ("alice", row["total_cost"])
    await proxy.server.close()  # the first replica goes away (its store closes)

    again = await start_proxy(config)  # a restart on the same database
    async with aiohttp.ClientSession() as session:
        async with session.get(again.url("/api/v1/credits"), headers=auth()) as r:
            assert r.status == 200
            credits = (await r.json())["data"]
        async with session.get(again.url(f"/api/v1/generation/{gen_id}"),
                               headers=auth()) as r:
            assert r.status == 200 and (await r.json())["data"] == row
    assert credits["total_credits"] == 10
    assert credits["total_usage"] == pytest.approx(cost, rel=1e-9)
