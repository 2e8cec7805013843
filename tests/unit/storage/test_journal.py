"""The reservation journal (journal.py) through Store and PostgresStore, against
a real SQLite file and a real PostgreSQL (tests/pg_server.py); and the usage queue's
bounds by kind. A "process that died" is a store closed without its requests' usage rows:
what SIGKILL leaves behind (tests/e2e/test_interrupted.py kills a real process)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest

from anyrouter_proxy.storage.postgres import PostgresStore
from anyrouter_proxy.storage.sqlite import MIGRATIONS, SqliteStore
from anyrouter_proxy.storage.store import Store
from anyrouter_proxy.types import GenerationRecord, Interrupted, Usage
from tests.pg_server import PgServer, running_pg_server

Query = Callable[[str], Awaitable[list[tuple[Any, ...]]]]


def record(n: int, cost: float = 0.0, key: str = "alice") -> GenerationRecord:
    return GenerationRecord(id=f"gen-{n}", created_at=1_714_564_800.0 + n, key_name=key,
                            endpoint="chat", model="openai/gpt-4o-mini", streamed=True,
                            trace_id=f"trace-{n}", cost=cost,
                            usage=Usage(prompt_tokens=10, completion_tokens=5))


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


class Backend:
    """Stores on one database (a SQLite file or a PostgreSQL schema) and raw reads of it."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where
        self.opened: list[Store] = []

    async def store(self, **options: Any) -> Store:
        options.setdefault("flush_interval_s", 0.01)
        s: Store = (PostgresStore(self.where, **options) if self.kind == "postgres"
                         else SqliteStore(Path(self.where), **options))
        await s.open()
        self.opened.append(s)
        return s

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        if self.kind == "postgres":
            conn = await asyncpg.connect(self.where)
            try:
                return [tuple(r) for r in await conn.fetch(sql)]
            finally:
                await conn.close()
        db = sqlite3.connect(self.where)
        try:
            return [tuple(r) for r in db.execute(sql).fetchall()]
        finally:
            db.close()


