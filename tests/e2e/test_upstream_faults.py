"""Upstreams that misbehave at the socket and wire level.

The faulty upstream is a raw asyncio TCP server (`RawUpstream`) so that it can do what a
well-behaved HTTP framework never would: accept and close, reset, send half a status
line, close mid-body, stall, send HTML or 50 MB. Behind it, in most tests, a second
provider (a FakeOpenAI) serves the same model, so the tests also check that the proxy
falls back to it whenever it may (before the first byte has gone to the client),
and never after.

Every case checks three things: the client's answer (an error envelope, or a stream
that ends with an error event, never silently), the fallback, and the usage row
(GET /generation/{id}: status_code, error_code, attempts [{provider, status,
latency_ms}]).

    model `m`     routes: primary (the faulty RawUpstream), then backup (FakeOpenAI)
    model `solo`  routes: primary only, so the fault itself reaches the client
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import anthropic
import openai
import pytest
import yaml

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.state import STORE
from anyrouter_proxy.upstream import MAX_RESPONSE_BYTES
from bench.serve_process import ServeProcess, proc_status_kb
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256
from tests.fakes import ANSWER, FakeOpenAI

StartProxy = Callable[[Config], Awaitable[Proxy]]

FAST = {"connect_s": 1.0, "first_byte_s": 1.0, "idle_s": 0.4, "total_s": 30.0}
SERVER = {"retry_backoff_s": 0.01, "retry_backoff_max_s": 0.05}
MESSAGES = [{"role": "user", "content": "hi"}]
STREAM_TEXT = "tok0 tok1 tok2 "  # what the FakeOpenAI backup streams
FIFTY_MB = 50 * 1024 * 1024


# -- the raw upstream ---------------------------------------------------------------------

Reader, Writer = asyncio.StreamReader, asyncio.StreamWriter
# A fault: gets the parsed request body, writes (or not) to the socket; returns True to
# keep the connection open for the next request.
Fault = Callable[[Reader, Writer, dict[str, Any]], Awaitable[bool]]


class RawUpstream:
    """An HTTP/1.1 server written by hand: each request pops the next fault off `script`
    (a correct OpenAI answer when the script is empty)."""

    def __init__(self) -> None:
        self.script: deque[Fault] = deque()
        self.requests: list[dict[str, Any]] = []
        self.bytes_sent = 0
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def then(self, *faults: Fault) -> RawUpstream:
        self.script.extend(faults)
        return self

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def _connection(self, reader: Reader, writer: Writer) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.strip().lower() == b"content-length":
                        length = int(value)
                body = json.loads(await reader.readexactly(length)) if length else {}
                self.requests.append(body)
                fault = self.script.popleft() if self.script else answer
                if not await fault(reader, writer, body):
                    break
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            pass
        except asyncio.CancelledError:
            pass
        finally:
            self._tasks.discard(task)
            if not writer.transport.is_closing():
                writer.close()

    async def send(self, writer: Writer, data: bytes) -> None:
        writer.write(data)
        self.bytes_sent += len(data)
        await writer.drain()


def head(status: str = "200 OK", content_type: str = "application/json",
         length: int | None = None, extra: str = "") -> bytes:
    framing = f"Content-Length: {length}\r\n" if length is not None \
        else "Transfer-Encoding: chunked\r\n"
    return (f"HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\n{framing}{extra}"
            f"\r\n").encode()


def completion(body: dict[str, Any]) -> bytes:
    return json.dumps({
        "id": "chatcmpl-raw", "object": "chat.completion", "created": 1, "model": body["model"],
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": ANSWER}}],
        "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}}).encode()


def sse_chunk(i: int, content: str | None = None, finish: str | None = None) -> bytes:
    delta = {"content": content if content is not None else f"raw{i} "}
    data = {"id": "chatcmpl-raw", "object": "chat.completion.chunk", "created": 1,
            "model": "primary-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return b"data: " + json.dumps(data).encode() + b"\n\n"


SSE_HEAD = head(content_type="text/event-stream", length=None, extra="Cache-Control: no-cache\r\n")


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


LAST_CHUNK = b"0\r\n\r\n"


async def answer(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """A correct answer (stream or not)."""
    if body.get("stream"):
        events = [sse_chunk(i) for i in range(3)] + [
            sse_chunk(3, "", "stop"),
            b'data: {"id":"chatcmpl-raw","object":"chat.completion.chunk","created":1,'
            b'"model":"x","choices":[],"usage":{"prompt_tokens":7,"completion_tokens":3,'
            b'"total_tokens":10}}\n\n', b"data: [DONE]\n\n"]
        writer.write(SSE_HEAD + b"".join(chunked(e) for e in events) + LAST_CHUNK)
    else:
        data = completion(body)
        writer.write(head(length=len(data)) + data)
    await writer.drain()
    return True


# -- faults ---------------------------------------------------------------------------------


async def close_at_once(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """Accepts, reads the request, closes without a byte (a FIN)."""
    return False


async def reset_at_once(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """Reads the request and resets the connection (RST, SO_LINGER 0)."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
    return False


