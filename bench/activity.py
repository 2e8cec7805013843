"""How fast GET /activity's query answers on a big usage log.

    .venv/bin/python bench/activity.py                 # SQLite, 1,000,000 rows
    .venv/bin/python bench/activity.py --dsn postgresql://user@127.0.0.1/db
    .venv/bin/python bench/activity.py --rows 200000 --days 90

Generates `--rows` usage rows, in time order, spread evenly over the last `--days` days
(20 keys, 12 models, 4 providers, 3% errors) through the store's own schema, so the
triggers fill the daily roll-up as they do in production, then times the 30-day
/activity query with its JSON body (all keys, and one key), the dashboard's 30-day and
24-hour charts and its Generations and Keys queries, on the store's report connection.
Prints a Markdown table (median of `--repeat` runs).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from anyrouter_proxy.storage.activity import (
    DAY_S,
    HOUR_S,
    Filters,
    activity_rows,
    daily_series_sql,
    daily_sql,
    hourly_sql,
)
from anyrouter_proxy.storage.browse import LAST_USE_SQL, Page, page_sql
from anyrouter_proxy.storage.sqlite import SqliteStore
from anyrouter_proxy.storage.store import GENERATION_COLUMNS
from anyrouter_proxy.storage.store import INSERT_GENERATION as _INSERT_GENERATION

KEYS = [f"key-{i:02d}" for i in range(20)]
MODELS = [f"vendor{i % 4}/model-{i}" for i in range(12)]
PROVIDERS = ["openai", "anthropic", "azure", "groq"]
CHUNK = 5000


def make_row(n: int, at: float, rng: random.Random) -> tuple[Any, ...]:
    error = rng.random() < 0.03
    values = {
        "id": f"gen-bench-{n:09d}", "created_at": at,
        "key_name": rng.choice(KEYS), "trace_id": None, "endpoint": "chat",
        "model": rng.choice(MODELS), "provider": rng.choice(PROVIDERS),
        "upstream_model": "m", "upstream_id": None, "streamed": 1, "cancelled": 0,
        "finish_reason": "stop", "status_code": 502 if error else 200,
        "error_code": "upstream_error" if error else None,
        "tokens_prompt": rng.randint(10, 4000), "tokens_completion": rng.randint(1, 1000),
        "tokens_cached": rng.randint(0, 100), "tokens_reasoning": rng.randint(0, 100),
        "tokens_cache_write": 0, "usage_source": "provider", "cost": rng.random() / 100,
        "latency_ms": rng.uniform(100, 3000), "ttft_ms": 80.0, "generation_time_ms": 500.0,
        "attempts": '[{"provider":"openai","status":200,"latency_ms":90.0}]',
        "operator_cost": 0.0,
    }
    return tuple(values[c] for c in GENERATION_COLUMNS)


async def fill(store: SqliteStore, rows: int, days: int) -> float:
    rng = random.Random(42)
    first = time.time() - days * DAY_S
    step = days * DAY_S / rows  # in time order, as traffic arrives
    started = time.perf_counter()
    for start in range(0, rows, CHUNK):
        for n in range(start, min(rows, start + CHUNK)):
            store.enqueue(_INSERT_GENERATION, make_row(n, first + n * step, rng),
                          bounded=False)
        await store.flush()
    return time.perf_counter() - started


async def timed(run: Callable[[], Awaitable[list[Any]]], repeat: int) -> tuple[float, int]:
    times = []
    count = 0
    for _ in range(repeat):
        started = time.perf_counter()
        count = len(await run())
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), count


async def measure(store: SqliteStore, repeat: int) -> list[tuple[str, float, int]]:
    today = int(time.time() // DAY_S)
    now = time.time()
    queries = {
        "/activity, 30 days, all keys": daily_sql(today - 29, today + 1),
        "/activity, 30 days, one key": daily_sql(today - 29, today + 1, Filters(key=KEYS[0])),
        "dashboard chart, 30 days by model": daily_series_sql(today - 29, today + 1, "model"),
        "dashboard chart, 24 h by hour": hourly_sql(now - DAY_S, now + HOUR_S, "model"),
        "dashboard generations, newest 50": page_sql(Page()),
        "dashboard generations, one key's newest 50": page_sql(Page(Filters(key=KEYS[0]))),
        "dashboard keys, one key's last use": (LAST_USE_SQL, (KEYS[0],)),
    }
    out = []
    for name, (sql, params) in queries.items():
        run = _answer(store, sql, params) if name.startswith("/activity") \
            else _query(store, sql, params)
        await run()  # warm the cache once
        ms, count = await timed(run, repeat)
        out.append((name, ms, count))
    return out


def _query(store: SqliteStore, sql: str, params: tuple[Any, ...]
           ) -> Callable[[], Awaitable[list[Any]]]:
    async def run() -> list[Any]:
        return await store.report(sql, params)
    return run


def _answer(store: SqliteStore, sql: str, params: tuple[Any, ...]
            ) -> Callable[[], Awaitable[list[Any]]]:
    """The query and the JSON body GET /activity makes of it."""
    async def run() -> list[Any]:
        rows = activity_rows(await store.report(sql, params))
        orjson.dumps({"data": rows})
        return rows
    return run


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--days", type=int, default=30, help="rows spread over this many days")
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--dsn", help="PostgreSQL (an empty database); default: SQLite")
    parser.add_argument("--db", help="SQLite file (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        store: SqliteStore
        if args.dsn:
            from anyrouter_proxy.storage.postgres import PostgresStore

            store = PostgresStore(args.dsn, batch_max=5000, queue_max=10**7)
        else:
            path = Path(args.db) if args.db else Path(tmp) / "bench.db"
            store = SqliteStore(path, batch_max=5000, queue_max=10**7)
        await store.open()
        try:
            filled = await fill(store, args.rows, args.days)
            results = await measure(store, args.repeat)
        finally:
            await store.close()
    backend = "PostgreSQL" if args.dsn else "SQLite"
    load = ", ".join(f"{n:.1f}" for n in os.getloadavg())
    print(f"{backend}: {args.rows:,} rows over {args.days} days, written in {filled:.1f} s "
          f"({filled / args.rows * 1e6:.1f} us/row, roll-up triggers included); "
          f"load average {load} on {os.cpu_count()} cores\n")
    print("| query | median ms | rows |\n|---|---:|---:|")
    for name, ms, count in results:
        print(f"| {name} | {ms:.1f} | {count} |")


if __name__ == "__main__":
    asyncio.run(main())
