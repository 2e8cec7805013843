"""ResponseStore on SQLite and PostgreSQL: kept through the usage store's writer, readable
at once, key-isolated (an admin key reads all), deleted for good, pruned by retention."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from anyrouter_proxy.config.model import KeyConfig, Limits
from anyrouter_proxy.storage.postgres import PostgresStore
from anyrouter_proxy.storage.responses import ResponseStore
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
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1", "object": "response"})
    stored = await responses.get("gen-1", ALICE)  # the writer lingers 0.5 s: read waits
    assert stored is not None and stored.response == {"id": "gen-1", "object": "response"}
    assert stored.conversation == [*INPUT, *OUTPUT]


async def test_another_key_sees_nothing_an_admin_sees_all(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"})
    assert await responses.get("gen-1", BOB) is None
    admin = await responses.get("gen-1", ROOT)
    assert admin is not None and admin.key_name == "alice"


async def test_deleted_for_good(store: Store) -> None:
    responses = ResponseStore(store)
    responses.keep("gen-1", "alice", INPUT, OUTPUT, {"id": "gen-1"})
    await responses.delete("gen-1")
    assert await responses.get("gen-1", ALICE) is None


async def test_retention_prunes_old_responses(store: Store, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    responses = ResponseStore(store)
    now = time.time()
    monkeypatch.setattr(time, "time", lambda: now - 10 * 86400)
    responses.keep("gen-old", "alice", INPUT, OUTPUT, {"id": "gen-old"})
    monkeypatch.setattr(time, "time", lambda: now)
    responses.keep("gen-new", "alice", INPUT, OUTPUT, {"id": "gen-new"})
    await store.flush()
    assert await store.prune(7) == 1
    assert await responses.get("gen-old", ALICE) is None
    assert await responses.get("gen-new", ALICE) is not None