async def half_status_line(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    writer.write(b"HTTP/1.1 20")
    await writer.drain()
    return False


async def garbage_status_line(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    writer.write(b"SSH-2.0-OpenSSH_9.2\r\n\r\n")
    await writer.drain()
    return False


async def huge_header(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """A status line, then one header of 100 kB (aiohttp's client allows 8 kB)."""
    writer.write(b"HTTP/1.1 200 OK\r\nX-Padding: " + b"a" * 100_000 + b"\r\n")
    await writer.drain()
    await asyncio.sleep(0.1)
    return False


async def comments_forever(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """An SSE stream that sends a keep-alive comment every 50 ms and never an event."""
    writer.write(SSE_HEAD)
    for _ in range(200):
        writer.write(chunked(b": keep-alive\n\n"))
        await writer.drain()
        await asyncio.sleep(0.05)
    return False


async def headers_then_close(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    """Promises a body of Content-Length bytes, sends a third of it, closes."""
    data = completion(body) if not body.get("stream") else sse_chunk(0) * 3
    cut = len(data) // 6  # inside the body, and inside the stream's first event
    writer.write(head(length=len(data), content_type="text/event-stream"
                      if body.get("stream") else "application/json") + data[:cut])
    await writer.drain()
    return False


async def headers_then_reset(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    data = completion(body)
    writer.write(head(length=len(data)) + data[:10])
    await writer.drain()
    await asyncio.sleep(0.05)
    return await reset_at_once(reader, writer, body)


async def headers_then_stall(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    ctype = "text/event-stream" if body.get("stream") else "application/json"
    writer.write(head(content_type=ctype, length=None))
    await writer.drain()
    await asyncio.sleep(30)
    return False


def html(status: str) -> Fault:
    page = (b"<!DOCTYPE html><html><head><title>" + status.encode() + b"</title></head>"
            b"<body><center><h1>" + status.encode() + b"</h1></center><hr>"
            b"<center>nginx</center></body></html>")

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        writer.write(head(status, "text/html", len(page)) + page)
        await writer.drain()
        return True

    return fault


async def not_json_200(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
    data = b"upstream says: all good, probably"
    writer.write(head(length=len(data)) + data)
    await writer.drain()
    return True


def huge_body(upstream: RawUpstream, size: int = FIFTY_MB) -> Fault:
    """A 200 of `size` bytes of JSON-looking text, written 1 MiB at a time."""
    block = b" " * (1 << 20)

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        writer.write(head(length=size + 2))
        await upstream.send(writer, b"{\"")
        for _ in range(size // len(block)):
            await upstream.send(writer, block)
        return False

    return fault


def stream_then(events: int, tail: bytes | None, *, stall: bool = False,
                reset: bool = False) -> Fault:
    """A stream of `events` good chunks, then `tail` raw bytes (in the chunked body),
    then: stall, reset, or close (without the terminating chunk)."""

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        writer.write(SSE_HEAD)
        for i in range(events):
            writer.write(chunked(sse_chunk(i)))
            await writer.drain()
            await asyncio.sleep(0.02)
        if tail:
            writer.write(chunked(tail))
        await writer.drain()
        if stall:
            await asyncio.sleep(30)
        if reset:
            return await reset_at_once(reader, writer, body)
        await asyncio.sleep(0.05)
        return False

    return fault


def stream_ends_cleanly_without_done(events: int) -> Fault:
    """Every event, a finish_reason, a proper end of the HTTP body: but no [DONE]."""

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        out = [sse_chunk(i) for i in range(events)] + [sse_chunk(events, "", "stop")]
        writer.write(SSE_HEAD + b"".join(chunked(e) for e in out) + LAST_CHUNK)
        await writer.drain()
        return True

    return fault


def big_stream(upstream: RawUpstream, size: int = FIFTY_MB, event_bytes: int = 4096) -> Fault:
    """`size` bytes of well-formed events (each ~event_bytes), then [DONE]."""
    text = "x" * event_bytes

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        event = chunked(sse_chunk(0, text))
        batch = event * 64
        await upstream.send(writer, SSE_HEAD)
        sent = 0
        while sent < size:
            await upstream.send(writer, batch)
            sent += len(batch)
        await upstream.send(writer, chunked(sse_chunk(1, "", "stop")) +
                            chunked(b"data: [DONE]\n\n") + LAST_CHUNK)
        return True

    return fault


def endless_event(upstream: RawUpstream, size: int = FIFTY_MB) -> Fault:
    """One `data:` line that never ends: `size` bytes without a line break."""
    block = b"x" * (1 << 20)

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        await upstream.send(writer, SSE_HEAD)
        await upstream.send(writer, chunked(sse_chunk(0)) + chunked(b'data: {"id":"'))
        for _ in range(size // len(block)):
            await upstream.send(writer, chunked(block))
        await upstream.send(writer, chunked(b'"}\n\n') + chunked(b"data: [DONE]\n\n")
                            + LAST_CHUNK)
        return True

    return fault


def trickle_then_answer(seconds: float, every_s: float) -> Fault:
    """Headers at once, then a byte of JSON whitespace every `every_s` for `seconds`,
    then the answer: a slow non-stream body that is never idle (what OpenRouter-style
    upstreams do to keep a long non-stream generation's connection alive)."""

    async def fault(reader: Reader, writer: Writer, body: dict[str, Any]) -> bool:
        writer.write(head(length=None))
        await writer.drain()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            writer.write(chunked(b"\n"))
            await writer.drain()
            await asyncio.sleep(every_s)
        writer.write(chunked(completion(body)) + LAST_CHUNK)
        await writer.drain()
        return True

    return fault


# -- fixtures and helpers --------------------------------------------------------------------


@pytest.fixture
async def raw() -> AsyncIterator[RawUpstream]:
    upstream = RawUpstream()
    await upstream.start()
    yield upstream
    await upstream.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def providers(raw: RawUpstream, backup: FakeOpenAI, *, refused: bool = False,
              timeouts: dict[str, float] | None = None) -> dict[str, Any]:
    base = f"http://127.0.0.1:{closed_port()}/v1" if refused else raw.base_url
    return {
        "primary": {"kind": "openai", "base_url": base, "api_key": PROVIDER_KEY,
                    "timeouts": {**FAST, **(timeouts or {})}},
        "backup": {"kind": "openai", "base_url": backup.base_url,  # type: ignore[attr-defined]
                   "api_key": PROVIDER_KEY, "timeouts": FAST},
    }


MODELS = {
    "m": {"routes": [{"provider": "primary", "model": "primary-model"},
                     {"provider": "backup", "model": "backup-model"}]},
    "solo": {"routes": [{"provider": "primary", "model": "primary-model"}]},
}


@pytest.fixture
async def proxy(config_factory: ConfigFactory, start_proxy: StartProxy, raw: RawUpstream,
                fake_backup: FakeOpenAI) -> Proxy:
    return await start_proxy(config_factory(providers=providers(raw, fake_backup),
                                            models=MODELS, server=SERVER))


MakeProxy = Callable[[bool], Awaitable[Proxy]]


@pytest.fixture
def make_proxy(config_factory: ConfigFactory, start_proxy: StartProxy, raw: RawUpstream,
               fake_backup: FakeOpenAI) -> MakeProxy:
    """The proxy; with `refused`, the primary's address is a closed port."""

    async def make(refused: bool) -> Proxy:
        return await start_proxy(config_factory(
            providers=providers(raw, fake_backup, refused=refused), models=MODELS,
            server=SERVER))

    return make


async def post(proxy: Proxy, model: str, *, stream: bool = False, timeout_s: float = 20,
               path: str = "/api/v1/chat/completions") -> tuple[int, dict[str, str], bytes]:
    body: dict[str, Any] = {"model": model, "messages": MESSAGES, "stream": stream}
    if path.endswith("/messages"):
        body["max_tokens"] = 50
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout_s)) as session, \
            session.post(proxy.url(path), json=body, headers=auth()) as response:
        return response.status, dict(response.headers), await response.read()


async def generation(proxy: Proxy, gen_id: str) -> dict[str, Any]:
    await proxy.flush()
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(f"/api/v1/generation/{gen_id}"), headers=auth()) as response:
        assert response.status == 200, await response.text()
        return (await response.json())["data"]  # type: ignore[no-any-return]


def attempts(row: dict[str, Any]) -> list[tuple[str, Any]]:
    return [(a["provider"], a["status"]) for a in row["attempts"]]


def envelope(raw_body: bytes) -> dict[str, Any]:
    """The error object of a JSON error answer (all four keys present)."""
    error = json.loads(raw_body)["error"]
    assert {"message", "type", "code", "param"} <= set(error), error
    return error  # type: ignore[no-any-return]


def sse_blocks(raw_body: bytes) -> list[bytes]:
    return [b for b in raw_body.split(b"\n\n") if b.strip()]


def data_events(blocks: list[bytes]) -> list[Any]:
    return [json.loads(b.removeprefix(b"data: ")) for b in blocks if b.startswith(b"data: {")]


def text_of(blocks: list[bytes]) -> str:
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in data_events(blocks)
                   if c.get("choices"))


async def still_serves(proxy: Proxy, model: str = "m") -> None:
    """The proxy answers a normal request promptly after the fault."""
    started = time.monotonic()
    status, _, body = await post(proxy, model)
    assert status == 200, body
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER
    assert time.monotonic() - started < 2


# -- before the first byte: every fault falls back, or is a clear envelope ----------------------

# fault, the usage row's status for the primary's attempt, (status, type, code) alone
PRE_BYTE_FAULTS: dict[str, tuple[Fault | None, Any, tuple[int, str, str]]] = {
    "connection_refused": (None, "error", (502, "upstream_error", "upstream_error")),
    "accept_then_close": (close_at_once, "error", (502, "upstream_error", "upstream_error")),
    "reset_before_headers": (reset_at_once, "error", (502, "upstream_error", "upstream_error")),
    "half_a_status_line": (half_status_line, "error",
                           (502, "upstream_error", "upstream_error")),
    "garbage_status_line": (garbage_status_line, "error",
                            (502, "upstream_error", "upstream_error")),
    "huge_header": (huge_header, "error", (502, "upstream_error", "upstream_error")),
    "headers_then_close_mid_body": (headers_then_close, "upstream_error",
                                    (502, "upstream_error", "upstream_error")),
    "headers_then_reset_mid_body": (headers_then_reset, "upstream_error",
                                    (502, "upstream_error", "upstream_error")),
    "stall_after_headers": (headers_then_stall, "timeout",
                            (504, "timeout_error", "upstream_timeout")),
    "html_200": (html("200 OK"), "upstream_invalid_response",
                 (502, "upstream_error", "upstream_invalid_response")),
    "html_502": (html("502 Bad Gateway"), 502, (502, "upstream_error", "upstream_error")),
    "not_json_200": (not_json_200, "upstream_invalid_response",
                     (502, "upstream_error", "upstream_invalid_response")),
}


@pytest.mark.parametrize("case", list(PRE_BYTE_FAULTS))
async def test_fault_falls_back_to_the_second_provider(case: str, make_proxy: MakeProxy,
                                                       raw: RawUpstream,
                                                       fake_backup: FakeOpenAI) -> None:
    fault, attempt_status, _ = PRE_BYTE_FAULTS[case]
    proxy = await make_proxy(fault is None)
    if fault is not None:
        raw.then(fault)
    started = time.monotonic()
    status, headers, body = await post(proxy, "m")
    assert status == 200, body
    assert time.monotonic() - started < 3
    assert headers["X-AnyRouter-Provider"] == "backup"
    data = json.loads(body)
    assert data["choices"][0]["message"]["content"] == ANSWER
    assert len(fake_backup.requests) == 1
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert (row["status_code"], row["error_code"], row["cancelled"]) == (200, None, False)
    assert attempts(row) == [("primary", attempt_status), ("backup", 200)]
    assert all(a["latency_ms"] >= 0 for a in row["attempts"])
    await still_serves(proxy)


@pytest.mark.parametrize("case", list(PRE_BYTE_FAULTS))
async def test_fault_on_a_single_route_is_a_clear_envelope(case: str,
                                                           make_proxy: MakeProxy,
                                                           raw: RawUpstream) -> None:
    fault, attempt_status, (want_status, want_type, want_code) = PRE_BYTE_FAULTS[case]
    proxy = await make_proxy(fault is None)
    if fault is not None:
        raw.then(fault, fault)  # the one retry (server.retries: 1) meets it too
    status, headers, body = await post(proxy, "solo")
    assert headers["Content-Type"].startswith("application/json")
    error = envelope(body)
    assert (status, error["type"], error["code"]) == (want_status, want_type, want_code), error
    assert "primary" in error["message"]
    assert error["metadata"]["provider_name"] == "primary"
    assert "<html" not in error["message"].lower() or case == "html_502"  # see below
    assert PROVIDER_KEY not in body.decode()
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert (row["status_code"], row["error_code"]) == (want_status, want_code)
    assert row["cancelled"] is False and row["total_cost"] == 0
    assert attempts(row) == [("primary", attempt_status)] * 2


async def test_html_error_page_is_not_pasted_into_the_message(make_proxy: MakeProxy,
                                                              raw: RawUpstream) -> None:
    proxy = await make_proxy(False)
    raw.then(html("502 Bad Gateway"), html("502 Bad Gateway"))
    status, _, body = await post(proxy, "solo")
    error = envelope(body)
    assert (status, error["code"]) == (502, "upstream_error")
    assert "<" not in error["message"], error["message"]


STREAM_PRE_BYTE_FAULTS = {
    **{case: PRE_BYTE_FAULTS[case][:2] for case in (
        "connection_refused", "accept_then_close", "reset_before_headers",
        "half_a_status_line", "huge_header", "headers_then_close_mid_body",
        "stall_after_headers", "html_200", "html_502", "not_json_200")},
    # comments keep the connection busy, but the first event must come within first_byte_s
    "comments_but_no_event": (comments_forever, "timeout"),
}


@pytest.mark.parametrize("case", list(STREAM_PRE_BYTE_FAULTS))
async def test_stream_fault_before_the_first_event_falls_back(
        case: str, make_proxy: MakeProxy, raw: RawUpstream,
        fake_backup: FakeOpenAI) -> None:
    fault, attempt_status = STREAM_PRE_BYTE_FAULTS[case]
    proxy = await make_proxy(fault is None)
    if fault is not None:
        raw.then(fault)
    status, headers, body = await post(proxy, "m", stream=True)
    assert status == 200
    assert headers["X-AnyRouter-Provider"] == "backup"
    blocks = sse_blocks(body)
    assert text_of(blocks) == STREAM_TEXT
    assert blocks[-1] == b"data: [DONE]"
    assert not any(b'"error"' in b for b in blocks)
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert (row["status_code"], row["error_code"], row["streamed"]) == (200, None, True)
    if case == "headers_then_close_mid_body":  # the cut may land inside or between events
        (first, first_status), second = attempts(row)
        assert first == "primary"
        assert first_status in ("upstream_error", "upstream_invalid_response")
        assert second == ("backup", 200)
    else:
        assert attempts(row) == [("primary", attempt_status), ("backup", 200)]


# -- after the first byte: never retried, always an error event --------------------------------

# fault, error codes the final event may carry
MID_STREAM_FAULTS: dict[str, tuple[Fault, tuple[str, ...]]] = {
    "close_after_events": (stream_then(2, None), ("upstream_error", "upstream_invalid_response")),
    "reset_after_events": (stream_then(2, None, reset=True),
                           ("upstream_error", "upstream_invalid_response")),
    "stall_after_events": (stream_then(2, None, stall=True), ("upstream_timeout",)),
    # the data line of the third event, without the blank line that ends it, then close
    "truncated_event": (stream_then(2, sse_chunk(2).rstrip(b"\n")),
                        ("upstream_error", "upstream_invalid_response")),
    "truncated_json": (stream_then(2, sse_chunk(2)[:40] + b"\n\n"),
                       ("upstream_invalid_response",)),
    "no_done_clean_close": (stream_ends_cleanly_without_done(2),
                            ("upstream_error", "upstream_invalid_response")),
}


@pytest.mark.parametrize("case", list(MID_STREAM_FAULTS))
async def test_mid_stream_fault_is_a_final_error_event(case: str, proxy: Proxy,
                                                       raw: RawUpstream,
                                                       fake_backup: FakeOpenAI) -> None:
    fault, codes = MID_STREAM_FAULTS[case]
    raw.then(fault)
    status, headers, body = await post(proxy, "m", stream=True)
    assert status == 200 and headers["X-AnyRouter-Provider"] == "primary"
    blocks = sse_blocks(body)
    assert text_of(blocks) == "raw0 raw1 "  # what came before the fault reached the client
    assert blocks[-1] == b"data: [DONE]"  # the stream ends: error event, then [DONE]
    error = json.loads(blocks[-2].removeprefix(b"data: "))["error"]
    assert {"message", "type", "code", "param"} <= set(error)
    assert error["code"] in codes, error
    assert "primary" in error["message"]
    assert fake_backup.requests == []  # nothing is retried once the stream began
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert row["status_code"] == (504 if error["code"] == "upstream_timeout" else 502)
    assert row["error_code"] == error["code"]
    assert row["cancelled"] is False and row["streamed"] is True
    assert [a["provider"] for a in row["attempts"]] == ["primary"]
    await still_serves(proxy)


@pytest.mark.parametrize("case", ["truncated_event", "no_done_clean_close", "close_after_events"])
async def test_openai_sdk_raises_on_a_stream_without_its_end(case: str, proxy: Proxy,
                                                             raw: RawUpstream) -> None:
    raw.then(MID_STREAM_FAULTS[case][0])
    received: list[str] = []
    client = openai.AsyncOpenAI(base_url=proxy.base_url, api_key=ALICE_KEY, max_retries=0)
    try:
        response = await client.chat.completions.create(model="m", messages=MESSAGES,  # type: ignore[arg-type]
                                                        stream=True)
        with pytest.raises(openai.APIError) as info:
            async for chunk in response:
                if chunk.choices:
                    received.append(chunk.choices[0].delta.content or "")
    finally:
        await client.close()
    assert "".join(received) == "raw0 raw1 "
    assert "primary" in info.value.message


async def test_anthropic_sdk_raises_on_a_stream_without_message_stop(
        config_factory: ConfigFactory, start_proxy: StartProxy, aiohttp_server: Any) -> None:
    from tests.conftest import anthropic_provider
    from tests.fakes import Behaviour, FakeAnthropic

    fake = FakeAnthropic("anthropic")
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    proxy = await start_proxy(config_factory(
        providers={"anthropic": anthropic_provider(fake, timeouts=FAST)},
        models={"claude": {"routes": [{"provider": "anthropic", "model": "claude-x"}]}},
        server=SERVER))
    fake.then(Behaviour(no_done=True))
    client = anthropic.AsyncAnthropic(base_url=proxy.url("/api"), api_key=ALICE_KEY,
                                      max_retries=0)
    texts: list[str] = []
    try:
        with pytest.raises(anthropic.APIError):
            async with client.messages.stream(model="claude", max_tokens=50,
                                              messages=MESSAGES) as stream:  # type: ignore[arg-type]
                async for text in stream.text_stream:
                    texts.append(text)
    finally:
        await client.close()
    assert "".join(texts) == ANSWER
    await proxy.flush()
    rows = await proxy.app[STORE].fetch("SELECT status_code, error_code, streamed FROM "
                                        "generations")
    assert [tuple(r) for r in rows] in ([(502, "upstream_error", 1)],
                                        [(502, "upstream_invalid_response", 1)])


# -- 50 MB from the upstream -------------------------------------------------------------------


async def test_fifty_megabyte_answer_is_refused_quickly(proxy: Proxy, raw: RawUpstream) -> None:
    raw.then(huge_body(raw), huge_body(raw))
    started = time.monotonic()
    status, headers, body = await post(proxy, "solo")
    elapsed = time.monotonic() - started
    error = envelope(body)
    assert (status, error["code"]) == (502, "upstream_invalid_response"), error
    assert str(MAX_RESPONSE_BYTES) in error["message"]
    assert elapsed < 10
    # The proxy stopped reading at the cap: it did not take the whole 50 MB (twice).
    assert raw.bytes_sent < 2 * (MAX_RESPONSE_BYTES + 8 * (1 << 20))
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert (row["status_code"], row["error_code"]) == (502, "upstream_invalid_response")
    assert attempts(row) == [("primary", "upstream_invalid_response")] * 2
    await still_serves(proxy, "solo")  # a fresh connection: the cut one is not reused


async def test_fifty_megabyte_answer_falls_back(proxy: Proxy, raw: RawUpstream) -> None:
    raw.then(huge_body(raw))
    status, headers, _ = await post(proxy, "m")
    assert status == 200 and headers["X-AnyRouter-Provider"] == "backup"
    row = await generation(proxy, headers["X-AnyRouter-Generation-Id"])
    assert attempts(row) == [("primary", "upstream_invalid_response"), ("backup", 200)]


async def test_fifty_megabyte_stream_is_relayed(proxy: Proxy, raw: RawUpstream) -> None:
    raw.then(big_stream(raw))
    received = 0
    tail = b""
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        with health_probe(session, proxy.url("/health")) as lags:
            async with session.post(
                    proxy.url("/api/v1/chat/completions"), headers=auth(),
                    json={"model": "m", "messages": MESSAGES, "stream": True}) as response:
                assert response.status == 200
                gen_id = response.headers["X-AnyRouter-Generation-Id"]
                async for part in response.content.iter_any():
                    received += len(part)
                    tail = (tail + part)[-200:]
    assert received > 0.95 * FIFTY_MB  # re-encoded events are a little smaller
    assert tail.endswith(b"data: [DONE]\n\n")
    assert time.monotonic() - started < 60
    # The proxy, the upstream and this client share one event loop here: a generous bound.
    assert max(lags) < 1.0, f"/health took up to {max(lags):.2f} s during the stream"
    row = await generation(proxy, gen_id)
    assert (row["status_code"], row["error_code"]) == (200, None)
    await still_serves(proxy)


# -- slow but steady non-stream bodies -----------------------------------------------------------


async def test_non_stream_body_that_is_never_idle_is_not_cut(proxy: Proxy,
                                                             raw: RawUpstream) -> None:
    slow = trickle_then_answer(seconds=1.2, every_s=0.1)  # idle_s is 0.4
    raw.then(slow, slow)  # the retry would meet the same
    status, _, body = await post(proxy, "solo")
    assert status == 200, body
    assert len(raw.requests) == 1
    assert json.loads(body)["choices"][0]["message"]["content"] == ANSWER


# -- memory: a subprocess proxy, its peak RSS measured ----------------------------------------


def solo_config(tmp_path: Path, raw: RawUpstream) -> Path:
    """A routes.yaml for a subprocess proxy: model `solo` on the raw upstream, no retry."""
    config = {
        "version": 1,
        "storage": {"sqlite_path": str(tmp_path / "usage.db")},
        "providers": {"primary": {"kind": "openai", "base_url": raw.base_url,
                                  "api_key": PROVIDER_KEY, "timeouts": FAST}},
        "models": {"solo": {"routes": [{"provider": "primary", "model": "primary-model"}]}},
        "keys": {"alice": {"key_sha256": sha256(ALICE_KEY)}},
        "server": {**SERVER, "retries": 0},
    }
    path = tmp_path / "routes.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


async def stream_to_end(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    """Reads a streamed chat completion: bytes received and the last 4 kB."""
    received, tail = 0, b""
    async with session.post(url, headers=auth(), json={"model": "solo", "messages": MESSAGES,
                                                       "stream": True}) as response:
        assert response.status == 200
        async for part in response.content.iter_any():
            received += len(part)
            tail = (tail + part)[-4096:]
    return received, tail


CHAT_PATH = "/api/v1/chat/completions"


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
async def test_fifty_megabytes_do_not_blow_up_the_proxy_memory(tmp_path: Path,
                                                               raw: RawUpstream) -> None:
    async with ServeProcess.start(solo_config(tmp_path, raw)) as server:
        await still_serves_url(server.url(""))
        idle = proc_status_kb(server.pid)["VmHWM"]
        raw.then(huge_body(raw), big_stream(raw))
        async with aiohttp.ClientSession() as session:
            async with session.post(server.url(CHAT_PATH), headers=auth(),
                                    json={"model": "solo", "messages": MESSAGES}) as response:
                assert response.status == 502
                assert (await response.json())["error"]["code"] == "upstream_invalid_response"
            after_json = proc_status_kb(server.pid)["VmHWM"]
            received, tail = await stream_to_end(session, server.url(CHAT_PATH))
            assert received > 0.95 * FIFTY_MB and tail.endswith(b"data: [DONE]\n\n")
        after_stream = proc_status_kb(server.pid)["VmHWM"]
    json_mb, stream_mb = (after_json - idle) / 1024, (after_stream - after_json) / 1024
    print(f"\nproxy peak RSS {idle / 1024:.0f} MB idle; +{json_mb:.0f} MB for the 50 MB "
          f"answer (cap {MAX_RESPONSE_BYTES >> 20} MiB), +{stream_mb:.0f} MB for the 50 MB "
          f"stream of 4 kB events")
    # The answer is buffered up to the cap, never in full (nor twice); a stream of events
    # is never buffered.
    assert json_mb < (MAX_RESPONSE_BYTES >> 20) + 40
    assert stream_mb < 32


@pytest.mark.skipif(sys.platform != "linux", reason="/proc")
async def test_one_endless_event_costs_bounded_memory(tmp_path: Path, raw: RawUpstream) -> None:
    async with ServeProcess.start(solo_config(tmp_path, raw)) as server:
        await still_serves_url(server.url(""))
        idle = proc_status_kb(server.pid)["VmHWM"]
        raw.then(endless_event(raw))
        started = time.monotonic()
        async with aiohttp.ClientSession() as session:
            with health_probe(session, server.url("/health")) as lags:
                _, tail = await stream_to_end(session, server.url(CHAT_PATH))
        elapsed = time.monotonic() - started
        grown_mb = (proc_status_kb(server.pid)["VmHWM"] - idle) / 1024
    print(f"\none 50 MB event: +{grown_mb:.0f} MB peak RSS, {elapsed:.1f} s, /health up to "
          f"{max(lags):.2f} s")
    assert tail.endswith(b"data: [DONE]\n\n")  # relayed, or cut by an error event
    assert grown_mb < (MAX_RESPONSE_BYTES >> 20) + 40
    assert elapsed < 5


@contextlib.contextmanager
def health_probe(session: aiohttp.ClientSession, url: str) -> Iterator[list[float]]:
    """GET /health every 50 ms while the block runs; yields the latencies seen."""
    lags: list[float] = [0.0]

    async def probe() -> None:
        while True:
            started = time.monotonic()
            async with session.get(url) as response:
                await response.read()
            lags.append(time.monotonic() - started)
            await asyncio.sleep(0.05)

    task = asyncio.ensure_future(probe())
    try:
        yield lags
    finally:
        task.cancel()


async def still_serves_url(base: str) -> None:
    async with aiohttp.ClientSession() as session, session.get(base + "/health") as response:
        assert response.status == 200

