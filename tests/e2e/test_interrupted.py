"""A request in flight when the process dies is charged on the next start.

A real `anyrouter-proxy serve` (tests/serve_process.py) streams from a slow FakeOpenAI;
once the request's reservation is journalled it is killed with SIGKILL, then started again
on the same usage database (SQLite, then PostgreSQL): the interrupted request is charged at
what it had reserved (never $0), /credits counts it, /generation shows it `interrupted`.
Two processes on one SQLite file: a start does not take the running one's requests for
interrupted ones.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest
import yaml

from bench.serve_process import ServeProcess
from tests.conftest import ALICE_KEY, auth, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.pg_server import PgServer, running_pg_server

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals")

MODEL = "openai/gpt-4o-mini"
BODY: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
                        "max_tokens": 1000, "stream": True}
SLOW_STREAM = Behaviour(chunks=400, chunk_delay_s=0.05)  # 20 s: never ends by itself
CREDITS = 5.0

Rows = Callable[[str], Awaitable[list[tuple[Any, ...]]]]


@pytest.fixture(scope="module")
def pg() -> Iterator[PgServer]:
    with running_pg_server() as server:
        yield server


def write_config(tmp_path: Path, fake: FakeOpenAI, storage: dict[str, Any]) -> Path:
    data: dict[str, Any] = {
        "version": 1,
        "storage": {"flush_interval_s": 0.05, **storage},
        "providers": {"openai": openai_provider(fake)},
        "models": {MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                           "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        "keys": {"alice": {"key_sha256": sha256(ALICE_KEY), "credits": CREDITS}},
        "server": {"log_level": "warning"},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def sqlite_rows(db_path: Path) -> Rows:
    async def query(sql: str) -> list[tuple[Any, ...]]:
        db = sqlite3.connect(db_path)
        try:
            return [tuple(r) for r in db.execute(sql).fetchall()]
        finally:
            db.close()

    return query


def pg_rows(dsn: str) -> Rows:
    async def query(sql: str) -> list[tuple[Any, ...]]:
        conn = await asyncpg.connect(dsn)
        try:
            return [tuple(r) for r in await conn.fetch(sql)]
        finally:
            await conn.close()

    return query


async def open_stream(session: aiohttp.ClientSession, server: ServeProcess
                      ) -> tuple[aiohttp.ClientResponse, str]:
    """A stream begun (its first event read): the response and its generation id."""
    response = await session.post(server.url("/api/v1/chat/completions"), json=BODY,
                                  headers=auth())
    assert response.status == 200, await response.text()
    assert (await response.content.readline()).startswith(b"data: ")
    return response, response.headers["X-AnyRouter-Generation-Id"]


async def journalled(rows: Rows, gen_id: str, within_s: float = 10) -> float:
    """Wait until the request's reservation is in the journal; its reserved USD."""
    for _ in range(int(within_s / 0.05)):
        found = await rows(f"SELECT reserved FROM reservation_journal WHERE id = '{gen_id}'")
        if found:
            return float(found[0][0])
        await asyncio.sleep(0.05)
    raise AssertionError(f"{gen_id} not journalled within {within_s} s")


async def get(session: aiohttp.ClientSession, server: ServeProcess, path: str
              ) -> dict[str, Any]:
    async with session.get(server.url(path), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return await response.json()  # type: ignore[no-any-return]


async def kill_and_restart(config: Path, rows: Rows, fake: FakeOpenAI) -> None:
    """One completed request, one stream killed mid-way with SIGKILL, then a restart:
    spend is the completed cost plus the interrupted request's reservation."""
    async with ServeProcess.start(config) as server, aiohttp.ClientSession() as session:
        async with session.post(server.url("/api/v1/chat/completions"), headers=auth(),
                                json={**BODY, "stream": False}) as response:
            assert response.status == 200
        fake.then(SLOW_STREAM)
        stream, gen_id = await open_stream(session, server)
        reserved = await journalled(rows, gen_id)
        server.proc.kill()
        await server.proc.wait()
        stream.close()
    assert reserved > 0
    [(completed,)] = await rows("SELECT SUM(cost) FROM generations")
    assert await rows(f"SELECT id FROM generations WHERE id = '{gen_id}'") == []

    async with ServeProcess.start(config) as again, aiohttp.ClientSession() as session:
        credits = (await get(session, again, "/api/v1/credits"))["data"]
        assert credits["total_usage"] == pytest.approx(completed + reserved, abs=1e-9)
        info = (await get(session, again, "/api/v1/auth/key"))["data"]
        assert info["limit_remaining"] == pytest.approx(CREDITS - completed - reserved,
                                                        abs=1e-9)
        data = (await get(session, again, f"/api/v1/generation/{gen_id}"))["data"]
        assert data["status"] == "interrupted"
        assert (data["status_code"], data["error_code"]) == (500, "interrupted")
        assert data["total_cost"] == pytest.approx(reserved, abs=1e-12)
        assert data["streamed"] is True and data["model"] == MODEL
        assert await again.stop() == 0
    assert await rows("SELECT id FROM reservation_journal") == []


async def test_sigkill_mid_stream_charges_the_reservation_on_sqlite(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    db = tmp_path / "usage.db"
    config = write_config(tmp_path, fake_openai, {"sqlite_path": str(db)})
    await kill_and_restart(config, sqlite_rows(db), fake_openai)
    assert list(tmp_path.glob("usage.db.live-*")) == []  # the killed one's lock file too


async def test_sigkill_mid_stream_charges_the_reservation_on_postgres(
        tmp_path: Path, fake_openai: FakeOpenAI, pg: PgServer) -> None:
    dsn = pg.new_schema()
    config = write_config(tmp_path, fake_openai, {"backend": "postgres", "dsn": dsn})
    await kill_and_restart(config, pg_rows(dsn), fake_openai)


async def test_a_start_beside_a_running_process_leaves_its_requests_alone(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    db = tmp_path / "usage.db"
    rows = sqlite_rows(db)
    config = write_config(tmp_path, fake_openai, {"sqlite_path": str(db)})
    fake_openai.then(Behaviour(chunks=40, chunk_delay_s=0.05))  # 2 s
    async with ServeProcess.start(config) as first, aiohttp.ClientSession() as session:
        stream, gen_id = await open_stream(session, first)
        await journalled(rows, gen_id)
        async with ServeProcess.start(config) as second:  # the same file, while it runs
            assert await second.stop() == 0
        assert await rows("SELECT id FROM generations") == []  # not taken as interrupted
        body = await stream.read()
        assert body.rstrip().endswith(b"data: [DONE]")
        assert await first.stop() == 0
    assert await rows("SELECT id, status_code, error_code FROM generations") == [
        (gen_id, 200, None)]
    assert await rows("SELECT id FROM reservation_journal") == []
