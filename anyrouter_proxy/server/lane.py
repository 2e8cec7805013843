"""The lean lane: the proxied routes' usual requests served without aiohttp's server.

A proxy's requests are nearly all one shape: an HTTP/1.1 POST of a JSON body with a
Content-Length to one of a few paths. aiohttp's server costs about 60 us of CPU per such
request (docs/performance.md), a fifth of the whole; this connection protocol serves them
with httptools (the request head) and a few lines, through the same middleware and
handlers, and hands everything else to aiohttp:

- A new connection starts on the lane. A request that is not a proxied POST, or that is
  unusual in any way (chunked or compressed body, `Expect`, an upgrade, HTTP/1.0, a body
  over the size limit or slow to arrive, a head that httptools refuses or that is large),
  is handed over with every byte of it: the connection becomes aiohttp's for good, and
  aiohttp answers exactly as it always did (envelopes and timeouts: server/protocol.py).
- Requests are served one at a time in order (pipelined ones wait, reading pauses when
  too many bytes wait); a client that disconnects cancels its handler, as aiohttp does.
- `keepalive_timeout_s` and `write_timeout_s` hold here as there; shutdown reaches lane
  connections through aiohttp's own registry of connections (`web.Server`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from typing import Any, cast

import httptools
from aiohttp import web
from aiohttp.tcp_helpers import tcp_keepalive
from aiohttp.typedefs import Handler
from aiohttp.web_protocol import RequestHandler
from multidict import CIMultiDict

from ..config.model import ServerConfig
from ..errors import error_for_status
from .lane_exchange import LaneRequest, response_bytes
from .protocol import (
    HEAD_TIMEOUT_RESPONSE,
    EnvelopeRequestHandler,
    EnvelopeServer,
    closing_envelope,
)
from .state import LANE_ROUTES

log = logging.getLogger(__name__)

Routes = dict[bytes, tuple[str, Handler]]  # the request target's path -> path, handler

HEAD_END = b"\r\n\r\n"
MAX_HEAD_BYTES = 8190  # aiohttp's limit for one line; a longer head is its to judge
MAX_HEADERS = 128  # aiohttp's too
REQUEST_START = b"POST /"
MAX_READ_AHEAD = 1 << 18  # bytes waiting behind the request being served: reading pauses
BODY_GRACE_S = 0.5  # a body not all here this long after its head goes to aiohttp
INTERNAL_ERROR_RESPONSE = closing_envelope(error_for_status(500, "Internal error"))


class _Head:
    """httptools' callbacks for one request head."""

    __slots__ = ("headers", "repeated", "url")

    def __init__(self) -> None:
        self.url = b""
        self.headers: CIMultiDict[str] = CIMultiDict()
        self.repeated = False  # a header name came twice

    def on_url(self, url: bytes) -> None:
        self.url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        key = name.decode("utf-8", "surrogateescape")
        if key in self.headers:
            self.repeated = True
        # llhttp keeps a value's trailing whitespace; aiohttp (and HTTP) does not.
        self.headers.add(key, value.rstrip(b" \t").decode("utf-8", "surrogateescape"))


class _Pending:
    """A lane request whose head is read and whose body is still arriving."""

    __slots__ = ("body_at", "handler", "head", "keep_alive", "path", "size", "timer")

    def __init__(self, head: _Head, path: str, handler: Handler, keep_alive: bool,
                 body_at: int, size: int) -> None:
        self.head, self.path, self.handler, self.keep_alive = head, path, handler, keep_alive
        self.body_at, self.size = body_at, size
        self.timer: asyncio.TimerHandle | None = None


