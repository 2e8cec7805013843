"""Who the client is (behind trusted proxies only) and CORS for browsers."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from functools import lru_cache

from aiohttp import web

from ..config.model import CorsConfig

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@lru_cache(maxsize=8)
def _networks(entries: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(e, strict=False) for e in entries)


def _trusted(address: str | None, networks: Iterable[Network]) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def from_trusted_proxy(request: web.Request, trusted_proxies: tuple[str, ...]) -> bool:
    """Is the peer one of server.trusted_proxies (whose X-Forwarded-* are believed)?"""
    return bool(trusted_proxies) and _trusted(request.remote, _networks(trusted_proxies))


def client_address(request: web.Request, trusted_proxies: tuple[str, ...]) -> str | None:
    """The peer, or, when the peer is a trusted proxy, the nearest untrusted address in
    X-Forwarded-For (walking it right to left, so a client cannot forge it)."""
    peer = request.remote
    if not trusted_proxies:
        return peer
    networks = _networks(trusted_proxies)
    if not _trusted(peer, networks):
        return peer
    forwarded = request.headers.get("X-Forwarded-For", "")
    for hop in reversed([h.strip() for h in forwarded.split(",") if h.strip()]):
        try:
            address = str(ipaddress.ip_address(hop))
        except ValueError:
            return peer  # not an address: the chain is forged or broken, believe the peer
        if not _trusted(address, networks):
            return address
    return peer


def cors_headers(origin: str | None, cors: CorsConfig) -> dict[str, str]:
    if not origin or not cors.allow_origins:
        return {}
    if "*" in cors.allow_origins:
        allowed = "*"
    elif origin in cors.allow_origins:
        allowed = origin
    else:
        return {}
    return {"Access-Control-Allow-Origin": allowed,
            "Access-Control-Expose-Headers": "X-AnyRouter-Generation-Id, X-AnyRouter-Provider, "
            "X-AnyRouter-Trace-Id, X-RateLimit-Limit, X-RateLimit-Remaining, X-RateLimit-Reset, "
            "Retry-After",
            "Vary": "Origin"}


def preflight(request: web.Request, cors: CorsConfig) -> web.Response | None:
    """The answer to a CORS preflight, when CORS is on and the origin allowed."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    headers = cors_headers(request.headers.get("Origin"), cors)
    if not headers:
        return None
    headers.update({"Access-Control-Allow-Methods": "GET, POST, OPTIONS",
                    "Access-Control-Allow-Headers": ", ".join(cors.allow_headers),
                    "Access-Control-Max-Age": str(cors.max_age_s)})
    return web.Response(status=204, headers=headers)
