"""The usage log survives a stalled or full disk, SIGTERM and SIGKILL, and
a database the proxy cannot use is refused at start.

How the faults are made (the tests run as root, so permissions cannot stop a write):

* a stalled disk: another sqlite3 connection holds `BEGIN EXCLUSIVE` on the database. The
  proxy's writer waits its busy timeout (5 s) and then fails with "database is locked",
  exactly what a stuck NFS mount or a long-running backup looks like;
* a full disk: the running `serve` process gets RLIMIT_FSIZE 0 through prlimit(2), so
  every write to a regular file fails (EFBIG, which SQLite reports as a disk I/O error),
  then the limit is lifted again: the disk "recovers";
* SIGTERM / SIGKILL: a real `anyrouter-proxy serve` subprocess under client load.

The SIGKILL bound (documented in docs/operations.md): a usage row is queued when its request
completes (before the last byte of a stream goes out) and committed by the writer within
`storage.flush_interval_s` plus the time of one batch; the WAL commit survives a killed
process. So after a SIGKILL, every request that completed more than
`flush_interval_s + 0.8 s` (1 s with the 0.2 s of this test) before the kill has its row;
only requests completed inside that last window may be missing.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import signal
import sqlite3
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from anyrouter_proxy.config.model import Config
from bench.serve_process import ServeProcess
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider, sha256
from tests.fakes import Behaviour, FakeOpenAI
from tests.net import free_port
from tests.stalled_disk import locked

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="POSIX signals, /proc, prlimit")

StartProxy = Callable[[Config], Awaitable[Proxy]]
MODEL = "openai/gpt-4o-mini"
MESSAGES = [{"role": "user", "content": "hi"}]
BUSY_TIMEOUT_S = 5.0  # SqliteStore's default busy timeout: a locked write fails after it
SIGKILL_FLUSH_INTERVAL_S = 0.2
SIGKILL_BOUND_S = SIGKILL_FLUSH_INTERVAL_S + 0.8


def write_config(tmp_path: Path, fake: FakeOpenAI, **sections: dict[str, Any]) -> Path:
    """A routes.yaml for a subprocess: model MODEL served by `fake`, key alice."""
    data: dict[str, Any] = {
        "version": 1,
        "storage": {"sqlite_path": str(tmp_path / "usage.db"), "flush_interval_s": 0.05},
        "providers": {"openai": openai_provider(fake)},
        "models": {MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                           "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        "keys": {"alice": {"key_sha256": sha256(ALICE_KEY)}},
        "server": {"log_level": "warning"},
    }
    for name, value in sections.items():
        data[name] = {**data.get(name, {}), **value}
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def generation_ids(db_path: Path) -> dict[str, int]:
    """id -> status_code of every usage row (read with a fresh connection)."""
    db = sqlite3.connect(db_path)
    try:
        return dict(db.execute("SELECT id, status_code FROM generations").fetchall())
    finally:
        db.close()


def integrity(db_path: Path) -> str:
    db = sqlite3.connect(db_path)
    try:
        return str(db.execute("PRAGMA integrity_check").fetchone()[0])
    finally:
        db.close()


async def chat(session: aiohttp.ClientSession, base: str, *, stream: bool = False,
               trace: str | None = None) -> tuple[int, str, bool, float]:
    """One chat completion read to its end: status, generation id, whether the answer
    was complete, and the monotonic time at which it completed."""
    headers = {**auth(), **({"X-AnyRouter-Trace-Id": trace} if trace else {})}
    async with session.post(base + "/api/v1/chat/completions", headers=headers,
                            json={"model": MODEL, "messages": MESSAGES, "stream": stream}
                            ) as response:
        body = await response.read()
        done = time.monotonic()
        gen_id = response.headers.get("X-AnyRouter-Generation-Id", "")
        if response.status != 200:
            return response.status, gen_id, False, done
        if stream:
            complete = body.rstrip().endswith(b"data: [DONE]") and b'"error"' not in body
        else:
            complete = json.loads(body)["choices"][0]["finish_reason"] == "stop"
        return response.status, gen_id, complete, done


async def health(session: aiohttp.ClientSession, base: str) -> dict[str, Any]:
    async with session.get(base + "/health") as response:
        assert response.status == 200
        return await response.json()  # type: ignore[no-any-return]


async def gauge(session: aiohttp.ClientSession, base: str, name: str) -> float:
    async with session.get(base + "/metrics") as response:
        text = await response.text()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"metric {name} not exposed")


async def until(check: Callable[[], Awaitable[bool]], within_s: float, what: str) -> float:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < within_s, f"{what}: not within {within_s} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - started


# -- (a) a stalled disk: the database locked by another connection ---------------------------


@pytest.fixture
async def proxy(config_factory: ConfigFactory, start_proxy: StartProxy,
                fake_openai: FakeOpenAI) -> Proxy:
    return await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}}))


async def test_locked_database_keeps_serving_and_catches_up(proxy: Proxy) -> None:
    base = proxy.url("")
    db_path = proxy.config.storage.sqlite_path
    async with aiohttp.ClientSession() as session:
        before = [await chat(session, base) for _ in range(3)]
        await proxy.flush()
        assert len(generation_ids(db_path)) == 3

        with locked(db_path):
            # Requests go on, at full speed, while the writer is stuck.
            started = time.monotonic()
            during = await asyncio.gather(*[chat(session, base, stream=i % 2 == 1)
                                            for i in range(30)])
            assert time.monotonic() - started < 3
            assert all(status == 200 and complete for status, _, complete, _ in during)

            async def degraded() -> bool:
                return bool((await health(session, base))["usage_log"]["status"] == "degraded")

            waited = await until(degraded, BUSY_TIMEOUT_S + 5, "/health reports degraded")
            report = (await health(session, base))["usage_log"]
            assert "locked" in report["last_error"], report
            assert report["queue_depth"] >= 30 and report["dropped"] == 0
            assert await gauge(session, base, "anyrouter_usage_queue_depth") >= 30
            # Reads do not queue behind the stuck writer: an old generation is served.
            started = time.monotonic()
            async with session.get(base + f"/api/v1/generation/{before[0][1]}",
                                   headers=auth()) as response:
                assert response.status == 200
            assert time.monotonic() - started < 1
            # Still serving while degraded; the queue keeps growing.
            more = await asyncio.gather(*[chat(session, base) for _ in range(10)])
            assert all(status == 200 for status, *_ in more)
            assert await gauge(session, base, "anyrouter_usage_queue_depth") >= 40
        print(f"\n/health reported the locked database after {waited:.1f} s")

        async def recovered() -> bool:
            report = (await health(session, base))["usage_log"]
            return bool(report["status"] == "ok" and report["queue_depth"] == 0)

        await until(recovered, 15, "the queued rows are written after the lock is released")
        assert await gauge(session, base, "anyrouter_usage_queue_depth") == 0
    rows = generation_ids(db_path)
    assert len(rows) == 3 + 30 + 10
    for _, gen_id, _, _ in before + during + more:
        assert rows[gen_id] == 200


async def test_rows_beyond_the_queue_bound_are_dropped_and_counted(
        config_factory: ConfigFactory, start_proxy: StartProxy, fake_openai: FakeOpenAI) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={MODEL: {"routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        storage={"queue_max": 10}))
    base, db_path = proxy.url(""), proxy.config.storage.sqlite_path
    async with aiohttp.ClientSession() as session:
        with locked(db_path):
            results = await asyncio.gather(*[chat(session, base) for _ in range(25)])
            assert all(status == 200 for status, *_ in results)  # serving never stops
            report = (await health(session, base))["usage_log"]
            # Ten usage rows wait (plus the journal rows of requests whose batch is stuck).
            assert report["queue_depth"] >= 10 and report["dropped"] == 15
            assert report["dropped_by_kind"] == {"billing": 15, "audit": 0}
            assert await gauge(session, base, "anyrouter_usage_rows_dropped") == 15
        await until(lambda: _queue_empty(session, base, after_drops=True), 15, "queue drained")
        # A dropped row is money unaccounted for: the log stays degraded until a restart.
        assert (await health(session, base))["usage_log"]["status"] == "degraded"
    rows = generation_ids(db_path)
    assert len(rows) == 10  # the queue bound: the first ten, the rest counted as dropped
    assert set(rows) == {gen_id for _, gen_id, _, _ in results[:10]}


async def _queue_empty(session: aiohttp.ClientSession, base: str,
                       after_drops: bool = False) -> bool:
    report = (await health(session, base))["usage_log"]
    return bool(report["queue_depth"] == 0 and report["last_error"] is None
                and report["status"] == ("degraded" if after_drops else "ok"))


# -- (a) a full disk: the serve process may not write a byte, then may again ---------------------


async def test_full_disk_keeps_serving_and_writes_the_queue_when_it_recovers(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    path = write_config(tmp_path, fake_openai)
    db_path = tmp_path / "usage.db"
    async with ServeProcess.start(path) as server:
        base = server.url("")
        async with aiohttp.ClientSession() as session:
            first = [await chat(session, base) for _ in range(3)]
            await until(lambda: _queue_empty(session, base), 5, "first rows written")
            _, hard = resource.prlimit(server.pid, resource.RLIMIT_FSIZE)
            resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (0, hard))  # disk full
            try:
                started = time.monotonic()
                during = await asyncio.gather(*[chat(session, base, stream=i % 2 == 0)
                                                for i in range(20)])
                assert time.monotonic() - started < 3
                assert all(status == 200 and complete for status, _, complete, _ in during)

                async def degraded() -> bool:
                    return bool((await health(session, base))["usage_log"]["status"]
                                == "degraded")

                await until(degraded, 5, "/health reports the failing disk")
                report = (await health(session, base))["usage_log"]
                assert report["last_error"] and report["queue_depth"] >= 20, report
                assert await gauge(session, base, "anyrouter_usage_queue_depth") >= 20
                print(f"\nusage_log while the disk is full: {report}")
            finally:
                resource.prlimit(server.pid, resource.RLIMIT_FSIZE, (hard, hard))
            await until(lambda: _queue_empty(session, base), 15,
                        "the queued rows are written once the disk recovers")
        assert await server.stop() == 0, server.output()
    rows = generation_ids(db_path)
    assert set(rows) == {gen_id for _, gen_id, _, _ in first + during}
    assert integrity(db_path) == "ok"


# -- (b) SIGTERM under load loses no row of a completed request ----------------------------------


async def test_sigterm_under_load_loses_no_completed_row(tmp_path: Path,
                                                         fake_openai: FakeOpenAI) -> None:
    path = write_config(tmp_path, fake_openai, server={"shutdown_grace_s": 10})
    # Every request stays upstream for a while: 20 are in flight whenever SIGTERM comes.
    fake_openai.then(*[Behaviour(delay_s=0.3, chunks=5, chunk_delay_s=0.03)] * 5000)
    results: list[tuple[int, str, bool, float]] = []
    failures: dict[str, str] = {}  # trace id -> what the client saw
    async with ServeProcess.start(path) as server:
        base = server.url("")

        async def client(n: int, session: aiohttp.ClientSession) -> None:
            i = 0
            while True:
                trace = f"c{n}-{i}"
                try:
                    results.append(await chat(session, base, stream=n % 2 == 0, trace=trace))
                except aiohttp.ClientConnectorError:
                    return  # the listener is closed: the server is draining
                except aiohttp.ClientError as exc:
                    failures[trace] = f"{type(exc).__name__}: {exc}"
                    return
                i += 1

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            clients = [asyncio.ensure_future(client(n, session)) for n in range(20)]
            await asyncio.sleep(1.5)
            in_flight = len(fake_openai.requests) - fake_openai.completed
            signalled = time.monotonic()
            server.proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(asyncio.gather(*clients), 15)
            code = await asyncio.wait_for(server.proc.wait(), 15)
        drained_s = time.monotonic() - signalled
    assert code == 0, server.output()
    assert in_flight >= 15, in_flight
    ok = [r for r in results if r[0] == 200]
    assert len(ok) == len(results), [r for r in results if r[0] != 200]
    assert all(complete for _, _, complete, _ in ok), "a 200 was cut short by the drain"
    rows = generation_ids(tmp_path / "usage.db")
    missing = [gen_id for _, gen_id, _, _ in ok if gen_id not in rows]
    print(f"\nSIGTERM with {in_flight} requests in flight: {len(ok)} completed, drained in "
          f"{drained_s:.2f} s, {len(missing)} rows missing; {len(failures)} clients' next "
          f"request met a keep-alive connection closed by the drain "
          f"({sorted(set(failures.values()))[:2]})")
    assert missing == []
    assert all(rows[gen_id] == 200 for _, gen_id, _, _ in ok)
    # A request that met a connection closed by the drain was never run: no row, no
    # upstream call, nothing billed. Every row is a request a client saw complete.
    assert len(rows) == len(ok) == len(fake_openai.requests)


async def test_answers_completed_during_the_drain_say_connection_close(
        tmp_path: Path, fake_openai: FakeOpenAI) -> None:
    path = write_config(tmp_path, fake_openai, server={"shutdown_grace_s": 10})
    fake_openai.then(Behaviour(delay_s=1.0))
    async with ServeProcess.start(path) as server, aiohttp.ClientSession() as session:
        request = asyncio.ensure_future(session.post(
            server.url("/api/v1/chat/completions"), headers=auth(),
            json={"model": MODEL, "messages": MESSAGES}))
        while not fake_openai.requests:
            await asyncio.sleep(0.01)
        server.proc.send_signal(signal.SIGTERM)
        response = await request
        await response.read()
        assert await asyncio.wait_for(server.proc.wait(), 15) == 0
    assert response.status == 200
    assert response.headers.get("Connection", "").lower() == "close"


# -- (c) SIGKILL loses at most the rows of the last flush interval --------------------------------


async def test_sigkill_loses_at_most_the_last_flush_interval(tmp_path: Path,
                                                             fake_openai: FakeOpenAI) -> None:
    path = write_config(tmp_path, fake_openai,
                        storage={"flush_interval_s": SIGKILL_FLUSH_INTERVAL_S})
    db_path = tmp_path / "usage.db"
    results: list[tuple[int, str, bool, float]] = []
    async with ServeProcess.start(path) as server:
        base = server.url("")

        async def client(n: int, session: aiohttp.ClientSession) -> None:
            i = 0
            with contextlib.suppress(aiohttp.ClientError):
                while True:
                    results.append(await chat(session, base, stream=n % 2 == 0))
                    i += 1
                    await asyncio.sleep(0.01)

        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
            clients = [asyncio.ensure_future(client(n, session)) for n in range(10)]
            await asyncio.sleep(3)
            killed = time.monotonic()
            server.proc.kill()
            await asyncio.wait_for(asyncio.gather(*clients), 10)
        await server.proc.wait()
    ok = [r for r in results if r[0] == 200 and r[2]]
    rows = generation_ids(db_path)
    old = [r for r in ok if r[3] < killed - SIGKILL_BOUND_S]
    recent = [r for r in ok if r[3] >= killed - SIGKILL_BOUND_S]
    lost_recent = [r for r in recent if r[1] not in rows]
    print(f"\nSIGKILL: {len(ok)} completed, {len(old)} more than {SIGKILL_BOUND_S:.1f} s before "
          f"the kill (all must have rows), {len(lost_recent)} of the {len(recent)} in the "
          f"last {SIGKILL_BOUND_S:.1f} s without a row")
    assert len(old) > 50
    assert [r[1] for r in old if r[1] not in rows] == []
    assert integrity(db_path) == "ok"
    # The database is usable by the next start (WAL recovered), with every row kept; the
    # requests the kill caught with a journal row and no usage row are charged as
    # interrupted (500).
    async with ServeProcess.start(path) as again:
        async with aiohttp.ClientSession() as session:
            status, *_ = await chat(session, again.url(""))
            assert status == 200
        assert await again.stop() == 0
    after = generation_ids(db_path)
    interrupted = {gen_id for gen_id, code in after.items() if gen_id not in rows and code == 500}
    assert len(after) == len(rows) + len(interrupted) + 1


# -- (d) a database the proxy cannot use is refused at start --------------------------------------


def _garbage(db: Path) -> None:
    db.write_bytes(os.urandom(16384))


def _newer_schema(db: Path) -> None:
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE generations (id TEXT PRIMARY KEY)")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()


def _truncated(db: Path, keep: float = 0.5) -> None:
    """A real usage database with its second half cut off (a torn copy)."""
    from anyrouter_proxy.storage.sqlite import MIGRATIONS
    from anyrouter_proxy.storage.store import GENERATION_COLUMNS

    conn = sqlite3.connect(db)
    for step, migration in enumerate(MIGRATIONS):
        conn.executescript(f"{migration}; PRAGMA user_version = {step + 1};")
    values = ["x" * 200 if c not in ("created_at", "cost", "latency_ms") else 1.0
              for c in GENERATION_COLUMNS]
    for i in range(2000):
        values[0] = f"gen-{i}"
        conn.execute(f"INSERT INTO generations VALUES ({','.join('?' * len(values))})", values)
    conn.commit()
    conn.close()
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.truncate(int(size * keep))


def _garbled(db: Path) -> None:
    """A real usage database whose middle quarter was overwritten: the header (all that
    opening the file reads) is intact, the table pages are not."""
    import random

    _truncated(db, keep=1.0)
    size = db.stat().st_size
    with db.open("r+b") as f:
        f.seek(size // 2)
        f.write(random.Random(1).randbytes(size // 4))


BAD_DATABASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "garbage_bytes": (_garbage, "corrupt"),
    "newer_schema": (_newer_schema, "schema version 99"),
    "truncated": (_truncated, "corrupt"),
    "garbled_pages": (_garbled, "corrupt"),
}


def run_serve(config_path: Path, timeout_s: float = 30) -> tuple[int | None, str]:
    """`serve` to its exit: exit code (None if it still ran after `timeout_s`, when it is
    killed) and its output."""
    import subprocess

    try:
        proc = subprocess.run(
            [sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config_path),
             "--port", str(free_port())], capture_output=True, text=True, timeout=timeout_s,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    except subprocess.TimeoutExpired as exc:
        out = (exc.stdout or b"") + (exc.stderr or b"")
        return None, out.decode(errors="replace") if isinstance(out, bytes) else str(out)
    return proc.returncode, proc.stdout + proc.stderr


@pytest.fixture
def bad_database(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path, str]:
    make, words = BAD_DATABASES[request.param]
    db = tmp_path / "usage.db"
    make(db)
    config = {"version": 1, "storage": {"sqlite_path": str(db)},
              "providers": {"demo": {"kind": "mock"}},
              "models": {"demo/echo": {"routes": [{"provider": "demo", "model": "echo"}]}}}
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    return path, db, words


@pytest.mark.parametrize("bad_database", ["garbage_bytes", "newer_schema", "truncated"],
                         indirect=True)
async def test_unusable_database_is_refused_at_start(bad_database: tuple[Path, Path, str]
                                                     ) -> None:
    config_path, db, words = bad_database
    before = db.read_bytes()
    code, output = await asyncio.to_thread(run_serve, config_path)
    assert code is not None and code != 0, output
    assert str(db) in output and words in output, output
    # The file is left for the operator: same bytes, or (a newer schema, which the check
    # opens as SQLite) the same schema version and tables.
    if words == "corrupt":
        assert db.read_bytes() == before
    else:
        conn = sqlite3.connect(db)
        try:
            assert conn.execute("PRAGMA user_version").fetchone()[0] == 99
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master")]
            assert tables == ["generations", "sqlite_autoindex_generations_1"]
        finally:
            conn.close()


@pytest.mark.parametrize("bad_database", ["garbage_bytes", "newer_schema", "truncated"],
                         indirect=True)
async def test_unusable_database_message_has_no_traceback(bad_database: tuple[Path, Path, str]
                                                          ) -> None:
    config_path, _, _ = bad_database
    code, output = await asyncio.to_thread(run_serve, config_path)
    assert code is not None and code != 0, output
    assert "Traceback" not in output, output


@pytest.mark.parametrize("bad_database", ["garbled_pages"], indirect=True)
async def test_garbled_database_is_refused_at_start(bad_database: tuple[Path, Path, str]
                                                    ) -> None:
    config_path, db, words = bad_database
    code, output = await asyncio.to_thread(run_serve, config_path, 10)
    assert code is not None, "serve still running 10 s after it failed to start"
    assert code != 0
    assert str(db) in output and words in output and "Traceback" not in output, output