class LaneProtocol(asyncio.Protocol):
    def __init__(self, server: EnvelopeServer, app: web.Application, settings: ServerConfig,
                 routes: Routes, general: Callable[[], RequestHandler]) -> None:
        self._server = server
        self._app = app
        self._settings = settings
        self._routes = routes
        self._general = general  # builds aiohttp's handler for a connection handed over
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self._buffer: bytes | bytearray = b""
        self._pending: _Pending | None = None
        self._task_handler: asyncio.Task[None] | None = None  # the name web.Server reads
        self._idle_timer: asyncio.TimerHandle | None = None
        self._idle_deadline = 0.0
        self._write_timer: asyncio.TimerHandle | None = None
        self._drain_waiter: asyncio.Future[None] | None = None
        self._paused = False  # the client is behind: writes wait for drain
        self._reading_paused = False
        self._closing = False  # shutting down: close once the request in flight is done
        self._peer: tuple[str | None] | None = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        tcp_keepalive(self.transport)  # as aiohttp's connections have it
        # aiohttp's registry of open connections: its shutdown closes and awaits them.
        self._server._connections[cast(RequestHandler, self)] = self.transport
        self._rest()

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        if not buffer:
            self._buffer = data  # the usual read: a whole request, not copied
        elif buffer.__class__ is bytes:  # more: a bytearray, so that a large body
            self._buffer = bytearray(buffer) + data  # costs linear time
        else:
            cast(bytearray, buffer).extend(data)
        if self._task_handler is None:
            self._next()
        elif len(self._buffer) > MAX_READ_AHEAD and self.transport is not None:
            self.transport.pause_reading()
            self._reading_paused = True

    def connection_lost(self, exc: BaseException | None) -> None:
        self._server._connections.pop(cast(RequestHandler, self), None)
        self.transport = None
        for timer in (self._idle_timer, self._write_timer,
                      self._pending.timer if self._pending else None):
            if timer is not None:
                timer.cancel()
        self._pending = None
        task = self._task_handler
        if task is not None and not task.done():
            task.cancel()  # the client went away: so does its upstream call
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(ConnectionResetError("Connection lost"))

    def pause_writing(self) -> None:
        self._paused = True
        timeout = self._settings.write_timeout_s
        if timeout is not None and self._write_timer is None:
            self._write_timer = self._loop.call_later(timeout, self._write_timed_out)

    def resume_writing(self) -> None:
        self._paused = False
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None
        waiter = self._drain_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # -- web.Server's shutdown (pre_shutdown, then shutdown) -----------------------------------

    def close(self) -> None:
        """Take no new request; close once the one here (or arriving) is answered."""
        self._closing = True
        if self._task_handler is None and self._pending is None and self.transport is not None:
            self.transport.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Let the request here be answered, for up to `timeout` (its body arrive too)."""
        self._closing = True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while True:
                    task = self._task_handler
                    if task is not None and not task.done():
                        await asyncio.wait({task})  # not cancelled with it
                    elif self._pending is not None:
                        await asyncio.sleep(BODY_GRACE_S / 10)
                    else:
                        break
        task = self._task_handler
        if task is not None and not task.done():
            task.cancel()
        if self.transport is not None:
            self.transport.close()

    # -- the Connection a LaneSink writes to -------------------------------------------------

    def write(self, data: bytes) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            raise ConnectionResetError("Cannot write to closing transport")
        transport.write(data)

    @property
    def writing_paused(self) -> bool:
        return self._paused

    async def drain(self) -> None:
        if self.transport is None:
            raise ConnectionResetError("Connection lost")
        if self._paused:
            self._drain_waiter = self._loop.create_future()
            try:
                await self._drain_waiter
            finally:
                self._drain_waiter = None

    # -- requests ------------------------------------------------------------------------

    def _next(self) -> None:
        """Take the next request from the buffer, if it is all here."""
        pending = self._pending
        if pending is None:
            buffer = self._buffer
            end = buffer.find(HEAD_END, 0, MAX_HEAD_BYTES + 4)
            if end < 0:
                if not self._may_be_ours(buffer):
                    self._hand_over()
                return  # the idle timer answers a head that never ends
            pending = self._read_head(buffer, end + 4)
            if pending is None:
                self._hand_over()
                return
        if len(self._buffer) < pending.body_at + pending.size:
            if pending.timer is None:
                self._pending = pending
                pending.timer = self._loop.call_later(BODY_GRACE_S, self._hand_over)
            return
        if pending.timer is not None:
            pending.timer.cancel()
        self._pending = None
        end = pending.body_at + pending.size
        buffer = self._buffer
        body, self._buffer = bytes(buffer[pending.body_at:end]), buffer[end:]
        request = LaneRequest(self._app, pending.path, pending.head.headers, body,
                              pending.keep_alive and not self._closing, self)
        self._task_handler = self._loop.create_task(self._serve(request, pending.handler))

    @staticmethod
    def _may_be_ours(buffer: bytes | bytearray) -> bool:
        """Could this unfinished head still be a lane request's? Else aiohttp answers it
        now (a GET, a TLS hello, bare LF line ends), not after the keep-alive timeout."""
        if len(buffer) > MAX_HEAD_BYTES:
            return False
        if len(buffer) < len(REQUEST_START):
            return REQUEST_START.startswith(buffer)
        # Every line break a CRLF (llhttp's rule, not aiohttp's: a bare LF is aiohttp's).
        return buffer.startswith(REQUEST_START) and buffer.count(b"\n") == buffer.count(b"\r\n")

    def _read_head(self, buffer: bytes | bytearray, body_at: int) -> _Pending | None:
        """The request's head when it is one for the lane, else None."""
        if not buffer.startswith(REQUEST_START):
            return None
        head = _Head()
        parser = httptools.HttpRequestParser(head)
        try:
            parser.feed_data(bytes(buffer[:body_at]))
        except (httptools.HttpParserError, httptools.HttpParserUpgrade):
            return None  # aiohttp's to refuse, or to upgrade
        route = self._routes.get(head.url.partition(b"?")[0])
        headers = head.headers
        if (route is None or parser.get_http_version() != "1.1" or head.repeated
                or len(headers) > MAX_HEADERS
                or "Transfer-Encoding" in headers or "Expect" in headers
                or "Content-Encoding" in headers or "Upgrade" in headers):
            return None  # aiohttp's: a body sent otherwise, a protocol other than ours
        length = headers.get("Content-Length", "0")
        if not length.isdigit() or int(length) > self._settings.max_body_bytes:
            return None
        path, handler = route
        return _Pending(head, path, handler, parser.should_keep_alive(), body_at, int(length))

    async def _serve(self, request: LaneRequest, handler: Handler) -> None:
        keep_alive = False
        try:
            response = await handler(request.as_request())
            sink = request.sink
            if sink is None:
                await self._app.on_response_prepare.send(request.as_request(), response)
                keep_alive = (request.keep_alive and not self._closing
                              and response.keep_alive is not False)
                self.write(response_bytes(cast(web.Response, response), keep_alive))
            else:  # streamed: the connection is reusable unless the stream was cut short
                keep_alive = sink.finished and sink.keep_alive and sink.response is response
            if self._paused:  # the client reads slowly: the next request waits (aiohttp's
                await self.drain()  # write_eof drains too)
        except (ConnectionError, asyncio.CancelledError):
            keep_alive = False  # the client went away
        except Exception:  # the middleware answers a handler's failures: this is ours
            log.exception("answering %s %s", request.method, request.path[:200])
            keep_alive = False
            if request.sink is None:
                with contextlib.suppress(ConnectionError):
                    self.write(INTERNAL_ERROR_RESPONSE)
        self._task_handler = None
        if not keep_alive or self._closing:
            if self.transport is not None:
                self.transport.close()
            return
        if self._reading_paused and self.transport is not None:
            self._reading_paused = False
            self.transport.resume_reading()
        self._rest()
        if self._buffer:
            self._next()

    # -- the connection between requests -------------------------------------------------------

    def _rest(self) -> None:
        """Idle from now: the keep-alive timer runs (one handle, moved on lazily)."""
        timeout = self._settings.keepalive_timeout_s
        self._idle_deadline = self._loop.time() + timeout
        if self._idle_timer is None:
            self._idle_timer = self._loop.call_at(self._idle_deadline, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        if self._task_handler is not None or self._pending is not None:
            return  # a request is here: the timer starts again when it is answered
        if self._loop.time() < self._idle_deadline:
            self._idle_timer = self._loop.call_at(self._idle_deadline, self._idle_check)
            return
        transport = self.transport
        if transport is not None:
            if self._buffer:  # a head had begun: the client is told why
                transport.write(HEAD_TIMEOUT_RESPONSE)
            transport.close()

    def _write_timed_out(self) -> None:
        self._write_timer = None
        transport = self.transport
        if transport is not None:
            log.info("client took nothing for %g s (write_timeout_s): connection dropped",
                     self._settings.write_timeout_s)
            transport.abort()

    def remote(self) -> str | None:
        if self._peer is None:
            peer = self.transport.get_extra_info("peername") if self.transport else None
            self._peer = (str(peer[0]) if isinstance(peer, tuple | list) else peer,)
        return self._peer[0]

    def _hand_over(self) -> None:
        """The connection becomes aiohttp's, with every byte of the request at hand (once
        shutting down, closed instead: aiohttp's shutdown has counted its connections)."""
        transport = self.transport
        if transport is None or self._task_handler is not None:
            return
        if self._closing:  # a body still arriving may be answered yet: shutdown decides
            if self._pending is None:
                transport.close()
            return
        # Never while the client is behind: an answer is drained before the next request.
        for timer in (self._idle_timer, self._pending.timer if self._pending else None):
            if timer is not None:
                timer.cancel()
        self._idle_timer = None
        self._pending = None
        self._server._connections.pop(cast(RequestHandler, self), None)
        self.transport = None
        general = cast(EnvelopeRequestHandler, self._general())
        transport.set_protocol(general)
        general.connection_made(transport)  # reading is never paused here: see _serve
        buffer, self._buffer = self._buffer, b""
        if buffer:
            general.data_handed_over(bytes(buffer))


class LaneServer(EnvelopeServer):
    """aiohttp's Server, whose connections start on the lane."""

    app: web.Application | None = None
    routes: Routes = {}  # open_lane sets the server's own

    def __call__(self) -> Any:
        app = self.app
        settings = self.settings
        if app is None or settings is None:
            return super().__call__()
        return LaneProtocol(self, app, settings(), self.routes,
                            functools.partial(EnvelopeServer.__call__, self))


def open_lane(server: web.Server, app: web.Application) -> None:
    """Serve `app`'s proxied routes on the lane (after `guard_connections`)."""
    assert isinstance(server, EnvelopeServer), "guard_connections first"
    server.__class__ = LaneServer
    lane = cast(LaneServer, server)
    lane.app = app
    lane.routes = {path.encode(): (path, handler) for path, handler in app[LANE_ROUTES].items()}
