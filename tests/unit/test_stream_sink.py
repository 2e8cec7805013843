"""StreamSink's framing on the wire, read back by aiohttp's own client parser over a real
connection: an HTTP/1.1 client gets chunks, and the body ends only with `end`."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import aiohttp
from aiohttp import web
from aiohttp.http_writer import StreamWriter

from anyrouter_proxy.server.stream_sink import StreamSink

Script = Callable[[StreamSink], None]


async def relayed(sends: list[bytes]) -> bytes:
    """The body a client reads of an answer written as: write(a), send(...)..., end(z)."""
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        writer = await response.prepare(request)
        assert isinstance(writer, StreamWriter)
        sink = StreamSink(response, writer)
        await sink.write(b"a")
        for data in sends:
            if sink.send(data):
                await sink.drain()
        await sink.end(b"z")
        return response

    app = web.Application()
    app.router.add_post("/s", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with aiohttp.ClientSession() as session, \
                session.post(f"http://127.0.0.1:{port}/s") as answer:
            assert answer.headers.get("Transfer-Encoding") == "chunked"
            return await asyncio.wait_for(answer.read(), 5)
    finally:
        await runner.cleanup()


async def test_events_between_the_first_write_and_the_end_arrive_in_order() -> None:
    assert await relayed([b"b", b"c" * 70_000, b"d"]) == b"ab" + b"c" * 70_000 + b"dz"


async def test_an_empty_send_does_not_end_the_body() -> None:
    # b"0\r\n\r\n" is the last chunk: an empty send must put nothing on the wire.
    assert await relayed([b"b", b"", b"c"]) == b"abcz"


async def test_an_http10_client_gets_the_bytes_unframed_until_the_close() -> None:
    async def handle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        writer = await response.prepare(request)
        assert isinstance(writer, StreamWriter)
        sink = StreamSink(response, writer)
        await sink.write(b"a")
        for data in (b"b", b"", b"c"):
            sink.send(data)
        await sink.end(b"z")
        return response

    app = web.Application()
    app.router.add_post("/s", handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /s HTTP/1.0\r\nContent-Length: 0\r\n\r\n")
        raw = await asyncio.wait_for(reader.read(), 5)  # until the server closes
        writer.close()
        head, _, body = raw.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
        assert body == b"abcz"
    finally:
        await runner.cleanup()
