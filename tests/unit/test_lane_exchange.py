"""The lane's answers as bytes (server/lane_exchange.py), read back by httptools'
response parser: heads as aiohttp writes them, no header injection, chunked streams
whose body ends only with `end`."""

from __future__ import annotations

import httptools
import pytest
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE

from anyrouter_proxy.server.lane_exchange import LaneSink, head_bytes, response_bytes


def parse(raw: bytes) -> tuple[int, list[tuple[str, str]], bytes, bool]:
    """Status, headers, body, and whether the answer ended, as a client reads `raw`."""
    class Reader:
        def __init__(self) -> None:
            self.headers: list[tuple[str, str]] = []
            self.body = b""
            self.complete = False

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name.decode(), value.decode()))

        def on_body(self, body: bytes) -> None:
            self.body += body

        def on_message_complete(self) -> None:
            self.complete = True

    reader = Reader()
    parser = httptools.HttpResponseParser(reader)
    parser.feed_data(raw)
    return parser.get_status_code(), reader.headers, reader.body, reader.complete


def test_a_whole_answer_carries_length_date_and_server() -> None:
    response = web.Response(status=201, body=b'{"a":1}', content_type="application/json",
                            headers={"X-AnyRouter-Provider": "demo"})
    raw = response_bytes(response, keep_alive=True)
    assert raw.startswith(b"HTTP/1.1 201 Created\r\n")
    status, headers, body, complete = parse(raw)
    names = dict(headers)
    assert (status, body, complete) == (201, b'{"a":1}', True)
    assert names["Content-Length"] == "7" and names["Content-Type"] == "application/json"
    assert names["X-AnyRouter-Provider"] == "demo" and names["Server"] == SERVER_SOFTWARE
    assert names["Date"].endswith(" GMT") and "Connection" not in names


def test_connection_close_only_when_not_kept_alive_and_never_twice() -> None:
    closing = dict(parse(response_bytes(web.Response(body=b"x"), keep_alive=False))[1])
    assert closing["Connection"] == "close"
    assert closing["Content-Type"] == "application/octet-stream"  # aiohttp's default
    response = web.Response(body=b"", headers={"Connection": "close"})
    headers = parse(response_bytes(response, keep_alive=False))[1]
    assert [name for name, _ in headers].count("Connection") == 1
    assert "Content-Type" not in dict(headers)  # an empty body needs none


@pytest.mark.parametrize("value", ["a\r\nSet-Cookie: x=1", "a\nB: c", "a\rb"])
def test_a_header_with_a_line_break_is_refused(value: str) -> None:
    with pytest.raises(ValueError, match="Newline or carriage return"):
        head_bytes(web.Response(headers={"X-Injected": value}), True, 0)
    with pytest.raises(ValueError, match="Newline or carriage return"):
        head_bytes(web.Response(headers={f"X{value}": "v"}), True, 0)


def test_a_head_without_headers_of_its_own() -> None:
    response = web.StreamResponse()
    response.headers.clear()
    status, headers, _, _ = parse(head_bytes(response, True, None))
    assert status == 200 and dict(headers)["Transfer-Encoding"] == "chunked"


class Wire:
    """A Connection that keeps what is written."""

    def __init__(self, paused: bool = False) -> None:
        self.data = b""
        self.paused = paused
        self.drains = 0

    def write(self, data: bytes) -> None:
        self.data += data

    @property
    def writing_paused(self) -> bool:
        return self.paused

    async def drain(self) -> None:
        self.drains += 1

    def remote(self) -> str | None:
        return "127.0.0.1"


async def test_a_stream_is_chunked_and_ends_only_with_end() -> None:
    wire = Wire()
    sink = LaneSink(web.StreamResponse(headers={"Content-Type": "text/event-stream"}),
                    wire, keep_alive=True)
    await sink.write(b": ping\n\n")
    assert sink.send(b"data: 1\n\n") is False
    assert sink.send(b"") is False  # an empty chunk must not end the body
    status, headers, body, complete = parse(wire.data)
    assert (status, body, complete) == (200, b": ping\n\ndata: 1\n\n", False)
    assert dict(headers)["Transfer-Encoding"] == "chunked"
    await sink.end(b"data: [DONE]\n\n")
    assert parse(wire.data)[2:] == (b": ping\n\ndata: 1\n\ndata: [DONE]\n\n", True)
    assert sink.finished and wire.drains == 0


async def test_a_stream_that_ends_at_once_and_a_client_behind() -> None:
    wire = Wire(paused=True)
    sink = LaneSink(web.StreamResponse(), wire, keep_alive=False)
    await sink.write(b"x")  # a write waits itself
    assert wire.drains == 1
    assert sink.send(b"y") is True  # behind: the caller drains
    assert dict(parse(wire.data)[1])["Connection"] == "close"
    wire = Wire()
    sink = LaneSink(web.StreamResponse(), wire, keep_alive=True)
    await sink.end(b"")
    status, _, body, complete = parse(wire.data)
    assert (status, body, complete) == (200, b"", True)
