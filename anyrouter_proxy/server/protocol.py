"""The HTTP connection itself: aiohttp's protocol-level errors (a malformed request line,
headers too large, invalid characters) answered in the error envelope instead of plain
text, and timeouts a client cannot hold open (`server.keepalive_timeout_s`, `write_timeout_s`):

- `keepalive_timeout_s`: an idle keep-alive connection, or one whose request head has not
  all arrived, is closed (aiohttp's keep-alive timer, which runs from the moment the
  connection is idle; a request that had begun gets a 408 envelope first);
- `write_timeout_s`: a client that takes none of the answer's bytes for that long (the
  transport's send buffer stays above its high-water mark) is disconnected, which cancels
  its handler: the stream's upstream closes and its books close as cancelled. The timer
  is armed only when the transport pauses writing: nothing per event.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from http import HTTPStatus
from typing import Any, cast

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from ..config.model import ServerConfig
from ..errors import ProxyError, RequestTimeout, error_for_status

log = logging.getLogger(__name__)

def closing_envelope(error: ProxyError) -> bytes:
    """A whole HTTP/1.1 answer with `error`'s envelope, written below any handler (the
    connection closes after it)."""
    body = orjson.dumps(error.envelope())
    return (b"HTTP/1.1 %d %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n"
            b"Connection: close\r\n\r\n%b"
            % (error.status, HTTPStatus(error.status).phrase.encode(), len(body), body))


HEAD_TIMEOUT_RESPONSE = closing_envelope(RequestTimeout(
    "Request headers not received in time", code="request_timeout"))


class EnvelopeRequestHandler(RequestHandler):
    write_timeout_s: float | None = None  # None: no write timeout (aiohttp's behaviour)
    _write_timer: asyncio.TimerHandle | None = None
    _head_started = False  # bytes of a request arrived while the connection was idle

    def close_after_response(self) -> None:
        """Close once the answer is out, without aiohttp's 'lingering' read of the rest of
        a body we refused (up to 10 s for a slow-drip client)."""
        self._lingering_time = 0.0  # then aiohttp closes the uncompleted request at once

    def handle_error(self, request: Any, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        response = super().handle_error(request, status, exc, message)  # logs; may raise
        reason = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else ""
        detail = "Internal error" if status >= 500 else f"Malformed HTTP request: {reason}"
        body = orjson.dumps(error_for_status(status, detail).envelope())
        envelope = web.Response(status=status, body=body, content_type="application/json")
        envelope.force_close()
        return envelope if response is not None else response

    # -- the request head ------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if data:  # still waiting for a whole request after these bytes: one has begun
            waiter = self._waiter
            self._head_started = waiter is not None and not waiter.done()

    def data_handed_over(self, data: bytes) -> None:
        """The bytes the lane (server/lane.py) read before it handed the connection over,
        which came before this handler waits for a request: when they are not a whole
        request head, the keep-alive timer answers them as a head begun."""
        self.data_received(data)
        self._head_started = not self._messages

    def _process_keepalive(self) -> None:
        """aiohttp's keep-alive timer: when it closes a connection on which a request had
        begun to arrive, that client is told why."""
        waiter, transport = self._waiter, self.transport
        if (self._head_started and waiter is not None and not waiter.done()
                and transport is not None and self._keepalive and not self._force_close
                and self._loop.time() >= self._next_keepalive_close_time):
            transport.write(HEAD_TIMEOUT_RESPONSE)
        super()._process_keepalive()

    # -- writes the client does not take ---------------------------------------------------

    def pause_writing(self) -> None:
        super().pause_writing()
        if self.write_timeout_s is not None and self._write_timer is None:
            self._write_timer = self._loop.call_later(self.write_timeout_s,
                                                      self._write_timed_out)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._cancel_write_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _cancel_write_timer(self) -> None:
        timer = self._write_timer
        if timer is not None:
            timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        transport = self.transport
        if transport is not None:
            log.info("client took nothing for %g s (write_timeout_s): connection dropped",
                     self.write_timeout_s)
            transport.abort()  # close() would wait for the buffer the client does not read


class EnvelopeServer(web.Server):
    settings: Callable[[], ServerConfig] | None = None  # the config in force, if known

    def __call__(self) -> RequestHandler:
        settings = self.settings
        if settings is None:
            return EnvelopeRequestHandler(self, loop=self._loop, **self._kwargs)
        server = settings()  # each new connection takes the timeouts of the config in force
        handler = EnvelopeRequestHandler(
            self, loop=self._loop,
            **{**self._kwargs, "keepalive_timeout": server.keepalive_timeout_s})
        handler.write_timeout_s = server.write_timeout_s
        return handler


def answer_protocol_errors_as_envelopes(server: web.Server) -> None:
    """aiohttp has no hook for this: its Server builds RequestHandlers itself, so the
    runner's server is given the subclass that builds ours."""
    server.__class__ = EnvelopeServer


def guard_connections(server: web.Server, settings: Callable[[], ServerConfig]) -> None:
    """Envelopes for protocol errors, plus the keep-alive (request head) and write
    timeouts of `settings()` (read for each new connection: a reload applies to the
    connections that open after it)."""
    answer_protocol_errors_as_envelopes(server)
    cast(EnvelopeServer, server).settings = settings
