"""The soak: many concurrent streaming clients through a real
`anyrouter-proxy serve` process for a while: zero errors, every request accounted for in
the usage log, RSS growth bounded, no file descriptor leaked, event-loop lag reported.

Three processes, so that the proxy is the one under load and the others are not its
bottleneck: the fast fake upstream (`python -m bench.soak_run upstream`), the proxy,
and the clients (tests/e2e/test_soak.py's event loop, or bench/soak.py's). A fourth, tiny one probes
GET /health every 100 ms over a keep-alive connection: its latency is the proxy's
event-loop lag as a client feels it.

CI runs a short form: SOAK_CLIENTS (default 200) clients for SOAK_SECONDS (default 15).
By hand, the full form (docs/performance.md):

    SOAK_CLIENTS=500 SOAK_SECONDS=60 .venv/bin/pytest tests/e2e/test_soak.py -s
    .venv/bin/python bench/soak.py --clients 500 --seconds 60     # the same, as a script

What is measured (printed as one JSON object, `SOAK {...}`):
  requests, rps, errors       completed streams (ended with [DONE], no error event)
  rows                        usage rows in SQLite after the proxy drained (== requests)
  rss_mb                      proxy VmRSS idle before load / after the warm-up fifth of
                              the run / at the end of the load / idle after it
  rss_growth_mb               end of load minus after warm-up (what a leak would grow)
  fds                         open descriptors of the proxy, idle before and idle after
  health_ms                   /health latency during the load: p50, p99, max
  proxy_cpu                   the proxy's CPU time / wall time (1.0 = one core); also
                              client_cpu and upstream_cpu, to tell who was the bottleneck
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import signal
import sqlite3
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from aiohttp import web

from bench.serve_process import ServeProcess, free_port, open_fds, proc_status_kb

ALICE_KEY = "sk-ar-soak-alice-0123456789abcdef0123456789"
PROVIDER_KEY = "sk-soak-provider-key"

MODEL = "soak/model"
CHUNKS = 5
RSS_GROWTH_LIMIT_MB = 48  # during the load, after the warm-up (CI form)
FD_SLACK = 4  # descriptors the proxy may hold beyond its idle count (timers, the db's WAL)
DEFAULT_CLIENTS = int(os.environ.get("SOAK_CLIENTS", "200"))
DEFAULT_SECONDS = float(os.environ.get("SOAK_SECONDS", "15"))


# -- the fast fake upstream (its own process) ---------------------------------------------------


def _stream_body() -> bytes:
    base = {"id": "chatcmpl-soak", "object": "chat.completion.chunk", "created": 1,
            "model": "upstream-model"}

    def event(choices: list[Any], usage: Any = None) -> bytes:
        data = {**base, "choices": choices, **({"usage": usage} if usage else {})}
        return b"data: " + json.dumps(data, separators=(",", ":")).encode() + b"\n\n"

    events = [event([{"index": 0, "delta": {"role": "assistant", "content": ""},
                      "finish_reason": None}])]
    events += [event([{"index": 0, "delta": {"content": f"tok{i} "}, "finish_reason": None}])
               for i in range(CHUNKS)]
    events.append(event([{"index": 0, "delta": {}, "finish_reason": "stop"}]))
    events.append(event([], {"prompt_tokens": 9, "completion_tokens": CHUNKS,
                             "total_tokens": 9 + CHUNKS}))
    events.append(b"data: [DONE]\n\n")
    return b"".join(events)


def upstream_app() -> web.Application:
    body = _stream_body()

    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=body, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    return app


def run_upstream(port: int) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    # A short keep-alive: idle pooled connections from the proxy are closed soon after
    # the load, so that the proxy's descriptor count can come back to its idle value.
    web.run_app(upstream_app(), host="127.0.0.1", port=port, access_log=None,
                keepalive_timeout=1.0, print=None, handle_signals=True)


# -- the /health probe (its own process) ---------------------------------------------------------


def run_probe(port: int, interval_s: float) -> None:
    """GET /health every interval_s until SIGTERM; prints the latencies (ms) as JSON."""
    import http.client

    stop = False

    def done(*_: Any) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, done)
    lat: list[float] = []
    failures = 0
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    while not stop:
        started = time.perf_counter()
        try:
            conn.request("GET", "/health")
            response = conn.getresponse()
            response.read()
            lat.append((time.perf_counter() - started) * 1000)
        except (OSError, http.client.HTTPException):
            failures += 1
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        time.sleep(max(0.0, interval_s - (time.perf_counter() - started)))
    print(json.dumps({"latencies_ms": lat, "failures": failures}), flush=True)


# -- the soak itself ------------------------------------------------------------------------------


def _config(workdir: Path, upstream_port: int, clients: int) -> Path:
    pool = max(256, clients)  # every client's stream in flight at once
    config = {
        "version": 1,
        "server": {"log_level": "warning", "shutdown_grace_s": 30},
        "storage": {"sqlite_path": str(workdir / "soak.db")},
        "providers": {"up": {"kind": "openai", "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                             "api_key": PROVIDER_KEY,
                             # One key is the whole load: its share is the whole pool.
                             "max_connections": pool, "per_key_connections": pool,
                             "timeouts": {"connect_s": 5, "first_byte_s": 30, "idle_s": 30,
                                          "total_s": 60}}},
        "models": {MODEL: {"pricing": {"prompt": 1, "completion": 2},
                           "routes": [{"provider": "up", "model": "upstream-model"}]}},
        "keys": {"alice": {"key_sha256": hashlib.sha256(ALICE_KEY.encode()).hexdigest(),
                           "limits": {"requests_per_minute": 100_000_000}}},
    }
    path = workdir / "soak.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _idle_fds(pid: int, settle_s: float) -> int:
    """The proxy's descriptor count once it has been idle for a while (the smallest seen
    over `settle_s`: pooled connections closing take a moment)."""
    deadline = time.monotonic() + settle_s
    seen = open_fds(pid)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.25)
        seen = min(seen, open_fds(pid))
    return seen


async def _spawn_module(*args: str, stdout: Any = asyncio.subprocess.DEVNULL
                        ) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.soak_run", *args, stdout=stdout,
        stderr=asyncio.subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1],
        env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _wait_port(port: int, within_s: float = 20) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on {port}"
            await asyncio.sleep(0.05)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def run_soak(clients: int, seconds: float, workdir: Path) -> dict[str, Any]:
    """Runs the whole soak; returns the measurements (see the module docstring)."""
    workdir.mkdir(parents=True, exist_ok=True)
    upstream_port = free_port()
    upstream = await _spawn_module("upstream", "--port", str(upstream_port))
    try:
        await _wait_port(upstream_port)
        async with ServeProcess.start(_config(workdir, upstream_port, clients)) as proxy:
            return await _load(proxy, clients, seconds, workdir, upstream.pid)
    finally:
        if upstream.returncode is None:
            upstream.terminate()
        await upstream.wait()


async def _load(proxy: ServeProcess, clients: int, seconds: float, workdir: Path,
                upstream_pid: int) -> dict[str, Any]:
    url = proxy.url("/api/v1/chat/completions")
    payload = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {ALICE_KEY}"}
    completed: list[str] = []
    errors: list[str] = []
    stop_at = 0.0

    async def one(session: aiohttp.ClientSession) -> None:
        async with session.post(url, json=payload, headers=headers) as response:
            body = await response.read()
            gen_id = response.headers.get("X-AnyRouter-Generation-Id", "")
            if response.status != 200:
                errors.append(f"HTTP {response.status}: {body[:200]!r}")
            elif not body.endswith(b"data: [DONE]\n\n") or b'"error"' in body:
                errors.append(f"stream without its end: {body[-200:]!r}")
            else:
                completed.append(gen_id)

    async def client(session: aiohttp.ClientSession) -> None:
        while time.monotonic() < stop_at:
            try:
                await one(session)
            except (TimeoutError, aiohttp.ClientError) as exc:
                errors.append(f"{type(exc).__name__}: {exc}")

    timeout = aiohttp.ClientTimeout(total=60)
    # Warm the proxy (imports, pools), then take the idle baselines.
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for _ in range(5):
            await one(session)
    warm_ids = list(completed)
    fds_before = await _idle_fds(proxy.pid, 2.5)
    rss_idle = proc_status_kb(proxy.pid)["VmRSS"]

    probe = await _spawn_module("probe", "--port", str(proxy.port), "--interval", "0.1",
                                stdout=asyncio.subprocess.PIPE)
    cpu0, up0, wall0 = _cpu_s(proxy.pid), _cpu_s(upstream_pid), time.monotonic()
    own0 = resource.getrusage(resource.RUSAGE_SELF)
    stop_at = wall0 + seconds
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.ensure_future(client(session)) for _ in range(clients)]
        await asyncio.sleep(seconds / 5)
        rss_warm = proc_status_kb(proxy.pid)["VmRSS"]
        requests_warm = len(completed)
        await asyncio.gather(*tasks)
        rss_end = proc_status_kb(proxy.pid)["VmRSS"]
    wall = time.monotonic() - wall0
    cpu = _cpu_s(proxy.pid) - cpu0
    upstream_cpu = _cpu_s(upstream_pid) - up0
    own1 = resource.getrusage(resource.RUSAGE_SELF)
    probe.send_signal(signal.SIGTERM)
    out, _ = await probe.communicate()
    probed = json.loads(out.decode() or "{}")
    latencies: list[float] = probed.get("latencies_ms", [])

    fds_after = await _idle_fds(proxy.pid, 3.0)
    rss_after = proc_status_kb(proxy.pid)["VmRSS"]
    async with aiohttp.ClientSession() as session, session.get(proxy.url("/health")) as response:
        usage_log = (await response.json())["usage_log"]
    code = await proxy.stop(signal.SIGTERM, 60)

    db = sqlite3.connect(workdir / "soak.db")
    try:
        rows = {r[0]: r[1] for r in db.execute("SELECT id, status_code FROM generations")}
    finally:
        db.close()
    ids = warm_ids + completed[len(warm_ids):]
    missing = [gen_id for gen_id in ids if rows.get(gen_id) != 200]
    load_requests = len(completed) - len(warm_ids)
    client_cpu = (own1.ru_utime + own1.ru_stime) - (own0.ru_utime + own0.ru_stime)
    return {
        "clients": clients, "seconds": seconds,
        "requests": load_requests, "rps": round(load_requests / wall, 1),
        "errors": len(errors), "error_samples": errors[:5],
        "requests_warm": requests_warm - len(warm_ids),
        "rows": len(rows), "rows_expected": len(ids), "rows_missing": len(missing),
        "exit_code": code, "usage_log_after": usage_log,
        "rss_mb": {"idle": round(rss_idle / 1024, 1), "warm": round(rss_warm / 1024, 1),
                   "end": round(rss_end / 1024, 1), "after": round(rss_after / 1024, 1)},
        "rss_growth_mb": round((rss_end - rss_warm) / 1024, 1),
        "fds": {"before": fds_before, "after": fds_after},
        "health_ms": {"samples": len(latencies), "failures": probed.get("failures"),
                      "p50": round(statistics.median(latencies), 1) if latencies else None,
                      "p99": round(_percentile(latencies, 0.99), 1),
                      "max": round(max(latencies, default=0.0), 1)},
        "proxy_cpu": round(cpu / wall, 2),
        "client_cpu": round(client_cpu / wall, 2),
        "upstream_cpu": round(upstream_cpu / wall, 2),
        "cores": os.cpu_count(),
    }


def check(result: dict[str, Any], *, rss_growth_limit_mb: float = RSS_GROWTH_LIMIT_MB) -> None:
    """The soak's pass criteria (shared by the test and bench/soak.py)."""
    assert result["errors"] == 0, result["error_samples"]
    assert result["requests"] > 0
    assert result["exit_code"] == 0
    assert result["rows_missing"] == 0 and result["rows"] == result["rows_expected"], result
    assert result["usage_log_after"]["dropped"] == 0, result["usage_log_after"]
    assert result["rss_growth_mb"] < rss_growth_limit_mb, result["rss_mb"]
    assert result["fds"]["after"] <= result["fds"]["before"] + FD_SLACK, result["fds"]
    assert result["health_ms"]["failures"] == 0 and result["health_ms"]["samples"] > 0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.soak_run")
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("upstream", help="serve the fast fake upstream")
    up.add_argument("--port", type=int, required=True)
    probe = sub.add_parser("probe", help="probe /health until SIGTERM")
    probe.add_argument("--port", type=int, required=True)
    probe.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args(argv)
    if args.command == "upstream":
        run_upstream(args.port)
    else:
        run_probe(args.port, args.interval)


if __name__ == "__main__":
    main()
