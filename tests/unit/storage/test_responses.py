"""ResponseStore on SQLite and PostgreSQL: kept through the usage store's writer, readable
at once, key-isolated (an admin key reads all), deleted for good, pruned by retention; its
items found by id on the same terms."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from anyrouter_proxy.config.model import KeyConfig, Limits
from anyrouter_proxy.storage.postgres import MIGRATIONS as postgres_migrations
from anyrouter_proxy.storage.postgres import PostgresStore
from anyrouter_proxy.storage.response_items import lookup_queries
from anyrouter_proxy.storage.responses import ResponseStore
from anyrouter_proxy.storage.sqlite import MIGRATIONS as sqlite_migrations
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.storage.store import Store
from tests.pg_server import PgServer, running_pg_server

ALICE = KeyConfig("alice", "a" * 64, Limits())
BOB = KeyConfig("bob", "b" * 64, Limits())
ROOT = KeyConfig("root", "c" * 64, Limits(), admin=True)
INPUT = [{"id": "msg_1", "type": "message", "role": "user",
          "content": [{"type": "input_text", "text": "hi"}]}]
OUTPUT = [{"id": "rs_1", "type": "reasoning", "summary": [], "encrypted_content": "E"},
          {"id": "msg_2", "type": "message", "role": "assistant", "status": "completed",
           "content": [{"type": "output_text", "text": "hello", "annotations": []}]}]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    usage: Store
    if request.param == "sqlite":
        usage = SqliteStore(tmp_path / "u.db", flush_interval_s=0.5)
    else:
        pg: PgServer = request.getfixturevalue("pg")
        usage = PostgresStore(pg.new_schema(), flush_interval_s=0.5)
    await usage.open()
    yield usage
    await usage.close()


async def test_kept_readable_at_once_and_continued(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1", "object": "response"},
                   new_items=INPUT)
    stored = await responses.get("gen-1", ALICE)  # the writer lingers 0.5 s: read waits
    assert stored is not None and stored.response == {"id": "gen-1", "object": "response"}
    assert stored.conversation == [*INPUT, *OUTPUT]


async def test_another_key_sees_nothing_an_admin_sees_all(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    assert await responses.get("gen-1", BOB) is None
    admin = await responses.get("gen-1", ROOT)
    assert admin is not None and admin.key_name == "alice"


async def test_deleted_for_good(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    await responses.delete("gen-1")
    assert await responses.get("gen-1", ALICE) is None


async def test_retention_prunes_old_responses(store: Store, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    responses = ResponseStore(store)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 10 * 86400)
    responses.keep("gen-old", "alice", INPUT, OUTPUT, {"id": "gen-old"}, new_items=INPUT)
    monkeypatch.setattr(time, "time", lambda: now)
    responses.keep("gen-new", "alice", INPUT, OUTPUT, {"id": "gen-new"}, new_items=[])
    await store.flush()
    assert await store.prune(7) == 1 + 1  # it, and the one item that only it brought
    assert await responses.get("gen-old", ALICE) is None
    assert await responses.get("gen-new", ALICE) is not None
    assert await responses.items(["msg_1", "rs_1"], ALICE) == {"rs_1": OUTPUT[0]}  # gen-new's


async def test_items_found_by_id_readable_at_once(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    found = await responses.items(["rs_1", "msg_1", "msg_2", "msg_1", "nope"], ALICE)
    assert found == {"msg_1": INPUT[0], "rs_1": OUTPUT[0], "msg_2": OUTPUT[1]}


async def test_items_of_earlier_turns_are_their_own_responses(store: Store) -> None:
    """A continuation stores the whole conversation but indexes only what it brought."""
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    later = {"id": "msg_3", "type": "message", "role": "user", "content": []}
    responses.keep("gen-2", "alice", [*INPUT, *OUTPUT, later], [], {"id": "gen-2"},
                   new_items=[later])
    await responses.delete("gen-1")
    assert await responses.items(["msg_1", "rs_1", "msg_3"], ALICE) == {"msg_3": later}


async def test_items_are_the_keys_own_an_admin_uses_all(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    mine = {**OUTPUT[1], "content": []}
    responses.keep("gen-2", "root", [], [mine], {"id": "gen-2"}, new_items=[])
    assert await responses.items(["msg_1", "rs_1"], BOB) == {}
    assert await responses.items(["msg_1", "msg_2"], ROOT) == {"msg_1": INPUT[0],
                                                                 "msg_2": mine}


async def test_an_item_brought_again_belongs_to_the_latest_response(store: Store) -> None:
    """A client that sends the whole conversation each turn: one row per item, not per
    turn, and the latest response that brought an item holds it."""
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    again = {**OUTPUT[1], "content": [{"type": "output_text", "text": "again"}]}
    resent = [*INPUT, OUTPUT[0], again, again]
    responses.keep("gen-2", "alice", resent, [], {"id": "gen-2"}, new_items=resent)
    assert (await responses.items(["msg_2"], ALICE))["msg_2"] == again
    rows = await store.fetch("SELECT item_id, response_id FROM response_items")
    assert sorted((r["item_id"], r["response_id"]) for r in rows) == [
        ("msg_1", "gen-2"), ("msg_2", "gen-2"), ("rs_1", "gen-2")]
    await responses.delete("gen-1")
    assert set(await responses.items(["msg_1", "rs_1", "msg_2"], ALICE)) == {
        "msg_1", "rs_1", "msg_2"}
    await responses.delete("gen-2")
    assert await responses.items(["msg_1", "rs_1", "msg_2"], ALICE) == {}


async def test_deleted_items_are_gone(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    await responses.delete("gen-1")
    assert await responses.items(["msg_1", "rs_1", "msg_2"], ROOT) == {}


async def test_many_items_in_one_response(store: Store) -> None:
    """More items than one INSERT or one lookup holds."""
    responses = ResponseStore(store)
    items = [{"id": f"msg_{i}", "type": "message", "role": "user", "content": []}
             for i in range(600)]
    responses.keep("gen-1", "alice", items, [], {"id": "gen-1"}, new_items=items)
    found = await responses.items([item["id"] for item in items], ALICE)
    assert found == {item["id"]: item for item in items}


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
async def test_responses_stored_before_the_item_index_find_their_output_items(
        backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    row = ("gen-old", "alice", time.time(), json.dumps(INPUT), json.dumps(OUTPUT), "{}")
    insert = ("INSERT INTO responses (id, key_name, created_at, input_items, output_items, "
              "response) VALUES ")
    usage: Store
    if backend == "sqlite":
        path = tmp_path / "u.db"
        with sqlite3.connect(path, isolation_level=None) as db:  # as version 6 left it
            for step in sqlite_migrations[:6]:
                db.executescript(step)
            db.execute("PRAGMA user_version = 6")
            db.execute(insert + "(?, ?, ?, ?, ?, ?)", row)
        db.close()
        usage = SqliteStore(path)
    else:
        dsn = request.getfixturevalue("pg").new_schema()
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            for step in postgres_migrations[:6]:
                await conn.execute(step)
            await conn.execute("INSERT INTO schema_version VALUES (6)")
            await conn.execute(insert + "($1, $2, $3, $4, $5, $6)", *row)
        finally:
            await conn.close()
        usage = PostgresStore(dsn)
    await usage.open()
    try:
        found = await ResponseStore(usage).items(["msg_1", "rs_1", "msg_2"], ALICE)
    finally:
        await usage.close()
    assert found == {"rs_1": OUTPUT[0], "msg_2": OUTPUT[1]}  # its output, as it was stored


def test_a_lookup_searches_the_item_index(tmp_path: Path) -> None:
    """An id (and key) found through the primary key, not a walk of every item."""
    with sqlite3.connect(tmp_path / "plan.db") as db:
        for step in sqlite_migrations:
            db.executescript(step)
        plans = [" ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + sql, params))
                 for key in (ALICE, ROOT) for sql, params in lookup_queries(["a", "b"], key)]
    db.close()
    assert all("USING INDEX sqlite_autoindex_response_items_1" in plan for plan in plans), plans


async def test_the_newer_response_holds_an_item_whatever_the_write_order(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    responses = ResponseStore(store)
    now = time.time()
    newer = {**OUTPUT[1], "content": [{"type": "output_text", "text": "newer"}]}
    monkeypatch.setattr(time, "time", lambda: now + 5)
    responses.keep("gen-2", "alice", [], [newer], {"id": "gen-2"}, new_items=[])
    await store.flush()
    monkeypatch.setattr(time, "time", lambda: now)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"}, new_items=INPUT)
    assert (await responses.items(["msg_2", "msg_1"], ALICE)) == {"msg_2": newer,
                                                                   "msg_1": INPUT[0]}
