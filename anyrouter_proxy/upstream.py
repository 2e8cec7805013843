"""The only outbound HTTP: one pooled ClientSession per provider, errors made ours.

`Upstream` is the seam tests and the in-process demo provider plug into; the real one
is `HttpUpstream`. Timeouts (`providers.ID.timeouts`): `connect_s` for the TCP/TLS connect,
`first_byte_s` until the response headers arrive, `idle_s` between two reads of a body,
`total_s` for the whole exchange.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Iterable, Mapping
from contextvars import ContextVar
from typing import Protocol

import aiohttp
from aiohttp.client_reqrep import ClientRequest
from aiohttp.connector import Connection
from aiohttp.tracing import Trace
from yarl import URL

from .config.model import ProviderConfig, Timeouts
from .errors import TimeoutStage, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a non-stream answer larger than this is refused
# A URL made only of the characters an encoded URL may hold (RFC 3986).
_ENCODED_URL = re.compile(r"[A-Za-z0-9\-._~:/?#\[\]@!$&'()*+,;=%]*")


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def send(self, provider: ProviderConfig, path: str, body: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse: ...

    async def close(self) -> None: ...

    def retire(self, providers: Iterable[ProviderConfig]) -> None: ...


class IdleTimeout(Exception):
    """A read of the body waited longer than the provider's idle_s."""


class IdleWatch:
    """`idle_s` between two reads of a body, for the price of two attribute writes per read:
    one timer per body, moved only when it fires (a timer per read cost ~4 µs per stream
    event). Time the consumer spends elsewhere, e.g. writing to a slow client, is not idle.
    When a read has waited too long, the body's reader fails with IdleTimeout."""

    __slots__ = ("_content", "_handle", "_idle", "_loop", "_since")

    def __init__(self, content: aiohttp.StreamReader, idle_s: float) -> None:
        self._content = content
        self._idle = idle_s
        self._loop = asyncio.get_running_loop()
        self._since: float | None = None  # when the pending read began
        self._handle = self._loop.call_at(self._loop.time() + idle_s, self._check)

    def reading(self) -> None:
        self._since = self._loop.time()

    def read(self) -> None:
        self._since = None

    def _check(self) -> None:
        now = self._loop.time()
        since = self._since
        if since is not None and now >= since + self._idle:
            self._content.set_exception(IdleTimeout())
            return
        self._handle = self._loop.call_at((since if since is not None else now) + self._idle,
                                          self._check)

    def close(self) -> None:
        self._handle.cancel()


class HttpResponse:
    """An aiohttp response with our timeouts and error mapping applied to its body."""

    __slots__ = ("_provider", "_response", "headers", "status")

    def __init__(self, provider: ProviderConfig, response: aiohttp.ClientResponse) -> None:
        self._provider = provider
        self._response = response
        self.status = response.status
        self.headers: Mapping[str, str] = response.headers

    async def read(self) -> bytes:
        content = self._response.content
        if content.is_eof() and content.total_bytes <= MAX_RESPONSE_BYTES:
            try:  # the whole body already arrived (the usual case): no timer needed
                return await self._response.read()
            finally:
                self._response.release()
        parts: list[bytes] = []
        size = 0
        try:
            async with contextlib.aclosing(self._parts("reading the response")) as body:
                async for part in body:
                    size += len(part)
                    if size > MAX_RESPONSE_BYTES:
                        raise UpstreamError(
                            f"Provider {self._provider.id} sent a response over "
                            f"{MAX_RESPONSE_BYTES} bytes", code="upstream_invalid_response",
                            metadata={"provider_name": self._provider.id})
                    parts.append(part)
        finally:
            self._response.release()
        return b"".join(parts)

    def chunks(self) -> AsyncIterator[bytes]:
        idle = self._provider.timeouts.idle_s
        return self._parts(f"the next stream event ({idle:g} s idle)")

    async def _parts(self, waiting_for: str) -> AsyncGenerator[bytes, None]:
        """The body as it arrives, our timeouts and errors applied."""
        content = self._response.content
        watch = IdleWatch(content, self._provider.timeouts.idle_s)
        try:
            while True:
                watch.reading()
                part = await content.readany()
                watch.read()
                if not part:
                    return
                yield part
        except IdleTimeout:
            raise _timeout(self._provider, waiting_for) from None
        except TimeoutError:  # aiohttp's own: the exchange's total_s
            raise _total_timeout(self._provider) from None
        except aiohttp.ClientError as exc:
            raise _broken(self._provider, exc) from exc
        finally:
            watch.close()

    def close(self) -> None:
        # Closing (not releasing) drops the connection: an unfinished body must not be
        # read by the next request on the same keep-alive connection.
        self._response.close()


class _Progress:
    """How far the request being sent got: `queued` when the pool had no free connection
    as it asked for one, `connected` once it had one (its request then goes out)."""

    __slots__ = ("connected", "queued")

    def __init__(self) -> None:
        self.queued = False
        self.connected = False


# The send in progress in this task, for PoolConnector (set and reset around each send).
_SENDING: ContextVar[_Progress | None] = ContextVar("anyrouter_sending", default=None)


