"""What the Redis state backend costs per request: the proxy's own quota calls
for one request — admit (limits), reserve (credits), then settle tokens, release the slot
and settle the cost — N times against `MemoryQuota` and against `RedisQuota` on a
loopback redis-server, in µs per request.

    .venv/bin/python bench/redis_cost.py [-n 20000] [--concurrency 1 32] [--url redis://...]

Without --url it starts a throwaway redis-server (tests/redis_server.py) on a free
loopback port. Each row reports:

    wall µs/req      total time / N, settlements included (the Redis run waits at the end
                     until the background queue has reached Redis)
    p50 / p99 µs     time a request waits before going upstream (admit + reserve)
    CPU µs/req       this process's CPU (user + system) / N: what a replica spends

The key has every limit (rpm, tpm, concurrency, one model_limits entry) and credits, so
the admission touches two scopes: the worst ordinary case. Nothing here is HTTP: the
proxy's own cost per request is measured by bench/run.py.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import platform
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from anyrouter_proxy.config.model import (
    Config,
    KeyConfig,
    Limits,
    ServerConfig,
    StateConfig,
    StorageConfig,
)
from anyrouter_proxy.limits.credits import CreditLedger
from anyrouter_proxy.limits.quota import MemoryQuota, Quota
from anyrouter_proxy.limits.ratelimit import Limiter
from anyrouter_proxy.limits.redis_quota import RedisQuota
from bench.serve_process import free_port

MODEL = "openai/gpt-4o-mini"
BIG = 10**9


def make_config(url: str | None) -> tuple[Config, KeyConfig]:
    key = KeyConfig(name="bench", key_sha256="0" * 64,
                    limits=Limits(requests_per_minute=BIG, tokens_per_minute=BIG * 1000,
                                  concurrent_requests=BIG),
                    credits=50_000.0,
                    model_limits={"openai/*": Limits(requests_per_minute=BIG)})
    state = StateConfig(backend="redis" if url else "memory", url=url,
                        key_prefix=f"bench{os.getpid()}-{time.monotonic_ns()}:")
    config = Config(path=None, server=ServerConfig(), storage=StorageConfig(), providers={},
                    models={}, keys={key.name: key}, state=state)
    return config, key


def cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one_request(quota: Quota, key: KeyConfig, waits: list[float]) -> None:
    started = time.perf_counter()
    held = await quota.admit(key, MODEL, 600)
    reserved = await quota.reserve(key, 0.0004)
    waits.append(time.perf_counter() - started)
    reserved.settle(0.0002)
    held.settle_tokens(450)
    held.release()


async def run(backend: str, url: str | None, n: int, concurrency: int) -> dict[str, float]:
    config, key = make_config(url if backend == "redis" else None)
    local = MemoryQuota(Limiter(config), CreditLedger())
    quota: Quota = RedisQuota(config, local) if backend == "redis" else local
    waits: list[float] = []
    for _ in range(200):  # warm-up: connections, scripts, caches
        await one_request(quota, key, [])
    if isinstance(quota, RedisQuota):
        await quota.flush()

    async def worker(count: int) -> None:
        for _ in range(count):
            await one_request(quota, key, waits)

    cpu, started = cpu_s(), time.perf_counter()
    await asyncio.gather(*(worker(n // concurrency) for _ in range(concurrency)))
    if isinstance(quota, RedisQuota):
        await quota.flush()
    wall, cpu = time.perf_counter() - started, cpu_s() - cpu
    done = len(waits)
    if isinstance(quota, RedisQuota):
        assert quota.errors == 0 and not quota.fallbacks, "Redis failed during the run"
        spent = await quota.spent(key.name)
        assert abs(spent - 0.0002 * (done + 200)) < 1e-6, spent
    await quota.close()
    waits.sort()
    return {"wall_us": wall / done * 1e6, "p50_us": statistics.median(waits) * 1e6,
            "p99_us": waits[int(len(waits) * 0.99)] * 1e6, "cpu_us": cpu / done * 1e6}


@contextlib.contextmanager
def redis_url(given: str | None) -> Iterator[str]:
    if given:
        yield given
        return
    # A throwaway redis-server on a free port, no persistence, killed at the end.
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="anyrouter-redis-") as root:
        process = subprocess.Popen(
            [shutil.which("redis-server") or "/usr/bin/redis-server", "--port", str(port),
             "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", root],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while not _pong(port):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("redis-server did not start (is it installed?)")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.kill()
            process.wait()


def _pong(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=20_000, help="requests per row")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--url", help="an existing Redis (default: start one)")
    parser.add_argument("--no-uvloop", action="store_true")
    args = parser.parse_args()
    loop_name = "asyncio"
    if not args.no_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            uvloop.install()
            loop_name = "uvloop"
    with redis_url(args.url) as url:
        print(f"# quota cost per request: admit + reserve + settle, n={args.n}, "
              f"{loop_name}, Python {platform.python_version()}, {os.cpu_count()} CPUs, "
              f"Redis at {url}")
        print("| backend | concurrency | wall µs/req | p50 µs | p99 µs | CPU µs/req |")
        print("|---|---|---|---|---|---|")
        for concurrency in args.concurrency:
            rows = {b: asyncio.run(run(b, url, args.n, concurrency))
                    for b in ("memory", "redis")}
            for backend, row in rows.items():
                print(f"| {backend} | {concurrency} | {row['wall_us']:.1f} | "
                      f"{row['p50_us']:.1f} | {row['p99_us']:.1f} | {row['cpu_us']:.1f} |")
            extra = rows["redis"]["wall_us"] - rows["memory"]["wall_us"]
            print(f"| redis - memory | {concurrency} | {extra:+.1f} | "
                  f"{rows['redis']['p50_us'] - rows['memory']['p50_us']:+.1f} | | "
                  f"{rows['redis']['cpu_us'] - rows['memory']['cpu_us']:+.1f} |")


if __name__ == "__main__":
    main()
