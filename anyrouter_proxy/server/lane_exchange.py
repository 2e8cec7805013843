"""One request on the proxied routes' lean lane (server/lane.py), as the handlers see it.

`LaneRequest` offers the part of aiohttp's `web.Request` those handlers and the gateway
middleware read (method, path, headers, remote, app, the request's own keys, the body),
and `LaneSink` is the lane's `Sink` for a streamed answer. An ordinary answer is the
handler's unprepared `web.Response`, written by `response_bytes` in one piece.
The tests drive every proxied route both ways (tests/e2e/test_lane.py).
"""

from __future__ import annotations

from typing import Any, Protocol, cast

from aiohttp import web
from aiohttp.helpers import rfc822_formatted_time
from aiohttp.http import SERVER_SOFTWARE
from multidict import CIMultiDict, CIMultiDictProxy

DEFAULT_CONTENT_TYPE = "application/octet-stream"  # aiohttp's, when none is sent
SERVER_LINE = f"Server: {SERVER_SOFTWARE}"
CRLF = "\r\n"


class Connection(Protocol):
    """The lane's side of the client's connection, as a stream needs it."""

    def write(self, data: bytes) -> None:
        """Raises ConnectionResetError once the client has gone."""

    @property
    def writing_paused(self) -> bool: ...

    async def drain(self) -> None: ...

    def remote(self) -> str | None:
        """The peer's address."""


class LaneBody:
    """The request's body, all of it already read (the lane waits for it first)."""

    __slots__ = ("_data",)

    def __init__(self, data: bytes) -> None:
        self._data = data

    def is_eof(self) -> bool:
        return True

    async def read(self) -> bytes:
        return self._data


class LaneRequest:
    """What the proxied routes read of a request, as aiohttp's web.Request names it."""

    __slots__ = ("_connection", "_state", "app", "content", "content_length", "headers",
                 "keep_alive", "method", "path", "sink")

    protocol = None  # no aiohttp connection handler behind it

    def __init__(self, app: web.Application, path: str, headers: CIMultiDict[str],
                 body: bytes, keep_alive: bool, connection: Connection) -> None:
        self.app = app
        self.method = "POST"
        self.path = path
        self.headers = CIMultiDictProxy(headers)
        self.content = LaneBody(body)
        self.content_length = len(body)
        self.keep_alive = keep_alive
        self._connection = connection
        self._state: dict[Any, Any] = {}
        self.sink: LaneSink | None = None  # set once a stream's answer has begun

    def as_request(self) -> web.Request:
        """This request, for code written against aiohttp's: the proxied routes' handlers,
        the app's middlewares and its response signal read only what this class has."""
        return cast(web.Request, self)

    @property
    def remote(self) -> str | None:
        return self._connection.remote()

    @property
    def content_type(self) -> str:
        raw = self.headers.get("Content-Type")
        kind = raw.partition(";")[0].strip().lower() if raw else ""
        return kind or DEFAULT_CONTENT_TYPE  # as aiohttp reads an empty one too

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)

    async def stream(self, response: web.StreamResponse) -> LaneSink:
        """Begin a streamed answer (its head leaves with the first bytes)."""
        await self.app.on_response_prepare.send(self.as_request(), response)
        self.sink = LaneSink(response, self._connection, self.keep_alive)
        return self.sink


def head_bytes(response: web.StreamResponse, keep_alive: bool,
               length: int | None) -> bytes:
    """The status line and headers of `response`, as aiohttp would write them for an
    HTTP/1.1 client (a body of `length` bytes, or chunked when None)."""
    headers = response.headers
    own = CRLF.join(map(": ".join, headers.items()))
    breaks = max(len(headers) - 1, 0)  # those the join put in: any other is injected
    if own.count("\n") != breaks or own.count("\r") != breaks:
        raise ValueError("Newline or carriage return character detected in HTTP header")
    lines = [own] if headers else []
    lines.append("Transfer-Encoding: chunked" if length is None else f"Content-Length: {length}")
    if length and "Content-Type" not in headers:
        lines.append(f"Content-Type: {DEFAULT_CONTENT_TYPE}")
    if "Date" not in headers:
        lines.append(f"Date: {rfc822_formatted_time()}")
    if "Server" not in headers:
        lines.append(SERVER_LINE)
    if not keep_alive and "Connection" not in headers:
        lines.append("Connection: close")
    return f"HTTP/1.1 {response.status} {response.reason}\r\n{CRLF.join(lines)}\r\n\r\n".encode()


def response_bytes(response: web.Response, keep_alive: bool) -> bytes:
    """A whole ordinary answer: head and body."""
    body = response.body
    if body is None:
        body = b""
    if not isinstance(body, bytes):
        raise TypeError(f"the lane writes bytes bodies, not {type(body).__name__}")
    return head_bytes(response, keep_alive, len(body)) + body


def _chunk(data: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(data), data)


class LaneSink:
    """A streamed answer on the lane: chunked, the head with the first bytes."""

    __slots__ = ("_connection", "_head", "_keep_alive", "finished", "response")

    def __init__(self, response: web.StreamResponse, connection: Connection,
                 keep_alive: bool) -> None:
        self.response = response
        self._connection = connection
        self._keep_alive = keep_alive
        self._head: bytes | None = None
        self.finished = False  # the body's end is written

    @property
    def keep_alive(self) -> bool:
        return self._keep_alive and self.response.keep_alive is not False

    def _framed(self, data: bytes) -> bytes:
        if self._head is None:
            self._head = head_bytes(self.response, self.keep_alive, None)
            return self._head + _chunk(data) if data else self._head
        return _chunk(data) if data else b""

    async def write(self, data: bytes) -> None:
        """The first bytes (with the head), or keep-alive comments before the first event."""
        connection = self._connection
        connection.write(self._framed(data))
        if connection.writing_paused:
            await connection.drain()

    def send(self, data: bytes) -> bool:
        if data:  # an empty chunk would end the body here
            self._connection.write(_chunk(data))
        return self._connection.writing_paused

    async def drain(self) -> None:
        await self._connection.drain()

    async def end(self, data: bytes) -> None:
        self._connection.write(self._framed(data) + b"0\r\n\r\n")
        self.finished = True