class PoolConnector(aiohttp.TCPConnector):
    """A provider's pool that tells the send in progress (`_SENDING`) whether it queued
    for a free connection and when it got one: time spent waiting for our own pool is
    not the provider's fault (see `HttpUpstream.send`)."""

    async def connect(self, req: ClientRequest, traces: list[Trace],
                      timeout: aiohttp.ClientTimeout) -> Connection:
        progress = _SENDING.get()
        if progress is not None and self._full(req):
            progress.queued = True
        connection = await super().connect(req, traces, timeout)
        if progress is not None:
            progress.connected = True
        return connection

    def _full(self, req: ClientRequest) -> bool:
        try:
            return self._available_connections(req.connection_key) <= 0
        except AttributeError:  # an aiohttp without it: a wait then counts as the provider's
            return False


SessionKey = tuple[str, Timeouts, int]


class HttpUpstream:
    """One ClientSession per provider (its timeouts and pool size), created on first use
    and kept until a config reload retires it."""

    def __init__(self) -> None:
        self._sessions: dict[SessionKey, aiohttp.ClientSession] = {}
        self._retiring: set[asyncio.Task[None]] = set()

    def _session(self, provider: ProviderConfig) -> aiohttp.ClientSession:
        key = (provider.id, provider.timeouts, provider.max_connections)
        session = self._sessions.get(key)
        if session is None or session.closed:
            timeouts = provider.timeouts
            session = aiohttp.ClientSession(
                connector=PoolConnector(limit=provider.max_connections, ttl_dns_cache=300,
                                        enable_cleanup_closed=True),
                timeout=aiohttp.ClientTimeout(total=timeouts.total_s,
                                              sock_connect=timeouts.connect_s),
                auto_decompress=True,
                skip_auto_headers=("User-Agent",),
                # Shared by every client: a provider's cookie must not ride along on
                # other keys' requests (and the jar costs a lookup per request).
                cookie_jar=aiohttp.DummyCookieJar(),
            )
            self._sessions[key] = session
        return session

    async def send(self, provider: ProviderConfig, path: str, body: bytes,
                   headers: Mapping[str, str]) -> UpstreamResponse:
        url = upstream_url(provider, path)
        progress = _Progress()
        token = _SENDING.set(progress)
        try:
            async with asyncio.timeout(provider.timeouts.first_byte_s):
                response = await self._session(provider).post(url, data=body, headers=headers)
        except TimeoutError as exc:
            raise _first_byte_timeout(provider, progress, exc) from exc
        except aiohttp.ClientError as exc:
            raise _broken(provider, exc) from exc
        finally:
            _SENDING.reset(token)
        return HttpResponse(provider, response)

    def retire(self, providers: Iterable[ProviderConfig]) -> None:
        """After a reload: sessions of providers gone or changed close once the requests
        they carry can have ended (the provider's total_s)."""
        current = {(p.id, p.timeouts, p.max_connections) for p in providers}
        for key in [k for k in self._sessions if k not in current]:
            session = self._sessions.pop(key)
            task = asyncio.create_task(_close_later(session, key[1].total_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            await session.close()


def upstream_url(provider: ProviderConfig, path: str) -> str | URL:
    """The URL of `path`: one the exchange percent-encoded itself (a Bedrock model ARN) goes
    out exactly as written, since a request signature covers it; yarl would decode `%3A`."""
    url = provider.base_url + path
    if "%" in path and _ENCODED_URL.fullmatch(url):
        return URL(url, encoded=True)
    return url


async def _close_later(session: aiohttp.ClientSession, delay_s: float) -> None:
    try:
        await asyncio.sleep(delay_s)
    finally:
        await session.close()


def _timeout(provider: ProviderConfig, waiting_for: str,
             stage: TimeoutStage = "upstream") -> UpstreamTimeout:
    return UpstreamTimeout(f"Provider {provider.id} timed out waiting for {waiting_for}",
                           stage=stage, metadata={"provider_name": provider.id})


def _first_byte_timeout(provider: ProviderConfig, progress: _Progress,
                        exc: TimeoutError) -> UpstreamTimeout:
    """first_byte_s passed before the answer's headers: while waiting for a free
    connection of our pool, while connecting (or aiohttp's own connect_s), or after the
    request went out."""
    if isinstance(exc, aiohttp.ServerTimeoutError) or not (progress.connected
                                                           or progress.queued):
        return _timeout(provider, "a connection")
    if not progress.connected:
        return _timeout(provider, f"a free connection (all {provider.max_connections} of "
                        "its pool in use)", "pool")
    return _timeout(provider, "the first byte", "answer")


def _total_timeout(provider: ProviderConfig) -> UpstreamTimeout:
    return _timeout(provider, f"the end of the answer ({provider.timeouts.total_s:g} s total)",
                    "answer")


def _broken(provider: ProviderConfig, exc: aiohttp.ClientError) -> UpstreamError:
    if isinstance(exc, aiohttp.ClientConnectorError):
        reason = "connection failed"
    elif isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientPayloadError):
        reason = "connection closed early"
    else:
        reason = type(exc).__name__
    # The exception text may contain the upstream URL but never a key; still, keep it out.
    return UpstreamError(f"Provider {provider.id}: {reason}",
                         metadata={"provider_name": provider.id})
