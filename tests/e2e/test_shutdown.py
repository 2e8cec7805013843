"""SIGTERM drains the real server process.

`anyrouter-proxy serve` runs as a subprocess against a FakeOpenAI served in this test's
event loop. Requests are put in flight, SIGTERM is sent, and then: the listener is
closed at once, in-flight requests and streams finish, the process exits 0 within the
grace period, and the SQLite file holds a row for every request a client saw complete.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, auth, openai_provider
from tests.fakes import ANSWER, Behaviour, FakeOpenAI
from tests.net import free_port

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

MODEL = "openai/gpt-4o-mini"
CHAT: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
STREAM_CHUNKS = 5


class Server:
    def __init__(self, proc: asyncio.subprocess.Process, port: int, log: Path,
                 config: Config) -> None:
        self.proc = proc
        self.port = port
        self.log = log
        self.config = config

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:]


@pytest.fixture
async def serve(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                tmp_path: Path) -> AsyncIterator[Any]:
    servers: list[Server] = []

    async def start(grace_s: float) -> Server:
        config = config_factory(
            providers={"openai": openai_provider(fake_openai)},
            models={MODEL: {"pricing": {"prompt": 0.15, "completion": 0.6},
                            "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
            server={"shutdown_grace_s": grace_s, "log_level": "info"})
        assert config.path is not None
        port = free_port()
        log = tmp_path / f"serve-{port}.log"
        with log.open("wb") as out:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "anyrouter_proxy", "serve", "--config", str(config.path),
                "--port", str(port), stdout=out, stderr=out,
                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        server = Server(proc, port, log, config)
        servers.append(server)
        deadline = time.monotonic() + 30
        async with aiohttp.ClientSession() as session:
            while True:
                assert proc.returncode is None, server.output()
                try:
                    async with session.get(server.url("/health")) as response:
                        if response.status == 200:
                            return server
                except aiohttp.ClientConnectionError:
                    pass
                assert time.monotonic() < deadline, server.output()
                await asyncio.sleep(0.05)

    yield start
    for server in servers:
        if server.proc.returncode is None:
            server.proc.kill()
        await server.proc.wait()


async def refused(port: int) -> bool:
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except ConnectionRefusedError:
        return True
    writer.close()
    await writer.wait_closed()
    return False


async def complete_chat(session: aiohttp.ClientSession, server: Server, stream: bool,
                        trace_id: str) -> tuple[int, str | None, bytes]:
    async with session.post(server.url("/api/v1/chat/completions"),
                            json={**CHAT, "stream": stream},
                            headers={**auth(ALICE_KEY), "X-AnyRouter-Trace-Id": trace_id}
                            ) as response:
        body = await response.read()
        return response.status, response.headers.get("X-AnyRouter-Generation-Id"), body


def assert_complete(stream: bool, gen_id: str, body: bytes) -> None:
    if not stream:
        data = json.loads(body)
        assert data["id"] == gen_id
        assert data["choices"][0]["message"]["content"] == ANSWER
        assert data["choices"][0]["finish_reason"] == "stop"
        return
    events = [block for block in body.split(b"\n\n") if block.startswith(b"data: ")]
    assert events[-1] == b"data: [DONE]"
    chunks = [json.loads(e.removeprefix(b"data: ")) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks
                   if c.get("choices"))
    assert text == "".join(f"tok{i} " for i in range(STREAM_CHUNKS))
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    assert not any("error" in c for c in chunks)


def generation_rows(config: Config) -> dict[str, dict[str, Any]]:
    db = sqlite3.connect(config.storage.sqlite_path)
    try:
        db.row_factory = sqlite3.Row
        return {row["id"]: dict(row) for row in db.execute("SELECT * FROM generations")}
    finally:
        db.close()


async def test_sigterm_drains_in_flight_requests(serve: Any, fake_openai: FakeOpenAI) -> None:
    grace_s = 10.0
    server: Server = await serve(grace_s)
    n = 10
    streams = [i % 2 == 1 for i in range(n)]
    # Each request is still upstream for a second or more after SIGTERM (the fake takes
    # its script in arrival order, so every request gets the same behaviour).
    fake_openai.then(*[Behaviour(chunks=STREAM_CHUNKS, delay_s=1.0, chunk_delay_s=0.1)
                       for _ in streams])
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        tasks = [asyncio.ensure_future(complete_chat(session, server, stream, f"drain-{i}"))
                 for i, stream in enumerate(streams)]
        deadline = time.monotonic() + 10
        while len(fake_openai.requests) < n:  # every request is upstream: in flight
            assert time.monotonic() < deadline, server.output()
            await asyncio.sleep(0.01)
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)

        # The listener closes at once; in-flight requests go on.
        while not await refused(server.port):
            assert time.monotonic() - signalled < 1.0, "still accepting after SIGTERM"
            await asyncio.sleep(0.02)
        assert not all(task.done() for task in tasks)
        with pytest.raises(aiohttp.ClientConnectorError):
            async with aiohttp.ClientSession() as fresh:
                await fresh.get(server.url("/health"))

        results = await asyncio.wait_for(asyncio.gather(*tasks), grace_s)
    code = await asyncio.wait_for(server.proc.wait(), grace_s + 5)
    assert code == 0, server.output()
    assert time.monotonic() - signalled < grace_s

    for stream, (status, gen_id, body) in zip(streams, results, strict=True):
        assert status == 200, body
        assert gen_id is not None
        assert_complete(stream, gen_id, body)
    rows = generation_rows(server.config)
    for stream, (_, gen_id, _) in zip(streams, results, strict=True):
        assert gen_id in rows, f"no usage row for {gen_id}"
        row = rows[gen_id]
        assert (row["status_code"], row["cancelled"], row["streamed"]) == (200, 0, int(stream))
        assert row["tokens_prompt"] == 11 and row["usage_source"] == "provider"
    assert fake_openai.cancelled == 0


async def test_requests_past_the_grace_period_are_marked_cancelled(
        serve: Any, fake_openai: FakeOpenAI) -> None:
    grace_s = 1.0
    server: Server = await serve(grace_s)
    # One request finishes within the grace period, two would take far longer.
    fake_openai.then(Behaviour(delay_s=0.3), Behaviour(delay_s=30),
                     Behaviour(chunks=STREAM_CHUNKS, chunk_delay_s=30))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        quick = asyncio.ensure_future(complete_chat(session, server, False, "quick"))
        while len(fake_openai.requests) < 1:
            await asyncio.sleep(0.01)
        slow = asyncio.ensure_future(complete_chat(session, server, False, "slow"))
        while len(fake_openai.requests) < 2:
            await asyncio.sleep(0.01)
        slow_stream = asyncio.ensure_future(complete_chat(session, server, True, "slow-stream"))
        while len(fake_openai.requests) < 3:
            await asyncio.sleep(0.01)
        await asyncio.sleep(0.1)  # the stream's first event reached the client
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(server.proc.wait(), grace_s + 10)
        elapsed = time.monotonic() - signalled
        results = await asyncio.gather(quick, slow, slow_stream, return_exceptions=True)
    assert code == 0, server.output()
    assert elapsed < grace_s + 5
    status, gen_id, body = results[0]  # type: ignore[misc]
    assert status == 200
    assert_complete(False, gen_id, body)

    db = sqlite3.connect(server.config.storage.sqlite_path)
    try:
        db.row_factory = sqlite3.Row
        rows = {row["trace_id"]: dict(row) for row in db.execute("SELECT * FROM generations")}
    finally:
        db.close()
    assert rows["quick"]["id"] == gen_id and rows["quick"]["cancelled"] == 0
    for trace in ("slow", "slow-stream"):
        assert trace in rows, f"no usage row for the request cut short ({trace})"
        assert rows[trace]["cancelled"] == 1
        assert rows[trace]["status_code"] == 499
