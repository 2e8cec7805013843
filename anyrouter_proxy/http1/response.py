"""One answer as it arrives on its connection: the head, then the body, read whole
(`read`) or as it comes (`chunks`).

The parser (httptools) calls back into the response; the body is kept as the bytes
that arrived, up to HIGH_WATER before the socket is paused, and handed to the reader all
at once. One timer per response, moved only when it fires: first the head's deadline,
then `idle_s` for a read waiting on the body (time the reader spends elsewhere, e.g.
writing to a slow client, is not idle) and the total deadline. Once the answer is whole,
its connection goes back to the pool at once, before anyone reads the body.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from httptools import HttpParserError, HttpParserUpgrade, HttpResponseParser
from multidict import CIMultiDict, CIMultiDictProxy

from .errors import (
    BodyTooLarge,
    Disconnected,
    ErrorMap,
    HttpError,
    IdleTimeout,
    InvalidResponse,
    RequestTimeout,
    TotalTimeout,
)

if TYPE_CHECKING:
    from .pool import Connection

HIGH_WATER = 256 * 1024  # body bytes buffered before the socket is paused
MAX_HEAD_BYTES = 64 * 1024  # a status line and headers longer than this are refused
DECODE_STEP = 1 << 20  # decompressed bytes per read at most (a gzip bomb stays small)
_ENCODING = re.compile(rb"\ncontent-encoding:[ \t]*([^\r]*)")
_CHUNKED = re.compile(rb"\ntransfer-encoding:[^\r]*chunked")


class Response:
    """The answer to one request: `status` and `headers` once `head()` returned."""

    __slots__ = ("_buffered", "_chunks", "_conn", "_decoder", "_done", "_error",
                 "_errors", "_extra", "_head", "_head_bytes", "_head_deadline", "_headers",
                 "_idle", "_interim", "_keep", "_loop", "_max_body", "_parser", "_paused",
                 "_push", "_rearm", "_seen", "_since", "_timer", "_total", "_until_eof", "_waiter",
                 "has_head", "received", "resent", "status")

    # Parser callbacks not used (looked up once per parser; None is the cheap "no"). The
    # headers are not taken one callback each: they are read from the head's bytes, and
    # only when someone asks for them (an error answer's Retry-After).
    on_status = on_url = on_header = on_chunk_header = on_chunk_complete = None

    def __init__(self, conn: Connection, loop: asyncio.AbstractEventLoop, errors: ErrorMap,
                 max_body: int, head_deadline: float, idle_s: float, total: float) -> None:
        self._conn: Connection | None = conn
        self._loop = loop
        self._errors = errors
        self._max_body = max_body
        self._parser = HttpResponseParser(self)
        self._seen: list[bytes] = []  # what arrived until the head was whole
        self._interim = 0  # interim answers (100 Continue) before the real one
        self._head = b""  # the header lines of the answer
        self._headers: Mapping[str, str] | None = None
        self.status = 0
        self.has_head = False
        self.received = False  # a byte of the answer arrived
        self.resent = False  # sent again after a reused connection closed unanswered
        self._head_bytes = 0
        self._chunks: list[bytes] = []
        self._buffered = 0
        self._paused = False
        self._done = False  # the whole body arrived
        self._keep = False  # the upstream keeps the connection open after this answer
        self._extra = False  # bytes after the end of the answer: the connection is unusable
        self._until_eof = False  # a body without a length: it ends when the connection does
        self._decoder: _Decoder | None = None
        self._error: HttpError | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._push: Callable[[bytes], bool] | None = None  # pump's handler, while it waits
        self._since: float | None = None  # when the pending read of the body began
        self._idle = idle_s
        self._head_deadline = head_deadline
        self._total = total
        self._rearm = False
        self._timer: asyncio.TimerHandle | None = loop.call_at(head_deadline, self._tick)

    # -- the reader's side -----------------------------------------------------------------

    async def head(self) -> None:
        """Until the status and headers are in (raises HttpError)."""
        while not self.has_head:
            if self._error is not None:
                raise self._error
            await self._wait()

    async def read(self) -> bytes:
        """The whole body (at most the pool's max_body bytes); the connection is released."""
        parts: list[bytes] = []
        size = 0
        try:
            while True:
                if self._chunks:
                    data = self._take()
                elif self._done:
                    data = self._flush()
                    if not data:
                        break
                elif self._error is not None:
                    raise self._error
                else:
                    await self._wait()
                    continue
                size += len(data)
                if size > self._max_body:
                    raise BodyTooLarge(str(self._max_body))
                parts.append(data)
        except HttpError as exc:
            self.close()
            raise self._errors(exc, False) from exc
        return parts[0] if len(parts) == 1 else b"".join(parts)

    @property
    def headers(self) -> Mapping[str, str]:
        """The answer's headers, case-insensitive (the first of a repeated name)."""
        if self._headers is None:
            pairs = []
            for line in self._head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                pairs.append((name.decode("utf-8", "surrogateescape"),
                              value.strip(b" \t").decode("utf-8", "surrogateescape")))
            self._headers = CIMultiDictProxy(CIMultiDict(pairs))
        return self._headers

    def chunks(self) -> Response:
        """The body as it arrives (each item all that had arrived), then the end."""
        return self

    def __aiter__(self) -> Response:
        return self

    async def __anext__(self) -> bytes:
        try:
            while True:
                if self._chunks:
                    data = self._take()
                    if data:
                        return data
                elif self._done:
                    data = self._flush()
                    if data:
                        return data
                    raise StopAsyncIteration
                elif self._error is not None:
                    raise self._error
                else:
                    await self._wait()
        except HttpError as exc:
            self.close()
            raise self._errors(exc, True) from exc

    async def pump(self, handler: Callable[[bytes], bool]) -> bool:
        """The body handed to `handler` as it arrives, from the connection's own callback:
        no wake-up of the reader per read (what a relayed stream spends most per event).
        True once the body ended; False when `handler` returned True (it wants to stop: a
        failure, or a client that is behind), and what arrives meanwhile is buffered for
        the next call. `handler` must not raise. Raises as the iteration does."""
        try:
            while True:
                if self._chunks:
                    data = self._take()
                    if data and handler(data):
                        return False
                elif self._done:
                    data = self._flush()  # the end of an inflated body
                    return not (data and handler(data))
                elif self._error is not None:
                    raise self._error
                elif self._decoder is not None:  # inflated by _take, a step at a time
                    await self._wait()
                else:
                    self._push = handler
                    try:
                        await self._wait()
                    finally:
                        stopped = self._push is None  # by the handler (on_body)
                        self._push = None
                    if stopped:  # before anything that happened after it
                        return False
        except HttpError as exc:
            self.close()
            raise self._errors(exc, True) from exc

    def close(self) -> None:
        """Done with it: an answer not yet whole drops its connection (its rest must not
        be read as the next answer on it)."""
        self._cancel_timer()
        self._chunks.clear()
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finished(self, keep=False)
        if not self._done and self._error is None:
            self._error = Disconnected("the response was closed")

    async def _wait(self) -> None:
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._waiter = waiter
        if self.has_head:
            self._since = self._loop.time()
        try:
            await waiter
        finally:
            self._waiter = None
            self._since = None

    def _take(self) -> bytes:
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        chunks.clear()
        self._buffered = 0
        if self._paused:
            self._resume()
        if self._decoder is not None:
            data, rest = self._decoder.decode(data)
            if rest:  # inflated enough for one read: the rest waits for the next one
                chunks.append(rest)
                self._buffered = len(rest)
        return data

    def _flush(self) -> bytes:
        decoder, self._decoder = self._decoder, None
        return decoder.flush() if decoder is not None else b""

    # -- the connection's side --------------------------------------------------------------

    def feed(self, data: bytes) -> None:
        self.received = True
        if not self.has_head:
            self._seen.append(data)
        try:
            self._parser.feed_data(data)
        except HttpParserUpgrade:
            self._fail(InvalidResponse("the upstream switched protocols"))
            return
        except HttpParserError as exc:
            self._fail(InvalidResponse(f"not an HTTP/1.1 answer: {exc}"))
            return
        if not self.has_head:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEAD_BYTES:
                self._fail(InvalidResponse(f"a head over {MAX_HEAD_BYTES} bytes"))
            return
        if self._done:
            self._finish()
        elif self._rearm:
            self._rearm = False
            self._cancel_timer()
            now = self._loop.time()
            self._timer = self._loop.call_at(min(now + self._idle, self._total), self._tick)
        waiter = self._waiter
        if waiter is not None and (self._push is None or self._done) and not waiter.done():
            waiter.set_result(None)

    def lost(self, exc: Exception | None = None) -> None:
        """The connection closed under this response (`exc`: not cleanly, a reset)."""
        self._conn = None
        if self._done or self._error is not None:
            return
        if self.has_head and self._until_eof and exc is None:  # a body without a length ends
            self._done = True
            self._cancel_timer()
            self._wake()
            return
        self._fail(Disconnected("the upstream closed the connection early"))

    def on_message_begin(self) -> None:
        if self._done:  # the start of an answer nobody asked for (its rest may follow)
            self._extra = True

    def on_headers_complete(self) -> None:
        if self.has_head:
            self._extra = True
            return
        status = self._parser.get_status_code()
        if status < 200:  # an interim answer (100 Continue): the real one follows
            self._interim += 1
            return
        seen = self._seen
        raw = seen[0] if len(seen) == 1 else b"".join(seen)
        self._seen = []
        start = _head_start(raw, 0)
        for _ in range(self._interim):
            start = _head_start(raw, raw.index(b"\r\n\r\n", start) + 4)
        # The status line and the header lines; the parser has checked their syntax.
        head = self._head = raw[start:raw.index(b"\r\n\r\n", start)]
        self.status = status
        self.has_head = True
        self._rearm = True
        lowered = head.lower()
        if b"\ncontent-encoding:" in lowered:
            found = _ENCODING.search(lowered)
            self._decoder = _Decoder.of(found[1].decode("latin-1")) if found else None
        self._until_eof = status not in (204, 304) \
            and b"\ncontent-length:" not in lowered and not _CHUNKED.search(lowered)

    def on_body(self, body: bytes) -> None:
        if self._done:
            self._extra = True
            return
        push = self._push
        if push is not None:
            self._since = self._loop.time()  # idle from the latest bytes on
            if push(body):
                self._push = None
                self._wake()
            return
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused:
            conn = self._conn
            if conn is not None and conn.transport is not None:
                self._paused = True
                conn.transport.pause_reading()

    def on_message_complete(self) -> None:
        if not self.has_head:
            return  # the end of an interim answer
        if self._done:
            self._extra = True
            return
        self._done = True
        # Asked now: once this callback returns, the parser has moved on to the next
        # message and answers for that one.
        self._keep = self._parser.should_keep_alive()
        self._cancel_timer()

    def _finish(self) -> None:
        """The answer is whole: its connection goes back to the pool (or closes)."""
        conn = self._conn
        if conn is None:
            return
        self._conn = None
        if self._paused:
            self._paused = False
            if conn.transport is not None:
                conn.transport.resume_reading()
        conn.finished(self, keep=self._keep and not self._extra)

    def _resume(self) -> None:
        self._paused = False
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.transport.resume_reading()

    def _fail(self, exc: HttpError) -> None:
        if self._error is None and not self._done:
            self._error = exc
        self._cancel_timer()
        conn = self._conn
        if conn is not None:
            self._conn = None
            conn.finished(self, keep=False)
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _tick(self) -> None:
        self._timer = None
        if self._done or self._error is not None:
            return
        now = self._loop.time()
        if not self.has_head:
            if now >= self._head_deadline:
                self._fail(RequestTimeout("answer"))
            else:
                self._timer = self._loop.call_at(self._head_deadline, self._tick)
            return
        if now >= self._total:
            self._fail(TotalTimeout("the total deadline passed"))
            return
        since = self._since
        if since is not None and now >= since + self._idle:
            self._fail(IdleTimeout("no byte within idle_s"))
            return
        start = since if since is not None else now
        self._timer = self._loop.call_at(min(start + self._idle, self._total), self._tick)


def _head_start(raw: bytes, at: int) -> int:
    """Where the head at `at` begins: the parser skips line breaks before a status line
    (a server's stray CRLF after its previous body)."""
    while raw[at:at + 1] in (b"\r", b"\n"):
        at += 1
    return at


class _Decoder:
    """gzip or deflate (with or without its zlib header, as aiohttp accepts it)."""

    __slots__ = ("_deflate", "_zlib")

    def __init__(self, deflate: bool) -> None:
        self._deflate = deflate
        self._zlib: zlib._Decompress | None = None if deflate else zlib.decompressobj(
            16 + zlib.MAX_WBITS)

    @staticmethod
    def of(encoding: str) -> _Decoder | None:
        name = encoding.strip().lower()
        if name in ("gzip", "x-gzip"):
            return _Decoder(False)
        if name == "deflate":
            return _Decoder(True)
        return None  # identity, or an encoding we never asked for: passed on as is

    def decode(self, data: bytes) -> tuple[bytes, bytes]:
        """Inflated bytes (at most DECODE_STEP) and the input left for the next call."""
        if self._zlib is None:
            raw = not data or (data[0] & 0x0F) != 8  # no zlib header: a raw deflate stream
            self._zlib = zlib.decompressobj(-zlib.MAX_WBITS if raw else zlib.MAX_WBITS)
        try:
            out = self._zlib.decompress(data, DECODE_STEP)
        except zlib.error as exc:
            raise InvalidResponse(f"a body that does not inflate: {exc}") from None
        return out, self._zlib.unconsumed_tail

    def flush(self) -> bytes:
        if self._zlib is None:
            return b""
        try:
            return self._zlib.flush()
        except zlib.error as exc:
            raise InvalidResponse(f"a body that does not inflate: {exc}") from None
