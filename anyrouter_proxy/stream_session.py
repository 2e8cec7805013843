"""Relaying an opened upstream stream to the client, event by event.

Once the first bytes have gone out nothing is retried: an upstream failure becomes a final
error event in the client's dialect (docs/api.md, "Streaming"), and a client that leaves
stops the upstream read and is accounted as cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import orjson

from .accounting import Books
from .errors import ProxyError, UpstreamError, internal_failure
from .providers.base import StreamTranslator
from .providers.responses_events import failed_before_start
from .sse import DONE_EVENT, EventDecoder, EventTooLarge, SSEDecoder, encode_event
from .types import MESSAGES, RESPONSES
from .upstream import UpstreamResponse

log = logging.getLogger(__name__)


class Sink(Protocol):
    """Where a stream's bytes go (the client's connection, server/stream_sink.py)."""

    async def write(self, data: bytes) -> None:
        """The first bytes (the response's headers go with them)."""

    def send(self, data: bytes) -> bool:
        """Later bytes, on the wire at once; True when the client is behind: drain."""

    async def drain(self) -> None: ...

    async def end(self, data: bytes) -> None:
        """The last bytes, with the end of the body."""


class Outcome(Protocol):
    """Told once how the stream ended (provider health)."""

    def ended(self, *, failure: ProxyError | None = None, cancelled: bool = False,
              completion_tokens: int = 0) -> None: ...


def stream_error_event(endpoint: str, exc: ProxyError, *, gen_id: str = "",
                       model: str = "") -> bytes:
    """The final event of a stream that failed, in the client's dialect (a Responses
    stream that had not begun: response.created, then response.failed)."""
    if endpoint == MESSAGES:
        return encode_event(orjson.dumps(exc.envelope(anthropic=True)), "error")
    if endpoint == RESPONSES:
        return failed_before_start(exc.envelope()["error"], gen_id=gen_id, model=model)
    return encode_event(orjson.dumps(exc.envelope())) + DONE_EVENT


def translate(chunk: bytes, decoder: EventDecoder, translator: StreamTranslator
              ) -> tuple[list[bytes], ProxyError | None]:
    """Client bytes for one upstream read, and the failure that cut it short, if any:
    events before a failure in the same read still reach the client."""
    out: list[bytes] = []
    try:
        for event in decoder.feed(chunk):
            out.extend(translator.feed(event))
    except ProxyError as exc:
        return out, exc
    except EventTooLarge as exc:
        return out, UpstreamError(f"The upstream stream is invalid: {exc}",
                                  code="upstream_invalid_response")
    return out, None


def translate_read(chunk: bytes, decoder: EventDecoder, translator: StreamTranslator,
                   whole: Callable[[bytes], bytes | None] | None
                   ) -> tuple[bytes, ProxyError | None]:
    """`translate` for a relayed read, joined; `whole` (see `whole_event_path`) first."""
    if whole is not None and (one := whole(chunk)) is not None:
        return one, None
    out, failure = translate(chunk, decoder, translator)
    return b"".join(out), failure


def whole_event_path(decoder: EventDecoder, translator: StreamTranslator
                     ) -> Callable[[bytes], bytes | None] | None:
    """The translator's path for a read that is one whole usual event (`relay_read`, on
    bytes, if it has one), taken while the SSE decoder is between events."""
    relay_read: Callable[[bytes], bytes | None] | None = getattr(translator, "relay_read", None)
    if relay_read is None or not isinstance(decoder, SSEDecoder):
        return None

    def whole(chunk: bytes) -> bytes | None:
        return relay_read(chunk) if decoder.idle else None

    return whole


async def first_output(chunks: AsyncIterator[bytes], decoder: EventDecoder,
                       translator: StreamTranslator) -> tuple[list[bytes], ProxyError | None]:
    """Read until there is something for the client (or fail, so routing can move on)."""
    async for chunk in chunks:
        out, failure = translate(chunk, decoder, translator)
        if failure is not None and not out:
            raise failure
        if out:
            return out, failure
    return translator.finish(), None  # raises: the stream ended before any event


async def pump_iterator(chunks: AsyncIterator[bytes],
                        handler: Callable[[bytes], bool]) -> bool:
    """http1's Response.pump for any other body (the mock's): `handler` called on each
    chunk in turn; False when it asks to stop (the next call goes on from there)."""
    async for chunk in chunks:
        if handler(chunk):
            return False
    return True


async def discard(response: UpstreamResponse | None,
                  chunks: AsyncIterator[bytes] | None) -> None:
    if chunks is not None:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    if response is not None:
        response.close()


class StreamSession:
    """An opened upstream stream whose first client-bound bytes are ready."""

    def __init__(self, endpoint: str, headers: dict[str, str], books: Books,
                 response: UpstreamResponse, chunks: AsyncIterator[bytes],
                 decoder: EventDecoder, translator: StreamTranslator, first: list[bytes],
                 failure: ProxyError | None = None, outcome: Outcome | None = None,
                 completed: Callable[[StreamTranslator], None] | None = None) -> None:
        self.endpoint = endpoint
        self.headers = headers
        self._books = books
        self._response = response
        self._chunks = chunks
        self._decoder = decoder
        self._translator = translator
        self._pending = first
        self._failure = failure  # already happened, after the first events
        self._outcome = outcome
        self._completed = completed  # told once the answer is whole, before its end goes out

    async def relay(self, sink: Sink) -> None:
        """Write the whole stream, then end it with its last bytes (the normal end or an
        error event) in the same write as the end of the body. The events of one upstream
        read leave in one write, which awaits only when the client is behind."""
        translator, books = self._translator, self._books
        end = sink.end
        try:
            await sink.write(b"".join(self._pending))
            if self._failure is not None:
                raise self._failure
            await self._pump(getattr(self._chunks, "pump", None)
                             or functools.partial(pump_iterator, self._chunks), sink)
            tail = translator.finish()
            if self._completed is not None:
                self._completed(translator)
            self._fill_record()
            try:
                # The end goes out first, the books close right after: nothing in between
                # yields to the loop (unless the client is slow to read, when it has not
                # seen the end yet), so a /generation sent after the end finds the row.
                await end(b"".join(tail))
            finally:  # the answer was complete even if the client left at the last byte
                self._close()
                self._ended(completion_tokens=books.record.usage.completion_tokens)
        except ProxyError as exc:
            self._fill_record()
            self._ended(failure=exc)
            self._close(error=exc)
            await end(self._failure_event(exc))
        except (asyncio.CancelledError, ConnectionError):
            self._fill_record()
            self._ended(cancelled=True)
            self._close(cancelled=True)
            raise
        except Exception:  # a bug of ours: the books still close, the client hears of it
            failure = internal_failure(log, "stream relay")
            self._fill_record()
            self._ended(failure=failure)
            self._close(error=failure)
            with contextlib.suppress(Exception):
                await end(self._failure_event(failure))
        finally:
            await discard(self._response, self._chunks)

    async def _pump(self, pump: Callable[[Callable[[bytes], bool]], Awaitable[bool]],
                    sink: Sink) -> None:
        """Each read translated and written as it arrives, from the upstream connection's
        callback (http1's `pump`: no task wake-up per read). The callback never raises: it
        stops the pump, and this raises or drains."""
        translator, decoder, send = self._translator, self._decoder, sink.send
        whole = whole_event_path(decoder, translator)
        stopped: BaseException | None = None  # what the callback stopped for
        behind = False

        def relay_read(chunk: bytes) -> bool:
            nonlocal behind, stopped
            try:
                out, failure = translate_read(chunk, decoder, translator, whole)
                if out and send(out):
                    behind = True
                if failure is not None:
                    stopped = failure
                    return True
            except Exception as exc:  # the client left (ConnectionResetError), or a bug
                stopped = exc
                return True
            return behind

        while not await pump(relay_read):
            if stopped is not None:
                raise stopped
            behind = False
            await sink.drain()
        if stopped is not None:  # stopped by the very last read
            raise stopped

    def _failure_event(self, exc: ProxyError) -> bytes:
        """The translator's own last event for a failure, if it has one (Responses:
        response.failed with the output so far), else the dialect's error event."""
        failed = getattr(self._translator, "failed", None)
        if failed is not None:
            event: bytes = failed(exc)
            return event
        return stream_error_event(self.endpoint, exc)

    def _ended(self, **outcome: object) -> None:
        if self._outcome is not None:
            self._outcome.ended(**outcome)  # type: ignore[arg-type]
            self._outcome = None

    async def abandon(self) -> None:
        """The client went away before the relay began."""
        self._ended(cancelled=True)
        self._fill_record()
        self._close(cancelled=True)
        await discard(self._response, self._chunks)

    def _close(self, *, error: ProxyError | None = None, cancelled: bool = False) -> None:
        """Every answer that began is charged: the provider's usage when it reported a
        final one, else the output relayed so far estimated (accounting.settled_usage)."""
        translator = self._translator
        self._books.close(error=error, cancelled=cancelled, usage=translator.usage,
                          completion_estimate=translator.output_tokens)

    def _fill_record(self) -> None:
        record = self._books.record
        record.upstream_id = self._translator.upstream_id
        record.finish_reason = self._translator.finish_reason
