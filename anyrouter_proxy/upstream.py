"""The only outbound HTTP: one connection pool per provider (`http1`), errors made ours.

`Upstream` is the seam tests and the in-process demo provider plug into; the real one
is `HttpUpstream`. Timeouts (`providers.ID.timeouts`): `connect_s` for the TCP/TLS connect,
`first_byte_s` until the response headers arrive (a free connection and the connect
included), `idle_s` between two reads of a body, `total_s` for the whole exchange.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Protocol

from . import http1
from .config.model import ProviderConfig, Timeouts
from .errors import TimeoutStage, UpstreamError, UpstreamTimeout

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 32 * 1024 * 1024  # a non-stream answer larger than this is refused


class UpstreamResponse(Protocol):
    status: int
    resent: bool  # the request went out twice: a reused connection closed unanswered

    @property
    def headers(self) -> Mapping[str, str]: ...

    async def read(self) -> bytes: ...

    def chunks(self) -> AsyncIterator[bytes]: ...

    def close(self) -> None: ...


class Upstream(Protocol):
    async def send(self, provider: ProviderConfig, path: str, body: bytes,
                   headers: Mapping[str, str],
                   on_sent: Callable[[], None] | None = None) -> UpstreamResponse:
        """POST; `on_sent` is called once the request has gone out (from then on the
        upstream may bill it, whatever happens to the caller)."""
        ...

    async def close(self) -> None: ...

    def retire(self, providers: Iterable[ProviderConfig]) -> None: ...


PoolKey = tuple[str, Timeouts, int, str]


def pool_key(provider: ProviderConfig) -> PoolKey:
    return provider.id, provider.timeouts, provider.max_connections, provider.base_url


class HttpUpstream:
    """One connection pool per provider (its address, timeouts and pool size), created on
    first use and kept until a config reload retires it. `ssl_context`: the certificates
    trusted for https upstreams (by default the system's, as `ssl` finds them)."""

    def __init__(self, ssl_context: ssl.SSLContext | None = None) -> None:
        self._pools: dict[PoolKey, http1.Pool] = {}
        # The pool of each provider object of the running config, by identity: one dict
        # lookup per request instead of hashing the provider's key.
        self._by_provider: dict[int, tuple[ProviderConfig, http1.Pool]] = {}
        self._retiring: set[asyncio.Task[None]] = set()
        self._ssl = ssl_context

    def _pool(self, provider: ProviderConfig) -> http1.Pool:
        key = pool_key(provider)
        pool = self._pools.get(key)
        if pool is None or pool.closed:
            if self._ssl is None and provider.base_url.startswith("https:"):
                self._ssl = http1.default_ssl_context()
            pool = http1.Pool(provider.base_url, limit=provider.max_connections,
                              connect_s=provider.timeouts.connect_s, ssl_context=self._ssl,
                              errors=ErrorMap(provider), max_body=MAX_RESPONSE_BYTES)
            self._pools[key] = pool
        self._by_provider[id(provider)] = (provider, pool)
        return pool

    async def send(self, provider: ProviderConfig, path: str, body: bytes,
                   headers: Mapping[str, str],
                   on_sent: Callable[[], None] | None = None) -> UpstreamResponse:
        known = self._by_provider.get(id(provider))
        timeouts = provider.timeouts
        try:
            pool = known[1] if known is not None and known[0] is provider \
                and not known[1].closed else self._pool(provider)
            return await pool.post(path, headers, body, first_byte_s=timeouts.first_byte_s,
                                   idle_s=timeouts.idle_s, total_s=timeouts.total_s,
                                   on_sent=on_sent)
        except http1.HttpError as exc:
            raise ErrorMap(provider)(exc, False) from exc

    def retire(self, providers: Iterable[ProviderConfig]) -> None:
        """After a reload: pools of providers gone or changed take no new requests and
        close once the requests they carry can have ended (the provider's total_s)."""
        current = {pool_key(p) for p in providers}
        self._by_provider.clear()
        for key in [k for k in self._pools if k not in current]:
            pool = self._pools.pop(key)
            pool.retire()
            task = asyncio.create_task(_close_later(pool, key[1].total_s))
            self._retiring.add(task)
            task.add_done_callback(self._retiring.discard)

    async def close(self) -> None:
        for task in list(self._retiring):
            task.cancel()
        pools, self._pools = list(self._pools.values()), {}
        self._by_provider.clear()
        for pool in pools:
            pool.close()


class ErrorMap:
    """A provider's http1 errors as ours (UpstreamError, UpstreamTimeout); the provider's
    key is never in them (nor the URL)."""

    __slots__ = ("_provider",)

    def __init__(self, provider: ProviderConfig) -> None:
        self._provider = provider

    def __call__(self, exc: http1.HttpError, streaming: bool) -> Exception:
        provider = self._provider
        if isinstance(exc, http1.RequestTimeout):
            return _first_byte_timeout(provider, exc.phase)
        if isinstance(exc, http1.IdleTimeout):
            return _timeout(provider, f"the next stream event ({provider.timeouts.idle_s:g} s "
                            "idle)" if streaming else "reading the response")
        if isinstance(exc, http1.TotalTimeout):
            return _timeout(provider, f"the end of the answer ({provider.timeouts.total_s:g} s "
                            "total)", "answer")
        if isinstance(exc, http1.BodyTooLarge):
            return UpstreamError(f"Provider {provider.id} sent a response over "
                                 f"{MAX_RESPONSE_BYTES} bytes", code="upstream_invalid_response",
                                 metadata={"provider_name": provider.id})
        return _broken(provider, exc)


async def _close_later(pool: http1.Pool, delay_s: float) -> None:
    try:
        await asyncio.sleep(delay_s)
    finally:
        pool.close()


def _timeout(provider: ProviderConfig, waiting_for: str,
             stage: TimeoutStage = "upstream") -> UpstreamTimeout:
    return UpstreamTimeout(f"Provider {provider.id} timed out waiting for {waiting_for}",
                           stage=stage, metadata={"provider_name": provider.id})


def _first_byte_timeout(provider: ProviderConfig, phase: http1.TimeoutPhase) -> UpstreamTimeout:
    """first_byte_s (or connect_s) passed before the answer's headers: while waiting for a
    free connection of our pool (not the provider's fault), while connecting, or after the
    request went out."""
    if phase == "connect":
        return _timeout(provider, "a connection")
    if phase == "pool":
        return _timeout(provider, f"a free connection (all {provider.max_connections} of "
                        "its pool in use)", "pool")
    return _timeout(provider, "the first byte", "answer")


_REASONS: dict[type[http1.HttpError], str] = {
    http1.ConnectFailed: "connection failed",
    http1.Disconnected: "connection closed early",
    http1.InvalidResponse: "invalid response",
    http1.InvalidHeader: "a request header holds a line break",
}


def _broken(provider: ProviderConfig, exc: http1.HttpError) -> UpstreamError:
    reason = _REASONS.get(type(exc), type(exc).__name__)
    # The exception text may contain the upstream address but never a key; still, keep
    # it out.
    return UpstreamError(f"Provider {provider.id}: {reason}",
                         metadata={"provider_name": provider.id})
