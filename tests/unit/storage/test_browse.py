"""The Generations page's query (storage/browse.py): filters and cursor paging, newest
first, on both backends."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from anyrouter_proxy.storage.activity import Filters
from anyrouter_proxy.storage.browse import Page, cursor_text, listed, page_sql, parse_cursor
from anyrouter_proxy.storage.postgres import PostgresStore
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.types import GenerationRecord
from tests.pg_server import PgServer
from tests.usage_backends import pg_cluster  # noqa: F401  (fixture)

MAY_1 = 1_714_521_600.0


def rec(n: int, **fields: Any) -> GenerationRecord:
    base: dict[str, Any] = {"id": f"gen-{n:02d}", "created_at": MAY_1 + n * 60,
                            "key_name": "alice", "endpoint": "chat", "model": "m/a",
                            "provider": "p"}
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
    for record in (rec(1), rec(2, key_name="bob"), rec(3, status_code=502),
                   rec(4, cancelled=True, status_code=499), rec(5, model="m/b"),
                   rec(6, created_at=MAY_1 + 5 * 60), rec(7, provider=None, status_code=429)):
        opened.record(record)
    await opened.flush()
    yield opened
    await opened.close()


async def ids(store: SqliteStore, page: Page) -> list[str]:
    sql, params = page_sql(page)
    return [listed(row)["id"] for row in await store.report(sql, params)]


async def test_pages_newest_first_through_the_cursor(store: SqliteStore) -> None:
    seen: list[str] = []
    before = None
    while True:
        sql, params = page_sql(Page(before=before, size=3))
        rows = [listed(row) for row in await store.report(sql, params)]
        seen += [row["id"] for row in rows[:3]]
        if len(rows) <= 3:
            break
        before = parse_cursor(cursor_text(rows[2]))
    # gen-05 and gen-06 share a second: the id breaks the tie, and neither is lost.
    assert seen == ["gen-07", "gen-06", "gen-05", "gen-04", "gen-03", "gen-02", "gen-01"]


async def test_filters(store: SqliteStore) -> None:
    assert await ids(store, Page(Filters(key="bob"))) == ["gen-02"]
    assert await ids(store, Page(Filters(model="m/b"))) == ["gen-05"]
    assert await ids(store, Page(Filters(provider=""))) == ["gen-07"]
    assert await ids(store, Page(status="error")) == ["gen-07", "gen-03"]
    assert await ids(store, Page(status="cancelled")) == ["gen-04"]
    assert await ids(store, Page(status="ok", since=MAY_1 + 100, until=MAY_1 + 300)) == [
        "gen-02"]


def test_a_broken_cursor_is_ignored() -> None:
    assert parse_cursor("not-a-number~gen-1") is None
    assert parse_cursor("1714521660.5~gen-01") == (1714521660.5, "gen-01")
