"""A lean pooled HTTP/1.1 client: asyncio protocols (uvloop) and the `httptools` parser.

It does what `upstream.py` needs and nothing more: POST a body, read the answer whole or
as it arrives. One `Pool` per upstream origin holds at most `limit` connections, reused
while the upstream keeps them alive (LIFO, idle ones closed after KEEPALIVE_S); a request
finding them all busy queues for the next free one (FIFO). A response holds one timer,
moved only when it fires: the head's deadline, then `idle_s` between two reads of the
body and the exchange's total deadline. A body is buffered up to HIGH_WATER bytes, then
the socket is paused until the reader catches up.

A connection the upstream closed while idle is dropped from the pool when the close is
seen; one closed just as a request went out is retried once on a new connection, only if
no byte of the answer arrived.

Errors are `HttpError`s (errors.py); the response's body readers raise them through the
`errors` function the pool was given, so the caller's own errors come out.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections import deque
from collections.abc import Callable, Mapping
from typing import cast

from yarl import URL

from .errors import ConnectFailed, Disconnected, ErrorMap, InvalidHeader, RequestTimeout
from .response import Response

KEEPALIVE_S = 15.0  # an idle connection older than this is closed, not reused
# A reused connection closed this soon after the request went out raced the upstream's
# keep-alive timer: the request was never worked on. A later close may follow real work
# (a generation the provider bills), so that request is not sent again.
STALE_RETRY_S = 1.0
MAX_TARGETS = 1024  # request targets cached per pool (a provider uses a handful)
# What goes out unless the caller's headers say otherwise (aiohttp's defaults).
DEFAULT_HEADERS = (("accept", "Accept: */*\r\n"),
                   ("accept-encoding", "Accept-Encoding: gzip, deflate\r\n"),
                   ("content-type", "Content-Type: application/octet-stream\r\n"))
DEFAULTED = {name: 1 << i for i, (name, _) in enumerate(DEFAULT_HEADERS)}
# For each set of defaulted names the caller gave: the default lines left, how many.
DEFAULTS = [("".join(line for i, (_, line) in enumerate(DEFAULT_HEADERS) if not seen & 1 << i),
             sum(1 for i in range(len(DEFAULT_HEADERS)) if not seen & 1 << i))
            for seen in range(1 << len(DEFAULT_HEADERS))]
FRAMING = frozenset({"host", "content-length", "transfer-encoding", "connection"})


def default_ssl_context() -> ssl.SSLContext:
    """Certificates checked against the system's CAs (SSL_CERT_FILE / SSL_CERT_DIR too),
    HTTP/1.1 offered by ALPN, as aiohttp's default. Loads files: make it once."""
    context = ssl.create_default_context()
    context.set_alpn_protocols(("http/1.1",))
    return context


class Origin:
    """Where a pool connects: scheme, host and port of a base URL, and its Host header."""

    __slots__ = ("host", "host_header", "port", "tls")

    def __init__(self, base_url: str) -> None:
        url = URL(base_url)
        if url.scheme not in ("http", "https") or not url.raw_host:
            raise ConnectFailed("the base URL is not an http(s) URL")
        self.tls = url.scheme == "https"
        self.host = url.raw_host
        self.port = url.port or (443 if self.tls else 80)
        self.host_header = f"Host: {url.host_port_subcomponent}\r\n"


def request_target(base_url: str, path: str) -> str:
    """The path and query to send for `path` under `base_url`, percent-encoded. A `path`
    the caller encoded itself (a Bedrock model ARN) goes out exactly as written, since a
    request signature covers it (yarl would decode `%3A`)."""
    url = base_url + path
    if "%" in path and _ENCODED_CHARS.issuperset(url):
        return URL(url, encoded=True).raw_path_qs
    return URL(url).raw_path_qs


# The characters an encoded URL may hold (RFC 3986).
_ENCODED_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                           "-._~:/?#[]@!$&'()*+,;=%")


