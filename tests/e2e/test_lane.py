"""The lean lane (server/lane.py): proxied POSTs served without aiohttp's server, and
everything else handed to aiohttp with the connection. Each proxied answer is held to
aiohttp's own for the same request (sent chunked, which the lane hands over), and the
connection's life (keep-alive, pipelining, hand-over, timeouts, Connection: close) is
driven over raw sockets."""

from __future__ import annotations

import asyncio
import re
import socket
from collections.abc import AsyncIterator
from typing import Any, cast

import httptools
import orjson
import pytest
from aiohttp import ClientSession, TCPConnector, web

from anyrouter_proxy.server.lane import LaneProtocol
from anyrouter_proxy.server.protocol import EnvelopeRequestHandler
from tests.conftest import ALICE_KEY, BOB_KEY, Proxy, auth, openai_provider
from tests.fakes import Behaviour, FakeOpenAI
from tests.served import raw_connect, read_until_closed

CHAT = "/v1/chat/completions"
BODY = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def kinds(proxy: Proxy) -> list[type]:
    """The protocol of each open connection to the proxy."""
    server = proxy.server.runner.server  # type: ignore[union-attr]
    return [type(connection) for connection in server._connections]


def _masked(data: bytes) -> bytes:
    """An answer without what differs between two requests (ids, timestamps, dates)."""
    data = re.sub(rb"gen-[0-9a-f]{24}", b"gen-*", data)
    data = re.sub(rb"(chatcmpl|msg|resp)[-_][0-9A-Za-z_-]+", rb"\1-*", data)
    return re.sub(rb'"created(_at)?":\s*\d+', b'"created":0', data)


async def _chunked(data: bytes) -> AsyncIterator[bytes]:
    yield data  # an async body: aiohttp's client sends it chunked


async def _answer(proxy: Proxy, path: str, body: bytes, headers: dict[str, str], *,
                  chunked: bool) -> tuple[int, dict[str, str], bytes, list[type]]:
    async with ClientSession(connector=TCPConnector(limit=1)) as session, session.post(
            proxy.url(path), headers=headers,
            data=_chunked(body) if chunked else body) as response:
        raw = await response.read()
        return response.status, dict(response.headers), raw, kinds(proxy)


CASES: list[tuple[str, str, Any, dict[str, str]]] = [
    ("chat", CHAT, BODY, auth()),
    ("chat stream", CHAT, {**BODY, "stream": True}, auth()),
    ("chat stream with usage", "/api/v1/chat/completions",
     {**BODY, "stream": True, "stream_options": {"include_usage": True}}, auth()),
    ("messages", "/v1/messages", {**BODY, "max_tokens": 64}, auth()),
    ("messages stream", "/v1/messages", {**BODY, "max_tokens": 64, "stream": True}, auth()),
    ("responses", "/v1/responses", {"model": BODY["model"], "input": "hi"}, auth()),
    ("responses stream", "/v1/responses", {"model": BODY["model"], "input": "hi",
                                           "stream": True, "store": False}, auth()),
    ("embeddings", "/v1/embeddings",
     {"model": "openai/text-embedding-3-small", "input": "hi"}, auth()),
    ("bad key", CHAT, BODY, auth("sk-ar-nobody")),
    ("messages, bad key", "/v1/messages", {"model": "x", "max_tokens": 1},
     {"x-api-key": "sk-ar-nobody"}),
    ("invalid JSON", CHAT, b"{not json", auth()),
    ("not an object", CHAT, [1, 2], auth()),
    ("unknown model", CHAT, {**BODY, "model": "nope/none"}, auth()),
    ("wrong content type", CHAT, BODY, {**auth(), "Content-Type": "text/plain"}),
    ("bad trace id", CHAT, BODY, {**auth(), "X-AnyRouter-Trace-Id": "t" * 200}),
    ("query string", CHAT + "?api-version=1", BODY, auth()),
    ("empty content type", CHAT, BODY, {**auth(), "Content-Type": ""}),
    ("values with trailing whitespace", CHAT, BODY,
     {**auth(), "X-AnyRouter-Trace-Id": "abc \t", "X-AnyRouter-Provider": "openai "}),
]


