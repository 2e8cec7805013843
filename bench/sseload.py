"""A small closed-loop HTTP/1.1 load generator for SSE (and, as a fallback, plain POSTs).

`concurrency` keep-alive connections each send the same POST again and again for
`duration` seconds; for every response it records the time to the first SSE `data:`
event (time to first token: SSE comment lines such as `: ANYROUTER PROCESSING` do not
count), the time to the end of the response, and whether the stream ended normally
(`[DONE]` or `message_stop`, no error event). A raw asyncio.Protocol on uvloop, so that
it costs little CPU next to the upstream on the load core. Prints one JSON object.

Streams that are not OpenAI/Anthropic SSE (a provider's native stream, read directly):
`--event-marker` counts events by another marker (e.g. `:event-type`, a header name in
every AWS event-stream frame) and `--end-marker` says what only the last event holds
(e.g. `finishReason`, `metadata`). The clients all start at once unless `--stagger`;
the open-files limit is raised to its hard limit, for hundreds of connections.

    python bench/sseload.py --url http://127.0.0.1:8080/api/v1/chat/completions \
        --body-file body.json --header "Authorization: Bearer sk-..." -c 16 -d 5
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import time
from typing import Any
from urllib.parse import urlsplit

END_MARKERS = (b"data: [DONE]", b"event: message_stop", b"event: response.completed")
OVERLAP = 24


class Result:
    __slots__ = ("ended", "error_event", "events", "status", "total", "ttfb", "ttft")

    def __init__(self) -> None:
        self.status = 0
        self.ttfb: float | None = None  # first body byte
        self.ttft: float | None = None  # first `data:` event
        self.total = 0.0
        self.events = 0
        self.ended = False
        self.error_event = False


class Markers:
    """What counts as an event, and what only the stream's last events hold."""

    __slots__ = ("end", "event")

    def __init__(self, event: bytes = b"data:", end: tuple[bytes, ...] = END_MARKERS) -> None:
        self.event = event
        self.end = end


class Client(asyncio.Protocol):
    """One keep-alive connection; `request()` returns a future of the Result."""

    def __init__(self, request: bytes, markers: Markers) -> None:
        self.request_bytes = request
        self.markers = markers
        self.transport: asyncio.Transport | None = None
        self.lost = asyncio.get_running_loop().create_future()
        self.fut: asyncio.Future[Result] | None = None
        self.raw = bytearray()
        self.res = Result()
        self.t0 = 0.0
        self.head_done = False
        self.chunked = False
        self.close_after = False
        self.left = 0  # content-length bytes left
        self.payload_left = 0
        self.crlf_left = 0
        self.last_chunk = False
        self.tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        if self.fut is not None and not self.fut.done():
            self.fut.set_exception(ConnectionError("connection lost"))
        if not self.lost.done():
            self.lost.set_result(None)

    def request(self) -> asyncio.Future[Result]:
        assert self.transport is not None
        self.fut = asyncio.get_running_loop().create_future()
        self.res = Result()
        self.raw.clear()
        self.head_done = self.chunked = self.close_after = self.last_chunk = False
        self.left = self.payload_left = self.crlf_left = 0
        self.tail = b""
        self.t0 = time.perf_counter()
        self.transport.write(self.request_bytes)
        return self.fut

    def data_received(self, data: bytes) -> None:
        now = time.perf_counter()
        if self.fut is None or self.fut.done():
            return  # nothing asked: ignore
        raw = self.raw
        raw += data
        if not self.head_done:
            end = raw.find(b"\r\n\r\n")
            if end < 0:
                return
            head = bytes(raw[:end]).lower()
            del raw[:end + 4]
            self.head_done = True
            try:
                self.res.status = int(head[9:12])
            except ValueError:
                self.res.status = 0
            self.close_after = b"\r\nconnection: close" in head
            self.chunked = b"\r\ntransfer-encoding: chunked" in head
            if not self.chunked:
                i = head.find(b"\r\ncontent-length:")
                if i < 0:
                    self.fut.set_exception(ConnectionError("no length"))
                    return
                j = head.find(b"\r\n", i + 2)
                self.left = int(head[i + 17: j if j >= 0 else len(head)])
                if self.left == 0:
                    self._finish(now)
                    return
        if self.chunked:
            self._dechunk(now)
        else:
            n = min(len(raw), self.left)
            self._body(bytes(raw[:n]), now)
            del raw[:n]
            self.left -= n
            if self.left == 0:
                self._finish(now)

    def _dechunk(self, now: float) -> None:
        raw = self.raw
        while raw:
            if self.payload_left:
                n = min(len(raw), self.payload_left)
                self._body(bytes(raw[:n]), now)
                del raw[:n]
                self.payload_left -= n
                continue
            if self.crlf_left:
                n = min(len(raw), self.crlf_left)
                del raw[:n]
                self.crlf_left -= n
                continue
            if self.last_chunk:
                if len(raw) >= 2:  # no trailers: "0\r\n" then "\r\n"
                    del raw[:2]
                    self._finish(now)
                return
            eol = raw.find(b"\r\n")
            if eol < 0:
                return
            size = int(bytes(raw[:eol]).split(b";", 1)[0], 16)
            del raw[:eol + 2]
            if size == 0:
                self.last_chunk = True
            else:
                self.payload_left, self.crlf_left = size, 2

    def _body(self, data: bytes, now: float) -> None:
        res = self.res
        if res.ttfb is None:
            res.ttfb = now - self.t0
        window = self.tail + data
        marker = self.markers.event
        new_events = window.count(marker) - self.tail.count(marker)
        if new_events:
            if res.ttft is None:
                res.ttft = now - self.t0
            res.events += new_events
            if not res.ended:
                res.ended = any(m in window for m in self.markers.end)
            if b'{"error"' in window or b"event: error" in window \
                    or b"event: response.failed" in window:
                res.error_event = True
        self.tail = window[-OVERLAP:]

    def _finish(self, now: float) -> None:
        self.res.total = now - self.t0
        assert self.fut is not None
        if not self.fut.done():
            self.fut.set_result(self.res)
        if self.close_after and self.transport is not None:
            self.transport.close()