@pytest.fixture(params=["sqlite", "postgres"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    if request.param == "postgres":
        where = request.getfixturevalue("pg").new_schema()
    else:
        where = str(tmp_path / "usage.db")
    b = Backend(request.param, where)
    yield b
    for s in b.opened:
        await s.close()


JOURNAL = "SELECT id, key_name, endpoint, model, streamed, reserved, prompt_estimate, " \
          "trace_id FROM reservation_journal ORDER BY id"


async def test_journal_row_lives_until_the_usage_row_is_written(backend: Backend) -> None:
    s = await backend.store()
    s.journal(record(1), 0.25, 42)
    await s.flush()
    assert await backend.query(JOURNAL) == [
        ("gen-1", "alice", "chat", "openai/gpt-4o-mini", 1, 0.25, 42, "trace-1")]
    s.record(record(1, cost=0.01))
    await s.flush()
    assert await backend.query(JOURNAL) == []
    assert await backend.query("SELECT id, cost FROM generations") == [("gen-1", 0.01)]


async def test_many_journal_rows_go_with_their_usage_rows_in_one_batch(
        backend: Backend) -> None:
    s = await backend.store()
    for n in range(300):
        s.journal(record(n), 0.25, 42)
    await s.flush()
    for n in range(300):
        if n != 7:  # still running
            s.record(record(n, cost=0.01))
    await s.flush()
    assert await backend.query("SELECT id FROM reservation_journal") == [("gen-7",)]
    assert len(await backend.query("SELECT id FROM generations")) == 299


async def test_request_ending_before_its_journal_row_is_written_writes_none(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    s = await backend.store(flush_interval_s=5)
    statements: list[str] = []
    writer = cast(SqliteStore | PostgresStore, s).writer
    plan = writer.plan

    def spy(items: Sequence[Any]) -> list[tuple[str, list[tuple[Any, ...]]]]:
        out = plan(items)
        statements.extend(sql for sql, _ in out)
        return out

    monkeypatch.setattr(writer, "plan", spy)
    s.journal(record(1), 0.25, 42)
    s.journal(record(2), 0.5, 42)
    assert s.queue_depth == 2
    s.record(record(1, cost=0.01))
    assert s.queue_depth == 2  # gen-1's journal row will never be written
    await s.flush()
    assert await backend.query("SELECT id FROM reservation_journal") == [("gen-2",)]
    assert not any("DELETE" in sql for sql in statements)
    s.record(record(2, cost=0.02))
    await s.flush()
    assert [sql for sql in statements if "DELETE" in sql] == [
        "DELETE FROM reservation_journal WHERE id IN (?)"]
    assert s.queue_depth == 0


async def test_a_gone_process_requests_become_interrupted_rows(backend: Backend) -> None:
    dead = await backend.store()
    dead.journal(record(1), 0.25, 42)
    dead.journal(record(2, key="bob"), 0.5, 7)
    dead.journal(record(3), 0.125, 1)
    dead.record(record(3, cost=0.01))  # finished: not interrupted
    await dead.flush()
    dead.journal(record(4), 0.75, 1)
    await dead.flush()
    await dead.close()  # what it leaves behind: the journal rows of gen-1, 2 and 4

    later = await backend.store()
    found = await later.recover_interrupted()
    assert sorted(found) == [Interrupted("gen-1", "alice", 0.25),
                             Interrupted("gen-2", "bob", 0.5),
                             Interrupted("gen-4", "alice", 0.75)]
    assert await backend.query("SELECT id FROM reservation_journal") == []
    assert await later.spend_by_key() == {"alice": pytest.approx(0.25 + 0.01 + 0.75),
                                          "bob": 0.5}
    data = await later.get_generation("gen-1", "alice")
    assert data is not None
    assert (data["status"], data["status_code"], data["error_code"]) == (
        "interrupted", 500, "interrupted")
    assert (data["total_cost"], data["tokens_prompt"], data["tokens_completion"]) == (
        0.25, 42, 0)
    assert (data["usage_source"], data["streamed"], data["trace_id"]) == (
        "estimated", True, "trace-1")
    assert await later.recover_interrupted() == []  # once


async def test_a_running_process_requests_are_left_alone(backend: Backend) -> None:
    running = await backend.store()
    running.journal(record(1), 0.25, 42)
    await running.flush()
    beside = await backend.store()
    assert await beside.recover_interrupted() == []
    assert await backend.query("SELECT id FROM reservation_journal") == [("gen-1",)]
    running.record(record(1, cost=0.01))
    await running.flush()
    assert await backend.query("SELECT id, status_code FROM generations") == [("gen-1", 200)]


async def test_a_usage_row_dropped_is_charged_at_its_reservation_next_start(
        backend: Backend) -> None:
    s = await backend.store(queue_max=1)
    s.journal(record(1), 0.25, 42)
    await s.flush()
    cast(SqliteStore | PostgresStore, s).writer.queue_max = 0  # full: the usage row is dropped
    assert s.record(record(1, cost=0.01)) is False
    assert s.dropped_by_kind == {"billing": 1, "audit": 0}
    await s.close()
    later = await backend.store()
    assert await later.recover_interrupted() == [Interrupted("gen-1", "alice", 0.25)]


async def test_a_usage_row_dropped_before_its_journal_row_was_written_is_charged_too(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    s = await backend.store(queue_max=2)
    release = asyncio.Event()
    write = s.write_batch

    async def stalled(items: Sequence[Any]) -> None:  # the log is down for a while
        await release.wait()
        await write(items)

    monkeypatch.setattr(s, "write_batch", stalled)
    s.record(record(0, cost=0.01))  # waits in the writer
    s.journal(record(1), 0.25, 42)
    s.journal(record(2), 0.5, 42)
    assert s.record(record(2, cost=0.02)) is True
    assert s.record(record(1, cost=0.01)) is False  # the queue is full: dropped
    release.set()
    await s.flush()
    # gen-1's journal row was written once the log recovered; gen-2's never was.
    assert await backend.query("SELECT id FROM reservation_journal") == [("gen-1",)]
    assert sorted(await backend.query("SELECT id FROM generations")) == [("gen-0",),
                                                                          ("gen-2",)]
    await s.close()
    later = await backend.store()
    assert await later.recover_interrupted() == [Interrupted("gen-1", "alice", 0.25)]


async def test_audit_rows_never_take_the_room_of_billing_rows(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    s = await backend.store(queue_max=5, audit_queue_max=3)
    release = asyncio.Event()
    write = s.write_batch

    async def stalled(items: Sequence[Any]) -> None:
        await release.wait()
        await write(items)

    monkeypatch.setattr(s, "write_batch", stalled)
    audits = []
    for n in range(5):
        for _ in range(4):  # a flood of refused keys between requests
            audits.append(s.audit("auth_failed", detail={"key_prefix": "sk-bad"}))
        assert s.record(record(n, cost=0.01)) is True
    assert audits.count(True) == 3
    assert s.dropped_by_kind == {"billing": 0, "audit": 17} and s.dropped == 17
    assert s.record(record(9)) is False  # the billing bound itself still holds
    assert s.dropped_by_kind == {"billing": 1, "audit": 17}
    release.set()
    await s.flush()
    assert len(await backend.query("SELECT id FROM generations")) == 5
    assert len(await backend.query("SELECT id FROM audit")) == 3


async def test_spend_snapshot_counts_rows_not_yet_written(
        backend: Backend, monkeypatch: pytest.MonkeyPatch) -> None:
    s = await backend.store()
    s.record(record(1, cost=0.5))
    await s.flush()
    release = asyncio.Event()
    write = s.write_batch

    async def stalled(items: Sequence[Any]) -> None:
        await release.wait()
        await write(items)

    monkeypatch.setattr(s, "write_batch", stalled)
    s.record(record(2, cost=0.25))
    s.record(record(3, cost=0.125, key="bob"))
    cut: list[int] = []
    snapshot = await s.spend_snapshot(lambda: cut.append(s.queue_depth))
    assert snapshot == {"alice": 0.75, "bob": 0.125} and cut == [2]
    release.set()
    await s.flush()
    assert await s.spend_by_key() == snapshot


async def test_an_older_database_gets_the_journal_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path, isolation_level=None)
    for step, migration in enumerate(MIGRATIONS[:2]):
        db.executescript(f"{migration}; PRAGMA user_version = {step + 1};")
    db.execute("INSERT INTO spend_carryover VALUES ('alice', 1.5)")
    db.close()
    s = SqliteStore(path)
    await s.open()
    try:
        s.journal(record(1), 0.25, 42)
        await s.flush()
        assert await s.spend_by_key() == {"alice": 1.5}
    finally:
        await s.close()
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT id FROM reservation_journal").fetchall() == [("gen-1",)]
    db.close()