@pytest.mark.parametrize(("path", "body", "headers"), [case[1:] for case in CASES],
                         ids=[case[0] for case in CASES])
async def test_the_lane_answers_as_aiohttp_does(
        openai_proxy: Proxy, path: str, body: Any, headers: dict[str, str]) -> None:
    raw = body if isinstance(body, bytes) else orjson.dumps(body)
    headers = {"Content-Type": "application/json", **headers}
    lane = await _answer(openai_proxy, path, raw, headers, chunked=False)
    general = await _answer(openai_proxy, path, raw, headers, chunked=True)
    assert lane[3] == [LaneProtocol] and general[3] == [EnvelopeRequestHandler]
    assert lane[0] == general[0]
    assert sorted(lane[1]) == sorted(general[1])
    for name in ("Content-Type", "Connection", "Transfer-Encoding", "Allow", "Server"):
        assert lane[1].get(name) == general[1].get(name), name
    assert _masked(lane[2]) == _masked(general[2])


async def _exchange(sock: socket.socket, data: bytes, answers: int,
                    within_s: float = 5) -> list[tuple[int, dict[bytes, bytes], bytes]]:
    """Send `data`; read `answers` whole HTTP answers (interim ones left out)."""
    loop = asyncio.get_running_loop()
    done: list[tuple[int, dict[bytes, bytes], bytes]] = []

    class Reader:
        def __init__(self) -> None:
            self.headers: dict[bytes, bytes] = {}
            self.body = b""

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers[name.lower()] = value

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            if parser.get_status_code() >= 200:  # not an interim 100 Continue
                done.append((parser.get_status_code(), self.headers, self.body))
            self.headers, self.body = {}, b""

    reader = Reader()
    parser = httptools.HttpResponseParser(reader)
    await loop.sock_sendall(sock, data)

    async def read() -> None:
        while len(done) < answers:
            chunk = await loop.sock_recv(sock, 65536)
            assert chunk, f"closed after {len(done)} answers"
            parser.feed_data(chunk)

    await asyncio.wait_for(read(), within_s)
    return done


def _post(path: str, body: dict[str, Any], key: str = ALICE_KEY, **headers: str) -> bytes:
    raw = orjson.dumps(body)
    lines = "".join(f"{name.replace('_', '-')}: {value}\r\n" for name, value in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer {key}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n{lines}\r\n"
            ).encode() + raw


GET_MODELS = (b"GET /v1/models HTTP/1.1\r\nHost: proxy\r\nAuthorization: Bearer "
              + ALICE_KEY.encode() + b"\r\n\r\n")


async def test_keep_alive_and_pipelined_requests_are_answered_in_order(
        openai_proxy: Proxy) -> None:
    sock = await raw_connect(openai_proxy.server.port)  # type: ignore[arg-type]
    try:
        first = await _exchange(sock, _post(CHAT, BODY), 1)
        assert first[0][0] == 200 and kinds(openai_proxy) == [LaneProtocol]
        # Three at once, each answered after the one before: Alice, Bob, then Alice's
        # stream; the same connection, still on the lane.
        streamed = {**BODY, "stream": True}
        answers = await _exchange(sock, _post(CHAT, BODY) + _post(CHAT, BODY, BOB_KEY)
                                  + _post(CHAT, streamed), 3)
        assert [status for status, _, _ in answers] == [200, 200, 200]
        ids = [orjson.loads(body)["id"] for _, _, body in answers[:2]]
        rows = [await openai_proxy.usage_row("id", gen_id) for gen_id in ids]
        assert [row["key_name"] for row in rows] == ["alice", "bob"]
        assert answers[2][1][b"transfer-encoding"] == b"chunked"
        assert answers[2][2].endswith(b"data: [DONE]\n\n")
        assert kinds(openai_proxy) == [LaneProtocol]
    finally:
        sock.close()