class Connection(asyncio.Protocol):
    """One socket to the upstream; it carries one response at a time."""

    __slots__ = ("closed", "idle_since", "pool", "response", "reused", "transport")

    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.response: Response | None = None
        self.closed = False
        self.reused = False  # it carried an earlier exchange
        self.idle_since = 0.0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.pool.opened(self)

    def data_received(self, data: bytes) -> None:
        response = self.response
        if response is None:  # bytes nobody asked for: the connection is out of step
            self.abort()
            return
        response.feed(data)

    def eof_received(self) -> bool:
        return False  # the transport closes itself: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        response, self.response = self.response, None
        if response is not None:
            response.lost(exc)
        self.pool.lost(self)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def send(self, response: Response, head: bytes, body: bytes) -> None:
        assert self.transport is not None
        if self.closed:  # closed while it was handed over: no answer (nor loss) will come
            response.lost()
            return
        self.response = response
        if len(body) < 65536:  # one write, one syscall
            self.transport.write(head + body)
        else:
            self.transport.writelines((head, body))

    def finished(self, response: Response, keep: bool) -> None:
        """The response is whole: back to the pool if it may carry another one."""
        if self.response is response:
            self.response = None
        transport = self.transport
        if keep and not self.closed and transport is not None \
                and not transport.get_write_buffer_size():
            self.pool.release(self)
        else:
            self.abort()