def pct(values: list[float], p: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    k = max(0, min(len(values) - 1, round(p / 100 * len(values) + 0.5) - 1))
    return values[k]


def summary_ms(values: list[float]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for p in (50, 90, 99):
        v = pct(values, p)
        out[f"p{p}"] = None if v is None else round(v * 1000, 3)
    out["mean"] = round(sum(values) / len(values) * 1000, 3) if values else None
    return out


async def run(host: str, port: int, request: bytes, concurrency: int, duration: float,
              warmup: float, stream: bool, stagger: float = 0.0,
              markers: Markers | None = None) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    ok: list[Result] = []
    firsts: list[float] = []  # each client's first response: time to its first event
    errors: dict[str, int] = {}
    completed = 0  # every response, measured or not (what the server served)
    measuring = False
    t_start = 0.0
    marks = markers or Markers()

    def error(kind: str) -> None:
        if measuring:
            errors[kind] = errors.get(kind, 0) + 1

    async def worker(deadline: float, delay: float) -> None:
        nonlocal completed
        client: Client | None = None
        first = True
        await asyncio.sleep(delay)
        while time.perf_counter() < deadline:
            if client is None or client.transport is None or client.transport.is_closing():
                try:
                    _, client = await loop.create_connection(
                        lambda: Client(request, marks), host, port)
                except OSError:
                    error("connect")
                    await asyncio.sleep(0.05)
                    continue
            started_measuring = measuring
            try:
                res = await asyncio.wait_for(client.request(), 60)
            except (TimeoutError, ConnectionError) as exc:
                error("timeout" if isinstance(exc, asyncio.TimeoutError) else "read")
                if client.transport is not None:
                    client.transport.close()
                client = None
                continue
            completed += 1
            if first and res.ttft is not None:
                firsts.append(res.ttft)
            first = False
            if not (measuring and started_measuring):
                continue
            if res.status != 200:
                error(f"status_{res.status}")
            elif stream and (not res.ended or res.error_event):
                error("stream_error_event" if res.error_event else "stream_not_ended")
            else:
                ok.append(res)
        if client is not None and client.transport is not None:
            client.transport.close()

    end = time.perf_counter() + warmup + duration
    tasks = [asyncio.ensure_future(worker(end, stagger * i / concurrency))
             for i in range(concurrency)]
    if warmup:
        await asyncio.sleep(warmup)
    measuring = True
    t_start = time.perf_counter()
    await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - t_start
    n_err = sum(errors.values())
    events = [r.events for r in ok]
    return {
        "requests": len(ok), "completed": completed, "errors": n_err, "error_kinds": errors,
        "elapsed_s": round(elapsed, 3), "rps": round(len(ok) / elapsed, 1) if elapsed else 0,
        "latency_ms": summary_ms([r.total for r in ok]),
        "ttft_ms": summary_ms([r.ttft for r in ok if r.ttft is not None]),
        "ttfb_ms": summary_ms([r.ttfb for r in ok if r.ttfb is not None]),
        "first_ttft_ms": summary_ms(firsts),
        "events": sum(events),
        "events_per_response": {"min": min(events) if events else None,
                                "max": max(events) if events else None},
    }


def raise_fd_limit() -> None:
    """One socket per client, and the default soft limit is often 1024: up to the hard
    limit (or 65536 where that is unlimited)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def build_request(url: str, body: bytes, headers: list[str]) -> tuple[str, int, bytes]:
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = u.path + (("?" + u.query) if u.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}",
             "Content-Type: application/json", "Accept: text/event-stream",
             f"Content-Length: {len(body)}"]
    lines += headers
    return host, port, ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", required=True)
    ap.add_argument("--body-file", required=True)
    ap.add_argument("--header", action="append", default=[])
    ap.add_argument("-c", "--concurrency", type=int, default=16)
    ap.add_argument("-d", "--duration", type=float, default=5.0)
    ap.add_argument("--warmup", type=float, default=0.0)
    ap.add_argument("--stagger", type=float, default=0.0,
                    help="spread the clients' first requests over this many seconds")
    ap.add_argument("--plain", action="store_true", help="not a stream: no end marker check")
    ap.add_argument("--event-marker", default="data:", help="what each event holds once")
    ap.add_argument("--end-marker", action="append",
                    help="what only the stream's end holds (repeatable; default: [DONE], "
                         "message_stop or response.completed)")
    args = ap.parse_args()
    raise_fd_limit()
    markers = Markers(args.event_marker.encode(),
                      tuple(m.encode() for m in args.end_marker) if args.end_marker
                      else END_MARKERS)
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    with open(args.body_file, "rb") as f:
        body = f.read()
    host, port, request = build_request(args.url, body, args.header)
    out = asyncio.run(run(host, port, request, args.concurrency, args.duration, args.warmup,
                          not args.plain, args.stagger, markers))
    json.dump(out, sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