async def test_other_requests_take_the_connection_to_aiohttp(openai_proxy: Proxy) -> None:
    sock = await raw_connect(openai_proxy.server.port)  # type: ignore[arg-type]
    try:
        # A proxied POST, a GET (handed over with the connection, answered by aiohttp in
        # the same write as the POST that follows it), then the POST on aiohttp's side.
        [lane] = await _exchange(sock, _post(CHAT, BODY), 1)
        assert lane[0] == 200 and kinds(openai_proxy) == [LaneProtocol]
        models, chat = await _exchange(sock, GET_MODELS + _post(CHAT, BODY), 2)
        assert models[0] == 200 and orjson.loads(models[2])["object"] == "list"
        assert chat[0] == 200 and orjson.loads(chat[2])["object"] == "chat.completion"
        assert kinds(openai_proxy) == [EnvelopeRequestHandler]
    finally:
        sock.close()


@pytest.mark.parametrize("request_bytes", [
    _post(CHAT, BODY, Expect="100-continue"),
    _post(CHAT, BODY, Content_Encoding="identity"),
    _post(CHAT, BODY).replace(b"HTTP/1.1", b"HTTP/1.0", 1),
    _post("/v1/messages/count_tokens", BODY),
    _post("/v1/chat/completions/", BODY),
    _post(CHAT, BODY, X_Big="x" * 9000),
    _post(CHAT, BODY, Upgrade="h2c", Connection="Upgrade, HTTP2-Settings",
          HTTP2_Settings="AAMAAABkAARAAAAAAAIAAAAA"),
    _post(CHAT, BODY, Host="again"),
    _post(CHAT, BODY, **{f"X_{n}": "1" for n in range(130)}),
    b"POST /v1/chat/completions HTTP/1.1\nHost: p\nContent-Length: 2\n\n{}",
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
    b"GET /v1/models HTTP/1.1\r\nHost: p\r\nAuthorization: Bearer " + ALICE_KEY.encode()
    + b"\r\n\r\n",
], ids=["expect", "content-encoding", "http/1.0", "another POST route", "trailing slash",
        "large head", "upgrade", "repeated header", "many headers", "bare LF", "TLS hello",
        "GET"])
async def test_unusual_requests_are_aiohttps(openai_proxy: Proxy, request_bytes: bytes) -> None:
    # Answered at once (the keep-alive timeout is 75 s), as aiohttp answers them.
    sock = await raw_connect(openai_proxy.server.port)  # type: ignore[arg-type]
    try:
        [(status, headers, body)] = await _exchange(sock, request_bytes, 1, within_s=3)
        assert headers[b"content-type"].startswith(b"application/json")
        assert status in (200, 400, 404, 431) and orjson.loads(body)
        if kinds(openai_proxy):  # aiohttp may have closed it (HTTP/1.0, an error)
            assert kinds(openai_proxy) == [EnvelopeRequestHandler]
    finally:
        sock.close()


async def test_connection_close_is_honoured(openai_proxy: Proxy) -> None:
    sock = await raw_connect(openai_proxy.server.port)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _post(CHAT, BODY, Connection="close"))
        received = await read_until_closed(sock, 5)
        head, _, body = received.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200 OK") and b"\r\nConnection: close" in head
        assert orjson.loads(body)["object"] == "chat.completion"
    finally:
        sock.close()


async def proxy_for(fake_openai: FakeOpenAI, config_factory: Any, start_proxy: Any,
                    **server: float) -> Proxy:
    """The proxy with the fake as its one provider, and these `server` settings."""
    return cast(Proxy, await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai",
                                                   "model": "gpt-4o-mini"}]}},
        server=server)))


async def shut_down(proxy: Proxy, timeout_s: float) -> asyncio.Future[None]:
    """What the runner does on SIGTERM to the connections: close the idle ones, then
    let those at work finish within `timeout_s` (running in the background)."""
    runner = proxy.server.runner
    assert runner is not None and isinstance(runner.server, web.Server)
    runner.server.pre_shutdown()
    return asyncio.ensure_future(runner.server.shutdown(timeout_s))


@pytest.fixture
async def impatient_proxy(config_factory: Any, fake_openai: FakeOpenAI,
                          start_proxy: Any) -> Proxy:
    return await proxy_for(fake_openai, config_factory, start_proxy,
                           keepalive_timeout_s=0.5, body_timeout_s=1)