class Pool:
    """The connections to one origin: at most `limit`, reused while kept alive."""

    def __init__(self, base_url: str, *, limit: int, connect_s: float,
                 ssl_context: ssl.SSLContext | None, errors: ErrorMap,
                 max_body: int) -> None:
        self.base_url = base_url
        self.origin = Origin(base_url)
        self.limit = limit
        self.max_body = max_body  # what Response.read() takes at most
        self._connect_s = connect_s
        self._ssl = (ssl_context or default_ssl_context()) if self.origin.tls else None
        self.errors = errors
        self._loop = asyncio.get_running_loop()
        self._idle: list[Connection] = []
        self._open: set[Connection] = set()  # every connection, busy or idle
        self._connecting = 0  # connects under way (each holds a place under `limit`)
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._targets: dict[str, str] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self.closed = False
        self.retired = False  # no new exchanges: connections close as they come back

    # -- one exchange ----------------------------------------------------------------

    async def post(self, path: str, headers: Mapping[str, str], body: bytes, *,
                   first_byte_s: float, idle_s: float, total_s: float,
                   on_sent: Callable[[], None] | None = None) -> Response:
        """POST `body` to base_url + `path`; the response once its head is in.
        The head must come within first_byte_s (and total_s), a free connection and the
        connect included; the body then within idle_s per read and total_s in all.
        `on_sent` is called when the request has been handed to a connection."""
        target = self._targets.get(path)
        if target is None:
            target = self._target(path)
        head = self._head(target, headers, len(body))
        now = self._loop.time()
        deadline = now + min(first_byte_s, total_s)
        total = now + total_s
        conn = self._take_idle()
        if conn is None:
            conn = await self._acquire(deadline, fresh=False)
        retry = True
        while True:
            response = Response(conn, self._loop, self.errors, self.max_body, deadline,
                                idle_s, total)
            response.resent = not retry
            sent_at = self._loop.time()
            conn.send(response, head, body)
            if on_sent is not None:
                on_sent()
                on_sent = None
            try:
                await response.head()
            except Disconnected:
                # A keep-alive connection the upstream closed as the request went out:
                # once more on a new one, if not a byte of the answer came back.
                if (not (retry and conn.reused) or response.received
                        or self._loop.time() - sent_at > STALE_RETRY_S):
                    raise
                retry = False
                conn = await self._acquire(deadline, fresh=True)
                continue
            except BaseException:
                response.close()
                raise
            return response

    def _target(self, path: str) -> str:
        if len(self._targets) >= MAX_TARGETS:
            self._targets.clear()
        target = self._targets[path] = request_target(self.base_url, path)
        return target

    def _head(self, target: str, headers: Mapping[str, str], length: int) -> bytes:
        seen = 0
        host = self.origin.host_header
        lines = []
        for name, value in headers.items():
            lower = name.lower()
            bit = DEFAULTED.get(lower)
            if bit is not None:
                seen |= bit
            elif lower in FRAMING:  # ours to set (a Host given is kept)
                if lower == "host":
                    host = f"Host: {value}\r\n"
                continue
            lines.append(f"{name}: {value}\r\n")
        defaults, count = DEFAULTS[seen]
        head = (f"POST {target} HTTP/1.1\r\n{host}{defaults}{''.join(lines)}"
                f"Content-Length: {length}\r\n\r\n")
        expected = len(lines) + count + 4  # request line, Host, Content-Length, blank line
        if head.count("\n") != expected or head.count("\r") != expected:
            raise InvalidHeader("a request header holds a line break")
        # The bytes a client sent in a forwarded header go out as they came.
        return head.encode("utf-8", "surrogateescape")

    # -- connections ---------------------------------------------------------------------

    def _take_idle(self) -> Connection | None:
        idle = self._idle
        if not idle:
            return None
        expired = self._loop.time() - KEEPALIVE_S
        while idle:
            conn = idle.pop()
            if not conn.closed and conn.idle_since > expired:
                conn.reused = True
                return conn
            conn.abort()
        return None

    async def _acquire(self, deadline: float, *, fresh: bool) -> Connection:
        """A connection, queuing for a free one or connecting, before `deadline`."""
        queued = False
        try:
            async with asyncio.timeout_at(deadline):
                if not fresh:
                    conn = self._take_idle()
                    if conn is not None:
                        return conn
                if self._connecting + len(self._open) >= self.limit:
                    queued = True
                    conn = await self._queue()
                    if conn is not None:
                        return conn
                else:
                    self._connecting += 1
                return await self._connect()
        except TimeoutError:
            raise RequestTimeout("pool" if queued else "connect") from None

    async def _queue(self) -> Connection | None:
        """Wait for a connection someone releases (or None: a free slot to connect)."""
        waiter: asyncio.Future[Connection | None] = self._loop.create_future()
        self._waiters.append(waiter)
        try:
            return await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled():
                conn = waiter.result()  # handed over just as we gave up: pass it on
                if conn is not None:
                    self.release(conn)
                else:
                    self._connecting -= 1
                    self._free_slot()
            else:
                waiter.cancel()
                # Out of the line now (a pool that stays full would keep one per timeout),
                # unless a release already took it out.
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            raise

    async def _connect(self) -> Connection:
        """A new connection in a place already counted in `_connecting`."""
        origin = self.origin
        failed = True
        try:
            if self.closed:
                raise Disconnected("the pool is closed")
            try:
                async with asyncio.timeout(self._connect_s) as scope:
                    _, conn = await self._loop.create_connection(
                        lambda: Connection(self), origin.host, origin.port, ssl=self._ssl,
                        server_hostname=origin.host if self._ssl is not None else None)
            except TimeoutError:
                if scope.expired():
                    raise RequestTimeout("connect") from None
                raise
            except OSError as exc:  # refused, unreachable, DNS, TLS (ssl.SSLError)
                raise ConnectFailed(f"{type(exc).__name__}: {exc}") from exc
            failed = False
        finally:
            self._connecting -= 1
            if failed:
                self._free_slot()
        if not conn.closed:
            self._open.add(conn)
        if self.closed:
            conn.abort()
            raise Disconnected("the pool is closed")
        return conn

    def release(self, conn: Connection) -> None:
        """A connection free for the next exchange: to the first waiter, else idle."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                conn.reused = True
                waiter.set_result(conn)
                return
        if self.closed or self.retired:
            conn.abort()
            return
        conn.idle_since = self._loop.time()
        self._idle.append(conn)
        if self._sweeper is None:
            self._sweeper = self._loop.call_at(conn.idle_since + KEEPALIVE_S, self._sweep)

    def opened(self, conn: Connection) -> None:
        self._open.add(conn)

    def lost(self, conn: Connection) -> None:
        """A connection closed (by either side): its place is free."""
        if conn not in self._open:
            return
        self._open.discard(conn)
        if conn in self._idle:
            self._idle.remove(conn)
        self._free_slot()

    def _free_slot(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._connecting += 1
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close the connections idle for KEEPALIVE_S; look again while some are left."""
        self._sweeper = None
        expired = self._loop.time() - KEEPALIVE_S
        for conn in [c for c in self._idle if c.idle_since <= expired]:
            self._idle.remove(conn)
            conn.abort()
        if self._idle:
            self._sweeper = self._loop.call_at(self._idle[0].idle_since + KEEPALIVE_S,
                                               self._sweep)

    def retire(self) -> None:
        """No more exchanges will start here: idle connections close now, busy ones
        when their answer is whole."""
        self.retired = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.abort()

    def close(self) -> None:
        """Close every connection; exchanges under way fail as Disconnected."""
        self.closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_exception(Disconnected("the pool is closed"))
        self._waiters.clear()
        self._idle = []
        for conn in list(self._open):
            conn.abort()
