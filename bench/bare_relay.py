"""The floor under the proxy's cost per relayed event: a bare TCP relay on uvloop that
passes each read from one socket to the other (no HTTP parsing, no SSE, no accounting),
rewriting only the request path to bench/upstream.py's paced stream. What it costs per
event under the same load is what any Python relay on this loop pays at least (one read,
one write, the loop's wake-ups).

    taskset -c 1 .venv/bin/python bench/upstream.py --port 9100 &
    taskset -c 0 .venv/bin/python bench/bare_relay.py 9200 9100 &
    taskset -c 1 .venv/bin/python bench/sseload.py -c 256 -d 12 --warmup 2 \\
        --url http://127.0.0.1:9200/api/v1/chat/completions --body-file BODY.json
    # meanwhile: perf stat -e task-clock -p <bare_relay's pid> -- sleep 8

(BODY.json: a chat request with "stream": true; each connection gets its own upstream
connection, as a keep-alive client's would.)
"""

from __future__ import annotations

import asyncio
import sys

import uvloop

PACED = b"POST /paced/100/20/v1/chat/completions"


class Upstream(asyncio.Protocol):
    def __init__(self, client: asyncio.Transport) -> None:
        self.client = client

    def data_received(self, data: bytes) -> None:
        self.client.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.client.close()


class Client(asyncio.Protocol):
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.upstream: asyncio.Transport | None = None
        self.pending: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.connecting = asyncio.ensure_future(self.connect())

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        upstream, _ = await loop.create_connection(
            lambda: Upstream(self.transport), "127.0.0.1", self.upstream_port)  # type: ignore[arg-type]
        self.upstream = upstream
        for data in self.pending:
            upstream.write(data)

    def data_received(self, data: bytes) -> None:
        data = data.replace(b"POST /api/v1/chat/completions", PACED)
        if self.upstream is None:
            self.pending.append(data)
        else:
            self.upstream.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.upstream is not None:
            self.upstream.close()


async def main(port: int, upstream_port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: Client(upstream_port), "127.0.0.1", port)
    await server.serve_forever()


if __name__ == "__main__":
    uvloop.run(main(int(sys.argv[1]), int(sys.argv[2])))