async def test_a_head_that_never_ends_is_told_408(impatient_proxy: Proxy) -> None:
    sock = await raw_connect(impatient_proxy.server.port)  # type: ignore[arg-type]
    try:
        await asyncio.get_running_loop().sock_sendall(sock, _post(CHAT, BODY)[:60])
        received = await read_until_closed(sock, 5)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout")
        assert orjson.loads(received.partition(b"\r\n\r\n")[2])["error"]["code"] == \
            "request_timeout"
    finally:
        sock.close()


async def test_an_idle_connection_is_closed_after_its_answer(impatient_proxy: Proxy) -> None:
    sock = await raw_connect(impatient_proxy.server.port)  # type: ignore[arg-type]
    try:
        [(status, _, _)] = await _exchange(sock, _post(CHAT, BODY), 1)
        assert status == 200
        assert await read_until_closed(sock, 3) == b""  # nothing more, then closed
    finally:
        sock.close()


async def test_a_slow_body_goes_to_aiohttp_and_its_timeout(impatient_proxy: Proxy) -> None:
    sock = await raw_connect(impatient_proxy.server.port)  # type: ignore[arg-type]
    try:
        request = _post(CHAT, BODY)
        await asyncio.get_running_loop().sock_sendall(sock, request[:-5])
        received = await read_until_closed(sock, 5)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout")
        envelope = orjson.loads(received.partition(b"\r\n\r\n")[2])
        assert envelope["error"]["message"] == "Request body not received within 1 s"
    finally:
        sock.close()


async def test_a_client_that_leaves_cancels_its_request(
        config_factory: Any, fake_openai: FakeOpenAI, start_proxy: Any) -> None:
    fake_openai.then(Behaviour(delay_s=30))
    proxy = await proxy_for(fake_openai, config_factory, start_proxy)
    sock = await raw_connect(proxy.server.port)
    await asyncio.get_running_loop().sock_sendall(
        sock, _post(CHAT, BODY, X_AnyRouter_Trace_Id="leaving"))
    await asyncio.sleep(0.3)
    sock.close()
    row = await proxy.usage_row("trace_id", "leaving")
    assert row["cancelled"] == 1


async def test_shutdown_lets_a_lane_request_finish(
        config_factory: Any, fake_openai: FakeOpenAI, start_proxy: Any) -> None:
    fake_openai.then(Behaviour(delay_s=0.5))
    proxy = await proxy_for(fake_openai, config_factory, start_proxy)
    sock = await raw_connect(proxy.server.port)
    try:
        answer = asyncio.ensure_future(_exchange(sock, _post(CHAT, BODY), 1))
        await asyncio.sleep(0.2)
        assert kinds(proxy) == [LaneProtocol]
        await (await shut_down(proxy, 5))
        [(status, headers, body)] = await answer
        assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
        assert headers[b"connection"] == b"close"
    finally:
        sock.close()


