"""The proxy served the way `anyrouter-proxy serve` serves it (handler cancellation on, the
connection guard with the config's keep-alive and write timeouts), on 127.0.0.1, plus
raw-socket helpers for clients that misbehave below HTTP."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable
from typing import Any

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.app import create_app
from tests.conftest import Proxy, serve_connections


async def serve_like_cli(aiohttp_server: Any, config: Config) -> Proxy:
    app = create_app(config)
    server = await aiohttp_server(app)
    serve_connections(server, app)
    return Proxy(server, app, config)


async def raw_connect(port: int, receive_buffer: int | None = None) -> socket.socket:
    """A non-blocking TCP socket connected to 127.0.0.1:port; `receive_buffer` shrinks
    its receive buffer first (a client that stops reading then stalls the sender soon)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", port))
    return sock


async def read_until_closed(sock: socket.socket, within_s: float) -> bytes:
    """Everything the peer sends until it closes (EOF or reset); fails after within_s."""
    loop = asyncio.get_running_loop()
    received = b""

    async def read_all() -> None:
        nonlocal received
        while True:
            try:
                data = await loop.sock_recv(sock, 65536)
            except ConnectionResetError:
                return
            if not data:
                return
            received += data

    await asyncio.wait_for(read_all(), within_s)
    return received


async def eventually(condition: Callable[[], Any], within_s: float) -> float:
    """Seconds until `condition()` is true (it may be a coroutine function); fails if it
    is not within `within_s`."""
    started = time.monotonic()
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return time.monotonic() - started
        assert time.monotonic() - started < within_s, "condition not met in time"
        await asyncio.sleep(0.02)
