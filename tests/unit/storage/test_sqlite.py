"""SqliteStore against real SQLite files in tmp_path."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from anyrouter_proxy.storage import sqlite as usage_store
from anyrouter_proxy.storage import writer
from anyrouter_proxy.storage.batches import BatchStore
from anyrouter_proxy.storage.sqlite import SCHEMA_VERSION, SqliteStore, StoreError
from anyrouter_proxy.storage.store import GENERATION_COLUMNS, INSERT_GENERATION, generation_params
from anyrouter_proxy.types import Usage
from tests.retention import GONE, ITEMS_PER_BATCH, KEPT, RESULT, RETENTION_DAYS, seed_batches
from tests.usage_records import full_record, make_record


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    s = SqliteStore(tmp_path / "data" / "usage.db", flush_interval_s=0.01)
    await s.open()
    yield s
    await s.close()


def rows(path: Path, sql: str = "SELECT * FROM generations ORDER BY id") -> list[sqlite3.Row]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        result = db.execute(sql).fetchall()
    db.close()
    return result


def count(path: Path, table: str = "generations") -> int:
    return int(rows(path, f"SELECT count(*) AS n FROM {table}")[0]["n"])


# -- opening and migrating ---------------------------------------------------------------


async def test_open_creates_schema_and_sets_user_version(store: SqliteStore) -> None:
    assert store.path.is_file()  # parent directory created too
    tables = {r["name"] for r in rows(store.path, "SELECT name FROM sqlite_master")}
    assert {"generations", "audit", "spend_carryover",
            "generations_key_created", "generations_created"} <= tables
    assert rows(store.path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION
    assert rows(store.path, "PRAGMA journal_mode")[0][0] == "wal"
    columns = {r["name"] for r in rows(store.path, "PRAGMA table_info(generations)")}
    assert set(GENERATION_COLUMNS) == columns


async def test_reopen_keeps_rows_and_does_not_migrate_again(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    first = SqliteStore(path)
    await first.open()
    first.record(make_record())
    await first.close()
    second = SqliteStore(path)
    await second.open()  # CREATE TABLE again would raise "table already exists"
    assert await second.get_generation("gen-1", "alice") is not None
    await second.close()


async def test_a_version_2_database_gains_operator_cost_zero_for_old_rows(
        tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    db = sqlite3.connect(path, isolation_level=None)
    for step in usage_store.MIGRATIONS[:2]:
        db.executescript(step)
    db.execute("PRAGMA user_version = 2")
    old_columns = GENERATION_COLUMNS[:-1]
    assert GENERATION_COLUMNS[-1] == "operator_cost"
    db.execute(f"INSERT INTO generations ({', '.join(old_columns)}) VALUES "
               f"({', '.join('?' * len(old_columns))})",
               generation_params(make_record(cost=0.5))[:-1])
    db.close()
    store = SqliteStore(path)
    await store.open()
    try:
        old = await store.get_generation("gen-1", "alice")
        assert old is not None and (old["total_cost"], old["operator_cost"]) == (0.5, 0.0)
        store.record(make_record(2, operator_cost=0.25))
        new = await store.get_generation("gen-2", "alice")
        assert new is not None and new["operator_cost"] == 0.25
    finally:
        await store.close()
    assert rows(path, "PRAGMA user_version")[0][0] == SCHEMA_VERSION == 7


async def test_newer_schema_refuses_naming_both_versions(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(StoreError, match=rf"version {SCHEMA_VERSION + 1}.*version "
                                         rf"{SCHEMA_VERSION}"):
        await SqliteStore(path).open()


async def test_corrupt_file_refuses(tmp_path: Path) -> None:
    path = tmp_path / "u.db"
    path.write_bytes(b"this is not sqlite " * 300)
    with pytest.raises(StoreError, match="corrupt"):
        await SqliteStore(path).open()
    assert path.read_bytes().startswith(b"this is not sqlite")  # left for the operator


async def test_unopenable_path_refuses(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(StoreError, match="cannot open"):
        await SqliteStore(tmp_path / "dir.db").open()


async def test_uncreatable_directory_refuses(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    with pytest.raises(StoreError, match="cannot create the directory"):
        await SqliteStore(tmp_path / "file" / "u.db").open()


# -- writing -----------------------------------------------------------------------------


async def test_row_matches_every_field(store: SqliteStore) -> None:
    assert store.record(full_record()) is True
    await store.flush()
    (row,) = rows(store.path)
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


async def test_defaults_store_nulls(store: SqliteStore) -> None:
    store.record(make_record())
    await store.flush()
    (row,) = rows(store.path)
    assert (row["trace_id"], row["provider"], row["ttft_ms"], row["attempts"]) == (
        None, None, None, "[]")


async def test_many_records_few_transactions(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "u.db", flush_interval_s=0.05, batch_max=500)
    await s.open()
    for i in range(2000):
        assert s.record(make_record(i))
        if i % 100 == 0:
            await asyncio.sleep(0)  # let the writer run while requests keep coming
    await s.flush()
    assert count(s.path) == 2000
    assert 4 <= s.transactions <= 20
    await s.close()


def test_inserts_are_grouped_into_statements_of_many_rows() -> None:
    """sqlite3's executemany gives up the GIL for every row (and at saturation waited for
    it each time): INSERTs go out as a few statements of many rows instead."""
    width = len(GENERATION_COLUMNS)
    rows = [tuple(f"{n}.{c}" for c in range(width)) for n in range(300)]
    statements = usage_store.multi_row(INSERT_GENERATION, rows)
    assert statements is not None
    assert [len(params) // width for _, params in statements] == [128, 128, 32, 8, 4]
    assert [p for _, params in statements for p in params] == [v for r in rows for v in r]
    for sql, params in statements:
        assert sql.count("?") == len(params)
    assert usage_store.multi_row("UPDATE batches SET status = ? WHERE id = ?", [("a", "b")]) \
        is None
    assert usage_store.multi_row(
        "INSERT INTO t (a) VALUES (?) ON CONFLICT (a) DO NOTHING", [(1,)]) is None


async def test_a_large_batch_lands_row_for_row(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "u.db", flush_interval_s=0.05, batch_max=2000)
    await s.open()
    for i in range(1000):
        assert s.record(make_record(i, model=f"m-{i}", usage=Usage(prompt_tokens=i,
                                                                  completion_tokens=2 * i)))
    await s.flush()
    stored = {r["id"]: r for r in rows(s.path)}
    assert len(stored) == 1000
    for i in (0, 127, 128, 500, 999):
        row = stored[f"gen-{i}"]
        assert (row["model"], row["tokens_prompt"], row["tokens_completion"]) == \
            (f"m-{i}", i, 2 * i)
    assert s.transactions <= 3
    await s.close()


async def test_queue_full_drops_without_blocking(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    s = SqliteStore(tmp_path / "u.db", queue_max=3)
    await s.open()
    with caplog.at_level(logging.WARNING, logger="anyrouter_proxy.storage.writer"):
        results = [s.record(make_record(i)) for i in range(5)]
        assert s.audit("auth_failed") is True  # audit rows have a bound of their own
    assert results == [True, True, True, False, False]
    assert (s.dropped, s.queue_depth) == (2, 4)
    assert s.dropped_by_kind == {"billing": 2, "audit": 0}
    assert len([r for r in caplog.records if "queue full" in r.message]) == 1  # rate-limited
    await s.flush()
    assert [r["id"] for r in rows(s.path)] == ["gen-0", "gen-1", "gen-2"]
    assert s.record(make_record(9)) is True  # room again once written
    await s.close()


async def test_stalled_writer_does_not_stall_record(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = asyncio.Event()
    real_write = store.write_batch
    calls = 0

    async def stalled(items: Sequence[Any]) -> None:
        nonlocal calls
        calls += 1
        await release.wait()
        await real_write(items)

    monkeypatch.setattr(store, "write_batch", stalled)
    store.writer.queue_max = 50
    store.record(make_record(0))
    while calls == 0:  # the writer now holds gen-0 and hangs on the disk
        await asyncio.sleep(0.005)
    started = time.monotonic()
    accepted = [store.record(make_record(i)) for i in range(1, 60)]
    assert time.monotonic() - started < 0.5  # record() does not wait for the writer
    assert accepted.count(True) == 49 and store.dropped == 10
    release.set()
    await store.flush()
    assert count(store.path) == 50


async def loop_lag() -> float:
    start = time.monotonic()
    await asyncio.sleep(0.01)
    return time.monotonic() - start - 0.01


async def test_locked_database_is_retried_and_rows_land(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RETRY_MIN_S", 0.01)
    # SQLite waits out a lock for busy_timeout inside the call; the loop must not wait too.
    s = SqliteStore(tmp_path / "u.db", flush_interval_s=0.01, busy_timeout_s=0.5)
    await s.open()
    other = sqlite3.connect(s.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # another process holds the write lock
    try:
        for i in range(5):
            assert s.record(make_record(i))
        worst = 0.0
        while s.write_errors < 1:
            worst = max(worst, await loop_lag())
        assert worst < 0.25  # a loop blocked by the writer would lag 0.5 s
        assert s.last_error is not None and "locked" in s.last_error
        assert s.queue_depth == 5  # kept in memory, not lost
        assert s.record(make_record(5))  # and the request path still records
    finally:
        other.execute("ROLLBACK")
        other.close()
    await asyncio.wait_for(s.flush(), 5)
    assert count(s.path) == 6
    assert s.last_error is None  # recovered
    await s.close()


async def test_read_only_database_is_retried_and_rows_land(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(writer, "RETRY_MIN_S", 0.01)
    assert store._wdb is not None
    # writes fail like a read-only mount
    await store._wdb.run(lambda db: db.execute("PRAGMA query_only = ON"))
    store.record(make_record(1))
    store.audit("reload", detail={"accepted": True})
    while store.write_errors == 0:
        await asyncio.sleep(0.01)
    assert store.last_error is not None and "readonly" in store.last_error
    assert count(store.path) == 0
    await store._wdb.run(lambda db: db.execute("PRAGMA query_only = OFF"))
    await asyncio.wait_for(store.flush(), 5)
    assert (count(store.path), count(store.path, "audit")) == (1, 1)


async def test_bad_row_is_dropped_alone(store: SqliteStore) -> None:
    store.record(make_record(1))
    store.record(make_record(2, usage=Usage(prompt_tokens=2**70)))  # no SQLite integer
    store.record(make_record(3))
    await asyncio.wait_for(store.flush(), 5)
    assert [r["id"] for r in rows(store.path)] == ["gen-1", "gen-3"]
    assert store.dropped == 1 and store.write_errors == 1


async def test_close_flushes_and_later_records_are_refused(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "u.db", flush_interval_s=10)  # only close() writes them
    await s.open()
    for i in range(3):
        s.record(make_record(i))
    await s.close()
    assert count(s.path) == 3
    assert s.record(make_record(9)) is False and s.dropped == 1


async def test_audit_rows(store: SqliteStore) -> None:
    before = time.time()
    assert store.audit("auth_failed", trace_id="t-1", detail={"key_prefix": "sk-ab"})
    assert store.audit("config_reload", detail={"accepted": False, "reason": "bad yaml"})
    await store.flush()
    audit = rows(store.path, "SELECT * FROM audit ORDER BY id")
    assert [(r["event"], r["key_name"], r["trace_id"]) for r in audit] == [
        ("auth_failed", None, "t-1"), ("config_reload", None, None)]
    assert json.loads(audit[1]["detail"]) == {"accepted": False, "reason": "bad yaml"}
    assert before <= audit[0]["created_at"] <= time.time()


# -- reading -----------------------------------------------------------------------------


async def test_get_generation_openrouter_shape(store: SqliteStore) -> None:
    store.record(full_record())
    data = await store.get_generation("gen-full", "bob")
    assert data == {
        "id": "gen-full", "key_name": "bob", "model": "anthropic/claude-sonnet-4",
        "provider_name": "anthropic",
        "upstream_model": "claude-sonnet-4-20250514", "upstream_id": "msg_123",
        "total_cost": 0.0123, "usage": 0.0123, "operator_cost": 0.0456, "tokens_prompt": 11,
        "tokens_completion": 22,
        "native_tokens_prompt": 11, "native_tokens_completion": 22, "native_tokens_cached": 3,
        "native_tokens_reasoning": 4, "latency": 1234, "generation_time": 1100,
        "time_to_first_token": 57, "streamed": True, "cancelled": True,
        "finish_reason": "length", "status_code": 499, "error_code": "client_gone",
        "created_at": "2024-05-01T12:00:00.250Z", "endpoint": "messages", "trace_id": "trace-1",
        "usage_source": "estimated", "status": "cancelled",
        "attempts": [{"provider": "openai", "status": 503, "latency_ms": 12.3},
                     {"provider": "anthropic", "status": "timeout", "latency_ms": 30000.0}],
    }


async def test_get_generation_only_for_its_key(store: SqliteStore) -> None:
    store.record(make_record(1, key_name="alice"))
    await store.flush()
    assert await store.get_generation("gen-1", "mallory") is None
    assert await store.get_generation("gen-1", "alice") is not None


async def test_get_generation_waits_for_a_just_queued_row(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "u.db", flush_interval_s=30)  # the writer would linger 30 s
    await s.open()
    s.record(make_record(1))
    started = time.monotonic()
    data = await s.get_generation("gen-1", "alice", wait_s=5)
    assert data is not None and data["id"] == "gen-1"
    assert time.monotonic() - started < 2  # flush() cut the linger short
    await s.close()


async def test_unknown_generation_answers_at_once(store: SqliteStore) -> None:
    started = time.monotonic()
    assert await store.get_generation("gen-nope", "alice", wait_s=5) is None
    assert time.monotonic() - started < 1


async def test_get_generation_gives_up_after_wait_s(
    store: SqliteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def never(items: Sequence[Any]) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(store, "write_batch", never)
    store.record(make_record(1))
    started = time.monotonic()
    assert await store.get_generation("gen-1", "alice", wait_s=0.2) is None
    assert 0.15 < time.monotonic() - started < 1.5
    store.writer.close_timeout_s = 0.1  # the stuck row must not hang the fixture's close()


async def test_spend_by_key_survives_prune(store: SqliteStore) -> None:
    now = time.time()
    store.record(make_record(1, key_name="alice", cost=1.5, created_at=now - 40 * 86400))
    store.record(make_record(2, key_name="alice", cost=0.25, created_at=now))
    store.record(make_record(3, key_name="bob", cost=2.0, created_at=now - 1))
    await store.flush()
    assert await store.spend_by_key() == {"alice": 1.75, "bob": 2.0}
    assert await store.prune(30) == 1
    assert [r["id"] for r in rows(store.path)] == ["gen-2", "gen-3"]
    # A restart rebuilds spend from this: pruning must not give alice her 1.5 back.
    assert await store.spend_by_key() == {"alice": 1.75, "bob": 2.0}


async def test_spend_since_counts_rows_from_the_instant_on(store: SqliteStore) -> None:
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


def test_spend_since_searches_the_created_at_index(tmp_path: Path) -> None:
    """A range of created_at, not a walk of every row, whatever the table holds."""
    with sqlite3.connect(tmp_path / "plan.db") as db:
        for step in usage_store.MIGRATIONS:
            db.executescript(step)
        plan = " ".join(str(row[-1]) for row in
                        db.execute("EXPLAIN QUERY PLAN " + usage_store._SPEND_SINCE, (0.0,)))
    db.close()
    assert "SEARCH generations USING INDEX generations_created (created_at>?)" in plan


async def test_prune_deletes_old_audit_rows(store: SqliteStore) -> None:
    store.audit("auth_failed")
    await store.flush()
    assert await store.prune(1) == 0
    with sqlite3.connect(store.path) as db:
        db.execute("UPDATE audit SET created_at = created_at - 2 * 86400")
    db.close()
    assert await store.prune(1) == 1
    assert count(store.path, "audit") == 0


async def test_prune_deletes_old_finished_batches_whole(store: SqliteStore) -> None:
    seed_batches(store)
    await store.flush()
    assert await store.prune(RETENTION_DAYS) == len(GONE) * (1 + ITEMS_PER_BATCH)
    assert {r["id"] for r in rows(store.path, "SELECT id FROM batches")} == set(KEPT)
    items = rows(store.path, "SELECT batch_id, item, result FROM batch_items")
    assert {r["batch_id"] for r in items} == set(KEPT)  # no prompt or answer left behind
    assert len(items) == len(KEPT) * ITEMS_PER_BATCH
    batches = BatchStore(store)
    assert await batches.load(GONE[0]) is None
    kept = await batches.load("old-in-progress")
    assert kept is not None and kept[0].results[0] == RESULT  # still resumable
    assert await batches.unfinished() == ["old-in-progress", "old-cancelling"]
    assert await store.prune(RETENTION_DAYS) == 0


async def test_retention_task_prunes_in_background(store: SqliteStore) -> None:
    store.record(make_record(1, created_at=time.time() - 10 * 86400))
    store.record(make_record(2, created_at=time.time()))
    await store.flush()
    store.start_retention(7, interval_s=0.01)
    for _ in range(200):
        if count(store.path) == 1:
            break
        await asyncio.sleep(0.01)
    assert [r["id"] for r in rows(store.path)] == ["gen-2"]
    store.start_retention(None)  # turning retention off stops the task
    assert store.retention.task is None