async def test_a_client_that_does_not_read_holds_its_pipelined_requests(
        openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    # Requests sent ahead while large answers pile up unread: the lane answers the next
    # one only once the client takes what is written (as aiohttp does): memory stays
    # bounded by the socket's buffers and the transport's high-water mark.
    sent = 200
    fake_openai.then(*[Behaviour(content="x" * 100_000)] * sent)
    sock = await raw_connect(openai_proxy.server.port, receive_buffer=4096)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        writer = asyncio.ensure_future(loop.sock_sendall(sock, _post(CHAT, BODY) * sent))
        await asyncio.sleep(1.5)
        held = len(fake_openai.requests)
        assert 0 < held < sent / 2, held
        answers = await _exchange(sock, b"", sent, within_s=60)
        await writer
        assert [status for status, _, _ in answers] == [200] * sent
        assert len(answers[-1][2]) > 100_000
    finally:
        sock.close()


async def test_shutdown_waits_for_a_body_still_arriving(
        config_factory: Any, fake_openai: FakeOpenAI, start_proxy: Any) -> None:
    proxy = await proxy_for(fake_openai, config_factory, start_proxy)
    sock = await raw_connect(proxy.server.port)
    try:
        loop = asyncio.get_running_loop()
        request = _post(CHAT, BODY)
        await loop.sock_sendall(sock, request[:-10])
        await asyncio.sleep(0.1)
        shutdown = await shut_down(proxy, 5)
        await asyncio.sleep(0.2)
        [(status, headers, body)] = await _exchange(sock, request[-10:], 1)
        assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
        assert headers[b"connection"] == b"close"
        await shutdown
        assert await read_until_closed(sock, 2) == b""
    finally:
        sock.close()


async def test_a_large_head_that_never_ends_is_told_408(impatient_proxy: Proxy) -> None:
    sock = await raw_connect(impatient_proxy.server.port)  # type: ignore[arg-type]
    try:
        head = b"POST /v1/chat/completions HTTP/1.1\r\n" + (b"X-A: " + b"b" * 150 + b"\r\n") * 60
        await asyncio.get_running_loop().sock_sendall(sock, head)  # 9 KiB, unfinished
        received = await read_until_closed(sock, 5)
        assert received.startswith(b"HTTP/1.1 408 Request Timeout")
    finally:
        sock.close()


async def test_a_body_in_many_reads_is_served_on_the_lane(openai_proxy: Proxy) -> None:
    big = {**BODY, "messages": [{"role": "user", "content": "x" * 1_000_000}]}
    request = _post(CHAT, big)
    sock = await raw_connect(openai_proxy.server.port)  # type: ignore[arg-type]
    try:
        loop = asyncio.get_running_loop()
        for at in range(0, len(request), 65536):
            await loop.sock_sendall(sock, request[at:at + 65536])
            await asyncio.sleep(0.005)
        [(status, _, body)] = await _exchange(sock, b"", 1)
        assert status == 200 and orjson.loads(body)["object"] == "chat.completion"
        assert kinds(openai_proxy) == [LaneProtocol]
        assert orjson.loads(body)["usage"]["prompt_tokens"] > 0
    finally:
        sock.close()


async def test_pipelined_requests_stop_when_the_client_leaves(
        openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(content="x" * 8_000_000))
    sock = await raw_connect(openai_proxy.server.port, receive_buffer=4096)  # type: ignore[arg-type]
    loop = asyncio.get_running_loop()
    await loop.sock_sendall(sock, _post(CHAT, BODY) * 10)
    await asyncio.sleep(1)  # the first answer is being written; the client reads nothing
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01" + bytes(7))  # reset
    sock.close()
    await asyncio.sleep(1)
    assert len(fake_openai.requests) == 1


async def test_a_client_behind_on_a_stream_is_behind_on_what_follows(
        config_factory: Any, fake_openai: FakeOpenAI, start_proxy: Any) -> None:
    # A large stream unread, then requests for aiohttp on the same connection: the write
    # timeout still cuts the client off (aiohttp is told it is behind).
    fake_openai.then(Behaviour(chunks=2000, content="y" * 2000))
    proxy = await proxy_for(fake_openai, config_factory, start_proxy, write_timeout_s=1)
    sock = await raw_connect(proxy.server.port, receive_buffer=4096)
    try:
        loop = asyncio.get_running_loop()
        await loop.sock_sendall(sock, _post(CHAT, {**BODY, "stream": True}) + GET_MODELS * 50)
        await asyncio.sleep(4)
        assert kinds(proxy) == []  # dropped, whichever side had it
    finally:
        sock.close()


@pytest.mark.parametrize("leave", [False, True])
async def test_shutdown_after_a_body_stops_arriving(
        config_factory: Any, fake_openai: FakeOpenAI, start_proxy: Any, leave: bool) -> None:
    proxy = await proxy_for(fake_openai, config_factory, start_proxy)
    sock = await raw_connect(proxy.server.port)
    try:
        await asyncio.get_running_loop().sock_sendall(sock, _post(CHAT, BODY)[:-10])
        await asyncio.sleep(0.1)
        shutdown = await shut_down(proxy, 3)
        if leave:  # shutdown ends with the connection, not at its timeout
            await asyncio.sleep(0.1)
            sock.close()
            await asyncio.wait_for(shutdown, 1.5)
        else:  # the rest never comes: closed at the timeout, unanswered
            assert await read_until_closed(sock, 5) == b""
            assert shutdown.done()
    finally:
        sock.close()
