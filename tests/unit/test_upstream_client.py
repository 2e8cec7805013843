"""HttpUpstream and its HTTP/1.1 client (anyrouter_proxy/http1) against real local servers.

The servers are plain asyncio servers that write raw bytes, so that each test can send
exactly the framing or the fault it is about: content-length, chunked, close-delimited
and gzip bodies, a keep-alive connection closed under the next request, slow heads, idle
and endless bodies, resets, a peer that stops being read from, TLS with a fresh
self-signed certificate. The ones that matter most also run under uvloop (the loop the
proxy serves on).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import gzip
import ipaddress
import socket
import ssl
import struct
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import uvloop
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from anyrouter_proxy import upstream
from anyrouter_proxy.config.model import ProviderConfig, Timeouts
from anyrouter_proxy.errors import UpstreamError, UpstreamTimeout
from anyrouter_proxy.http1 import KEEPALIVE_S
from anyrouter_proxy.upstream import HttpUpstream

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
Handler = Callable[[Reader, Writer, "Server"], Awaitable[bool]]
BODY = b'{"ok": true}'
FAST = Timeouts(connect_s=1, first_byte_s=1, idle_s=0.3, total_s=10)


class Server:
    """An HTTP/1.1 server written by hand: each request pops the next handler (a
    content-length answer of BODY when none is left); a handler returns True to keep the
    connection open for the next request."""

    def __init__(self, handlers: list[Handler] | None = None) -> None:
        self.handlers = list(handlers or [])
        self.heads: list[bytes] = []
        self.bodies: list[bytes] = []
        self.connections = 0
        self.bytes_sent = 0
        self.sni: list[str | None] = []
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, tls: ssl.SSLContext | None = None) -> Server:
        if tls is not None:
            tls.sni_callback = lambda sock, name, ctx: self.sni.append(name)  # type: ignore[assignment,misc]
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0, ssl=tls)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def url(self, scheme: str = "http", host: str = "127.0.0.1") -> str:
        return f"{scheme}://{host}:{self.port}/v1"

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _connection(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                self.heads.append(head)
                self.bodies.append(await reader.readexactly(length))
                handler = self.handlers.pop(0) if self.handlers else answer(BODY)
                if not await handler(reader, writer, self):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def send(self, writer: Writer, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent += len(data)
        await writer.drain()


def answer(body: bytes, extra: bytes = b"", keep: bool = True) -> Handler:
    async def handle(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                          b"Content-Length: %d\r\n%s\r\n%s" % (len(body), extra, body))
        return keep

    return handle


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def provider(base_url: str, timeouts: Timeouts = FAST, max_connections: int = 8) -> ProviderConfig:
    return ProviderConfig(id="up", kind="openai", base_url=base_url, timeouts=timeouts,
                          max_connections=max_connections)


@pytest.fixture
async def client() -> AsyncIterator[HttpUpstream]:
    http = HttpUpstream()
    yield http
    await http.close()


async def served(*handlers: Handler) -> Server:
    return await Server(list(handlers)).start()


async def post(http: HttpUpstream, server_url: str, *, stream: bool = False,
               timeouts: Timeouts = FAST, path: str = "/chat/completions",
               headers: dict[str, str] | None = None, body: bytes = b'{"a": 1}') -> bytes:
    response = await http.send(provider(server_url, timeouts), path, body,
                               headers if headers is not None else
                               {"Content-Type": "application/json"})
    try:
        if stream:
            return b"".join([part async for part in response.chunks()])
        return await response.read()
    finally:
        response.close()


# -- framing ------------------------------------------------------------------------------


async def test_content_length_answer_and_keep_alive(client: HttpUpstream) -> None:
    server = await served()
    try:
        for _ in range(3):
            assert await post(client, server.url()) == BODY
        assert server.connections == 1  # one connection carried all three
        head = server.heads[0].decode()
        assert head.startswith("POST /v1/chat/completions HTTP/1.1\r\n")
        assert f"Host: 127.0.0.1:{server.port}\r\n" in head
        assert "Content-Length: 8\r\n" in head and "Content-Type: application/json\r\n" in head
        assert "Accept-Encoding: gzip, deflate\r\n" in head
        assert server.bodies == [b'{"a": 1}'] * 3
    finally:
        await server.close()


async def test_response_status_and_case_insensitive_headers(client: HttpUpstream) -> None:
    async def limited(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\n"
                          b"X-Twice: a\r\nX-Twice: b\r\nContent-Length: 2\r\n\r\n{}")
        return True

    server = await served(limited)
    try:
        response = await client.send(provider(server.url()), "/x", b"", {})
        assert response.status == 429
        assert response.headers["Retry-After"] == "7"
        assert response.headers.get("x-twice") == "a"
        assert await response.read() == b"{}"
        response.close()
        # aiohttp's defaults for a body of bytes without a type
        assert b"Content-Type: application/octet-stream\r\n" in server.heads[0]
    finally:
        await server.close()


async def test_chunked_stream_arrives_as_it_is_sent(client: HttpUpstream) -> None:
    step = asyncio.Event()

    async def events(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n" + chunk(b"data: 1\n\n"))
        await step.wait()
        await server.send(writer, chunk(b"data: 2\n\n") + b"0\r\n\r\n")
        return True

    server = await served(events)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        parts = aiter(response.chunks())
        assert await anext(parts) == b"data: 1\n\n"  # before the rest was even written
        step.set()
        assert [p async for p in parts] == [b"data: 2\n\n"]
        response.close()
        assert await post(client, server.url()) == BODY  # the connection was kept
        assert server.connections == 1
    finally:
        await server.close()


async def test_close_delimited_body_ends_with_the_connection(client: HttpUpstream) -> None:
    async def until_close(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\npart one, ")
        await asyncio.sleep(0.05)
        await server.send(writer, b"part two")
        return False

    server = await served(until_close, until_close)
    try:
        assert await post(client, server.url()) == b"part one, part two"
        assert await post(client, server.url(), stream=True) == b"part one, part two"
        assert await post(client, server.url()) == BODY
        assert server.connections == 3  # never reused after a close-delimited body
    finally:
        await server.close()


async def test_framing_is_read_from_the_header_names_not_their_values(
        client: HttpUpstream) -> None:
    async def misleading(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nX-Note: chunked\r\n"
                          b"X-Other: content-length: 3\r\nConnection: close\r\n\r\nall of it")
        return False

    server = await served(misleading)
    try:
        assert await post(client, server.url()) == b"all of it"
    finally:
        await server.close()


async def test_interim_100_continue_is_skipped(client: HttpUpstream) -> None:
    async def cont(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 100 Continue\r\nX-Interim: 1\r\n\r\n")
        return await answer(b"after", b"X-Final: 2\r\n")(reader, writer, server)

    server = await served(cont)
    try:
        response = await client.send(provider(server.url()), "/x", b"", {})
        assert (response.status, await response.read()) == (200, b"after")
        assert response.headers["x-final"] == "2" and "X-Interim" not in response.headers
        response.close()
    finally:
        await server.close()


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "raw-deflate"])
async def test_compressed_bodies_are_decoded(encoding: str, client: HttpUpstream) -> None:
    plain = b'{"text": "' + b"hello " * 20000 + b'"}'
    if encoding == "gzip":
        packed = gzip.compress(plain)
    else:
        packer = zlib.compressobj(6, zlib.DEFLATED,
                                  zlib.MAX_WBITS if encoding == "deflate" else -zlib.MAX_WBITS)
        packed = packer.compress(plain) + packer.flush()
    name = encoding.removeprefix("raw-").encode()
    server = await served(answer(packed, b"Content-Encoding: " + name + b"\r\n"),
                          answer(packed, b"Content-Encoding: " + name + b"\r\n"))
    try:
        assert await post(client, server.url()) == plain
        assert await post(client, server.url(), stream=True) == plain
    finally:
        await server.close()


async def test_a_gzip_bomb_is_cut_at_the_cap(client: HttpUpstream,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 1 << 20)
    bomb = gzip.compress(b"\0" * (64 << 20))  # 64 MiB inflated, ~64 kB on the wire
    server = await served(answer(bomb, b"Content-Encoding: gzip\r\n"))
    try:
        with pytest.raises(UpstreamError) as info:
            await post(client, server.url())
        assert info.value.code == "upstream_invalid_response"
        assert str(1 << 20) in info.value.message
    finally:
        await server.close()


# -- pump: the body handed over from the connection's callback ------------------------------


async def pumped(response: Any, stop_after: int | None = None) -> tuple[list[bytes], int]:
    """All of a body through pump; the handler asks to stop after `stop_after` parts (each
    time): the parts, and how many calls pump took."""
    parts: list[bytes] = []
    calls = 0

    def handle(data: bytes) -> bool:
        parts.append(data)
        return stop_after is not None and len(parts) % stop_after == 0

    while True:
        calls += 1
        if await response.pump(handle):
            return parts, calls


async def test_pump_calls_its_handler_from_the_connection_as_bytes_arrive(
        client: HttpUpstream) -> None:
    steps = [asyncio.Event() for _ in range(3)]

    async def events(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, step in enumerate(steps):
            await step.wait()
            await server.send(writer, chunk(b"data: %d\n\n" % i))
        await server.send(writer, b"0\r\n\r\n")
        return True

    server = await served(events)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        seen: list[tuple[bytes, bool]] = []

        def handle(data: bytes) -> bool:
            # not in the pumping task: the connection's data_received called it
            seen.append((data, asyncio.current_task() is None))
            if len(seen) < len(steps):
                steps[len(seen)].set()
            return False

        steps[0].set()
        assert await response.pump(handle) is True
        assert seen == [(b"data: %d\n\n" % i, True) for i in range(3)]
        response.close()
        assert await post(client, server.url()) == BODY  # the connection was kept
        assert server.connections == 1
    finally:
        await server.close()


async def test_pump_stops_when_asked_and_buffers_until_called_again(
        client: HttpUpstream) -> None:
    async def three(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for part in (b"one", b"two", b"three"):
            await server.send(writer, chunk(part))
            await asyncio.sleep(0.02)
        await server.send(writer, b"0\r\n\r\n")
        return True

    server = await served(three)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        parts, calls = await pumped(response, stop_after=1)
        assert b"".join(parts) == b"onetwothree"
        assert calls >= 3  # one stop per part, each ended that call of pump
    finally:
        await server.close()


async def test_a_stop_comes_before_a_close_that_followed_it(client: HttpUpstream) -> None:
    """What the handler stopped for (a bad event, say) is what the reader hears of first,
    even when the upstream reset the connection before the reader ran; the reset next."""
    async def then_reset(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
        await asyncio.sleep(0.1)  # the reader is pumping by now
        writer.write(b"bad")
        writer.transport.abort()  # right behind those bytes
        return False

    server = await served(then_reset)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        seen: list[bytes] = []

        def stop(data: bytes) -> bool:
            seen.append(data)
            return True

        assert await response.pump(stop) is False
        assert seen == [b"bad"]
        with pytest.raises(UpstreamError, match="connection closed early"):
            await response.pump(stop)
    finally:
        await server.close()


async def test_a_pumped_body_that_keeps_coming_is_not_idle(client: HttpUpstream) -> None:
    async def steady(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(8):  # 0.8 s in all, idle_s is 0.3: never 0.3 s without a byte
            await asyncio.sleep(0.1)
            await server.send(writer, chunk(b"."))
        await server.send(writer, b"0\r\n\r\n")
        return True

    server = await served(steady, stall_after_head)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        parts, _ = await pumped(response)
        assert b"".join(parts) == b"." * 8
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout) as info:
            await pumped(response)  # a byte, then nothing: idle after 0.3 s
        assert 0.25 < asyncio.get_running_loop().time() - started < 0.9
        assert info.value.message == (
            "Provider up timed out waiting for the next stream event (0.3 s idle)")
    finally:
        await server.close()


async def test_a_compressed_body_is_pumped_inflated(client: HttpUpstream) -> None:
    plain = b"data: " + b"hello " * 200000 + b"\n\n"
    server = await served(answer(gzip.compress(plain), b"Content-Encoding: gzip\r\n"))
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        parts, _ = await pumped(response)
        assert b"".join(parts) == plain
    finally:
        await server.close()


# -- URLs and headers ------------------------------------------------------------------------


async def test_encoded_path_goes_out_as_written_and_others_are_encoded(
        client: HttpUpstream) -> None:
    server = await served()
    try:
        arn = "/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fx/converse"
        await post(client, server.url(), path=arn)
        await post(client, server.url(), path="/models/my model:generate?alt=sse")
        first, second = (head.split(b"\r\n")[0] for head in server.heads)
        assert first == b"POST /v1" + arn.encode() + b" HTTP/1.1"
        assert second == b"POST /v1/models/my%20model:generate?alt=sse HTTP/1.1"
    finally:
        await server.close()


async def test_a_header_with_a_line_break_is_never_sent(client: HttpUpstream) -> None:
    server = await served()
    try:
        with pytest.raises(UpstreamError):
            await post(client, server.url(), headers={"X-Evil": "a\r\nX-Injected: 1"})
        assert server.heads == []
        assert await post(client, server.url()) == BODY
    finally:
        await server.close()


# -- keep-alive: stale connections ------------------------------------------------------------


async def test_keep_alive_connection_closed_while_idle_is_not_used(client: HttpUpstream) -> None:
    server = await served(answer(BODY, keep=False))  # answers, then closes (FIN) while idle
    try:
        assert await post(client, server.url()) == BODY
        await asyncio.sleep(0.05)
        assert await post(client, server.url()) == BODY
        assert server.connections == 2 and len(server.heads) == 2
    finally:
        await server.close()


async def close_without_answer(reader: Reader, writer: Writer, server: Server) -> bool:
    return False  # read the request, close: a keep-alive timeout racing the request


async def test_stale_keep_alive_connection_is_retried_once(client: HttpUpstream) -> None:
    server = await served(answer(BODY), close_without_answer)
    try:
        assert await post(client, server.url()) == BODY
        assert await post(client, server.url()) == BODY  # retried on a new connection
        assert server.connections == 2 and len(server.heads) == 3
    finally:
        await server.close()


async def test_a_reused_connection_closed_after_work_is_not_retried(client: HttpUpstream,
                                                                  monkeypatch: Any) -> None:
    """A close long after the request went out may follow real (billed) work upstream."""
    monkeypatch.setattr("anyrouter_proxy.http1.pool.STALE_RETRY_S", 0.2)

    async def work_then_close(reader: Reader, writer: Writer, server: Server) -> bool:
        await asyncio.sleep(0.4)
        return False

    server = await served(answer(BODY), work_then_close)
    try:
        assert await post(client, server.url()) == BODY
        with pytest.raises(UpstreamError, match="connection closed early"):
            await post(client, server.url())
        assert server.connections == 1 and len(server.heads) == 2
    finally:
        await server.close()


async def test_a_fresh_connection_closed_early_is_not_retried(client: HttpUpstream) -> None:
    server = await served(close_without_answer)
    try:
        with pytest.raises(UpstreamError, match="connection closed early"):
            await post(client, server.url())
        assert len(server.heads) == 1
    finally:
        await server.close()


async def test_no_retry_once_a_byte_of_the_answer_arrived(client: HttpUpstream) -> None:
    async def half_head(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200")
        return False

    server = await served(answer(BODY), half_head)
    try:
        assert await post(client, server.url()) == BODY
        with pytest.raises(UpstreamError, match="connection closed early"):
            await post(client, server.url())
        assert len(server.heads) == 2
    finally:
        await server.close()


async def test_stale_retry_happens_once(client: HttpUpstream) -> None:
    server = await served(answer(BODY), answer(BODY), close_without_answer,
                          close_without_answer)
    try:
        first = asyncio.ensure_future(post(client, server.url()))
        second = asyncio.ensure_future(post(client, server.url()))
        assert await first == BODY and await second == BODY  # two idle connections now
        with pytest.raises(UpstreamError, match="connection closed early"):
            await post(client, server.url())  # stale, then its retry closed too: no more
        assert server.connections == 3 and len(server.heads) == 4
    finally:
        await server.close()


async def test_idle_connections_expire(client: HttpUpstream,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from anyrouter_proxy.http1 import pool
    monkeypatch.setattr(pool, "KEEPALIVE_S", 0.1)
    server = await served()
    try:
        await post(client, server.url())
        await asyncio.sleep(0.3)
        await post(client, server.url())
        assert server.connections == 2
    finally:
        await server.close()
    assert KEEPALIVE_S == 15.0  # aiohttp's keepalive_timeout, the default


# -- timeouts ---------------------------------------------------------------------------------


async def test_slow_head_is_a_first_byte_timeout(client: HttpUpstream) -> None:
    async def slow(reader: Reader, writer: Writer, server: Server) -> bool:
        await asyncio.sleep(1)
        return await answer(BODY)(reader, writer, server)

    server = await served(slow)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout) as info:
            await post(client, server.url(), timeouts=Timeouts(1, 0.2, 5, 10))
        assert asyncio.get_running_loop().time() - started < 0.6
        assert (info.value.stage, info.value.message) == (
            "answer", "Provider up timed out waiting for the first byte")
    finally:
        await server.close()


async def stall_after_head(reader: Reader, writer: Writer, server: Server) -> bool:
    await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                      + chunk(b"data: 1\n\n"))
    await asyncio.sleep(5)
    return False


@pytest.mark.parametrize(("stream", "waiting_for"), [
    (False, "reading the response"), (True, "the next stream event (0.3 s idle)")])
async def test_idle_body_times_out(stream: bool, waiting_for: str,
                                   client: HttpUpstream) -> None:
    server = await served(stall_after_head)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(UpstreamTimeout) as info:
            await post(client, server.url(), stream=stream)
        assert 0.25 < asyncio.get_running_loop().time() - started < 0.9
        assert info.value.stage == "upstream"
        assert info.value.message == f"Provider up timed out waiting for {waiting_for}"
    finally:
        await server.close()


async def test_slow_consumer_is_not_idle(client: HttpUpstream) -> None:
    async def two(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                          + chunk(b"one") + chunk(b"two") + b"0\r\n\r\n")
        return True

    server = await served(two)
    try:
        response = await client.send(provider(server.url()), "/s", b"{}", {})
        await asyncio.sleep(0.8)  # idle_s is 0.3, but no read was waiting
        assert [p async for p in response.chunks()] == [b"onetwo"]
    finally:
        await server.close()


async def test_trickling_body_is_cut_at_total_s(client: HttpUpstream) -> None:
    async def trickle(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(100):
            await server.send(writer, chunk(b" "))
            await asyncio.sleep(0.05)
        return False

    server = await served(trickle)
    try:
        with pytest.raises(UpstreamTimeout) as info:
            await post(client, server.url(), timeouts=Timeouts(1, 1, 0.3, 0.5))
        assert info.value.stage == "answer"
        assert "the end of the answer (0.5 s total)" in info.value.message
    finally:
        await server.close()


async def test_waiting_for_a_full_pool_is_the_pool_stage(client: HttpUpstream) -> None:
    server = await served(stall_after_head)
    try:
        busy = provider(server.url(), Timeouts(1, 0.2, 5, 10), max_connections=1)
        held = await client.send(busy, "/s", b"{}", {})
        with pytest.raises(UpstreamTimeout) as info:
            await client.send(busy, "/s", b"", {})
        assert info.value.stage == "pool"
        assert "a free connection (all 1 of its pool in use)" in info.value.message
        held.close()
        assert await post(client, server.url()) == BODY
    finally:
        await server.close()


async def test_a_released_connection_goes_to_the_next_in_line(client: HttpUpstream) -> None:
    release = asyncio.Event()

    async def slow(reader: Reader, writer: Writer, server: Server) -> bool:
        await release.wait()
        return await answer(b"first")(reader, writer, server)

    server = await served(slow)
    try:
        one = provider(server.url(), Timeouts(1, 5, 5, 10), max_connections=1)
        first = asyncio.ensure_future(client.send(one, "/a", b"", {}))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(client.send(one, "/b", b"", {}))
        await asyncio.sleep(0.05)
        assert len(server.heads) == 1  # the second waits for the only connection
        release.set()
        assert await (await first).read() == b"first"
        assert await (await second).read() == BODY
        assert server.connections == 1
    finally:
        await server.close()


# -- faults ------------------------------------------------------------------------------------


async def test_connection_refused(client: HttpUpstream) -> None:
    server = await served()
    url = server.url()
    await server.close()
    await asyncio.sleep(0.01)
    with pytest.raises(UpstreamError, match="up: connection failed"):
        await post(client, url)


async def test_a_base_url_that_is_not_http_is_an_upstream_error(client: HttpUpstream) -> None:
    with pytest.raises(UpstreamError, match="up: connection failed"):
        await post(client, "ftp://127.0.0.1/v1")


async def test_reset_mid_body(client: HttpUpstream) -> None:
    async def reset(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n{\"a\"")
        await asyncio.sleep(0.05)
        writer.transport.abort()
        return False

    server = await served(reset, reset)
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError, match="connection closed early"):
                await post(client, server.url(), stream=stream)
        assert await post(client, server.url()) == BODY
    finally:
        await server.close()


@pytest.mark.parametrize("reply", [b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
                                   b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 100_000 + b"\r\n"])
async def test_not_http_is_an_invalid_response(reply: bytes, client: HttpUpstream) -> None:
    async def bad(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, reply)
        await asyncio.sleep(0.2)
        return False

    server = await served(bad)
    try:
        with pytest.raises(UpstreamError, match="up: invalid response"):
            await post(client, server.url())
    finally:
        await server.close()


def endless(size: int, framing: bytes = b"Content-Length") -> Handler:
    async def handle(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\n%s: %d\r\n\r\n" % (framing, size))
        block = b" " * (1 << 16)
        for _ in range(size // len(block)):
            await server.send(writer, block)
        return False

    return handle


async def test_huge_body_is_refused_without_reading_it_all(
        client: HttpUpstream, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(upstream, "MAX_RESPONSE_BYTES", 1 << 20)
    server = await served(endless(64 << 20))
    try:
        with pytest.raises(UpstreamError) as info:
            await post(client, server.url())
        assert info.value.code == "upstream_invalid_response"
        assert info.value.message == f"Provider up sent a response over {1 << 20} bytes"
        await asyncio.sleep(0.1)
        assert server.bytes_sent < 16 << 20  # the connection was dropped at the cap
        assert await post(client, server.url()) == BODY
    finally:
        await server.close()


async def test_a_stream_not_read_pauses_the_upstream(client: HttpUpstream) -> None:
    size = 64 << 20
    server = await served(endless(size))
    try:
        response = await client.send(provider(server.url(), Timeouts(1, 1, 5, 30)), "/s",
                                     b"", {})
        await asyncio.sleep(0.5)  # the reader is busy elsewhere: the upstream must wait
        assert server.bytes_sent < 16 << 20
        received = 0
        async for part in response.chunks():
            received += len(part)
        assert received == size
    finally:
        await server.close()


# -- TLS ------------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh certificate for localhost and 127.0.0.1, and a
    client context that trusts it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=1))
            .not_valid_after(now + dt.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([
                x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert_file, key_file)
    client = ssl.create_default_context(cafile=str(cert_file))
    return server, client


async def test_tls_with_sni_and_a_trusted_certificate(tmp_path: Path) -> None:
    server_tls, client_tls = self_signed(tmp_path)
    server = await Server([answer(b"x" * 300_000)]).start(server_tls)
    http = HttpUpstream(ssl_context=client_tls)
    try:
        assert await post(http, server.url("https", "localhost")) == b"x" * 300_000
        assert await post(http, server.url("https", "localhost"), stream=True) == BODY
        assert server.sni == ["localhost"] and server.connections == 1
    finally:
        await http.close()
        await server.close()


async def test_tls_with_an_untrusted_certificate_fails_to_connect(tmp_path: Path) -> None:
    server_tls, _ = self_signed(tmp_path)
    server = await Server().start(server_tls)
    http = HttpUpstream()  # the system's CAs: they never signed this one
    try:
        with pytest.raises(UpstreamError, match="up: connection failed"):
            await post(http, server.url("https", "localhost"))
    finally:
        await http.close()
        await server.close()


# -- lifecycle ------------------------------------------------------------------------------


async def test_retire_closes_the_pools_of_changed_providers(client: HttpUpstream) -> None:
    server = await served()
    try:
        kept, changed = provider(server.url()), provider(server.url(), Timeouts(1, 2, 1, 0.2))
        await client.send(kept, "/a", b"", {})
        old = await client.send(changed, "/b", b"", {})
        client.retire([kept])
        assert await old.read() == BODY  # what is under way finishes
        await asyncio.sleep(0.05)
        assert await post(client, server.url()) == BODY
        assert server.connections == 2  # kept's connection stayed; changed's closed
        await asyncio.sleep(0.3)  # changed's total_s: its pool is closed
    finally:
        await server.close()


async def test_close_fails_a_stream_under_way(client: HttpUpstream) -> None:
    server = await served(stall_after_head)
    try:
        response = await client.send(provider(server.url(), Timeouts(1, 1, 5, 10)), "/s",
                                     b"", {})
        parts = aiter(response.chunks())
        assert await anext(parts) == b"data: 1\n\n"
        pending = asyncio.ensure_future(anext(parts))
        await asyncio.sleep(0.05)
        await client.close()
        with pytest.raises(UpstreamError, match="connection closed early"):
            await pending
    finally:
        await server.close()


# -- the same under uvloop ----------------------------------------------------------------------


async def uvloop_cases(tmp_path: Path) -> None:
    http = HttpUpstream()
    server = await served(answer(BODY), close_without_answer, answer(BODY), stall_after_head)
    try:
        assert await post(http, server.url()) == BODY
        assert await post(http, server.url()) == BODY  # the stale retry
        with pytest.raises(UpstreamTimeout):
            await post(http, server.url(), stream=True)
    finally:
        await http.close()
        await server.close()
    big = await served(endless(64 << 20), endless(64 << 20))
    http = HttpUpstream()
    try:
        response = await http.send(provider(big.url(), Timeouts(1, 1, 5, 30)), "/s", b"", {})
        await asyncio.sleep(0.3)
        assert big.bytes_sent < 16 << 20
        assert sum([len(p) async for p in response.chunks()]) == 64 << 20
        response = await http.send(provider(big.url(), Timeouts(1, 1, 5, 30)), "/s", b"", {})
        parts, _ = await pumped(response, stop_after=4)  # paused and resumed, by pump
        assert sum(map(len, parts)) == 64 << 20
    finally:
        await http.close()
        await big.close()
    server_tls, client_tls = self_signed(tmp_path)
    secure = await Server().start(server_tls)
    http = HttpUpstream(ssl_context=client_tls)
    try:
        assert await post(http, secure.url("https", "localhost")) == BODY
    finally:
        await http.close()
        await secure.close()


def test_under_uvloop(tmp_path: Path) -> None:
    uvloop.run(uvloop_cases(tmp_path))


# -- review: connections left in a bad state ---------------------------------------------------


async def test_the_start_of_an_unasked_answer_drops_the_connection(client: HttpUpstream) -> None:
    """Bytes after the end of an answer are the start of one nobody asked for: that
    connection must not carry the next request (its parser would read their rest)."""
    first: list[Writer] = []

    async def with_a_partial_extra(reader: Reader, writer: Writer, server: Server) -> bool:
        first.append(writer)
        await server.send(writer, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst"
                          b"HTTP/1.1 200 OK\r\n")
        return True

    async def rest_of_the_extra(reader: Reader, writer: Writer, server: Server) -> bool:
        if writer is first[0]:  # the extra answer goes on, then the real one
            await server.send(writer, b"Content-Length: 5\r\n\r\nstale")
        return await answer(BODY)(reader, writer, server)

    server = await served(with_a_partial_extra, rest_of_the_extra)
    try:
        assert await post(client, server.url()) == b"first"
        assert await post(client, server.url()) == BODY
        assert server.connections == 2
    finally:
        await server.close()


async def test_a_close_delimited_body_cut_by_a_reset_is_not_whole(client: HttpUpstream) -> None:
    """A body without a length ends with a clean close (FIN), not with a reset."""
    async def reset(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n{\"a\"")
        await asyncio.sleep(0.05)
        sock = writer.transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.transport.abort()  # RST
        return False

    server = await served(reset, reset)
    try:
        for stream in (False, True):
            with pytest.raises(UpstreamError, match="connection closed early"):
                await post(client, server.url(), stream=stream)
    finally:
        await server.close()


async def test_a_connection_closed_as_it_is_handed_over_is_not_waited_on(
        client: HttpUpstream) -> None:
    """The next in line gives up just as the only connection is handed to it, and the
    upstream closes that connection meanwhile: the one after must not send on it and wait
    first_byte_s for an answer that cannot come (it retries on a new connection)."""
    go = asyncio.Event()

    async def slow(reader: Reader, writer: Writer, server: Server) -> bool:
        await go.wait()
        return await answer(b"first")(reader, writer, server)

    server = await served(slow)
    try:
        one = provider(server.url(), Timeouts(1, 3, 5, 10), max_connections=1)
        first = asyncio.ensure_future(client.send(one, "/a", b"", {}))
        await asyncio.sleep(0.05)
        second = asyncio.ensure_future(client.send(one, "/b", b"", {}))
        await asyncio.sleep(0.01)
        third = asyncio.ensure_future(client.send(one, "/c", b"", {}))
        await asyncio.sleep(0.05)
        pool = next(iter(client._pools.values()))
        release = pool.release

        def handed_over_then_lost(conn: Any) -> None:
            pool.release = release  # type: ignore[method-assign]
            release(conn)  # to the second in line...
            second.cancel()  # ...whose client leaves...
            conn.abort()  # ...as the upstream closes the connection

        pool.release = handed_over_then_lost  # type: ignore[method-assign]
        go.set()
        assert await (await first).read() == b"first"
        with pytest.raises(asyncio.CancelledError):
            await second
        answered = await asyncio.wait_for(third, 1)  # not after first_byte_s
        assert await answered.read() == BODY
    finally:
        await server.close()


async def test_stray_line_breaks_before_the_status_line_are_skipped(
        client: HttpUpstream) -> None:
    """Blank lines before an answer (a server's CRLF after its previous body, arriving
    late) are skipped by the parser: its headers must still be the answer's."""
    packed = gzip.compress(BODY)

    async def late_crlf(reader: Reader, writer: Writer, server: Server) -> bool:
        await server.send(writer, b"\r\n\r\nHTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\n"
                          b"Retry-After: 3\r\nContent-Length: %d\r\n\r\n%s"
                          % (len(packed), packed))
        return True

    server = await served(late_crlf)
    try:
        response = await client.send(provider(server.url()), "/x", b"", {})
        assert response.headers.get("retry-after") == "3"
        assert await response.read() == BODY
        response.close()
    finally:
        await server.close()


async def test_requests_that_gave_up_waiting_are_not_kept_in_line(client: HttpUpstream) -> None:
    """While the pool stays full, each request that times out in line must leave it (a
    stalled upstream would otherwise keep one future per such request)."""
    server = await served(stall_after_head)
    try:
        busy = provider(server.url(), Timeouts(1, 0.02, 5, 10), max_connections=1)
        held = await client.send(busy, "/s", b"{}", {})
        for _ in range(20):
            with pytest.raises(UpstreamTimeout):
                await client.send(busy, "/s", b"", {})
        pool = next(iter(client._pools.values()))
        assert len(pool._waiters) == 0
        held.close()
    finally:
        await server.close()


async def uvloop_review_cases() -> None:
    for case in (test_the_start_of_an_unasked_answer_drops_the_connection,
                 test_a_close_delimited_body_cut_by_a_reset_is_not_whole,
                 test_a_connection_closed_as_it_is_handed_over_is_not_waited_on,
                 test_stray_line_breaks_before_the_status_line_are_skipped):
        http = HttpUpstream()
        try:
            await case(http)
        finally:
            await http.close()


def test_connection_state_cases_under_uvloop() -> None:
    uvloop.run(uvloop_review_cases())
