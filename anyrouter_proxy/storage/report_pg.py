"""`anyrouter-proxy usage` over the PostgreSQL usage log (`storage.backend: postgres`).

The same SQL as report.build_report (report_sql in the PostgreSQL dialect), so the same
groups, ordering, time range and row shape; the session is read-only, so the report can
never write to or migrate the database the running replicas use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .postgres import redact_dsn, scrub
from .report import POSTGRES, report_bounds, report_row, report_sql


def build_report_pg(
    dsn: str, *, by: str = "model", since: float | None = None, until: float | None = None,
    timeout_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Totals per group over `since <= created_at < until`, the costliest first (days in order)."""
    sql = report_sql(by, POSTGRES)
    rows = asyncio.run(_fetch(dsn, sql, report_bounds(since, until), timeout_s))
    return [report_row(by, row) for row in rows]


async def _fetch(dsn: str, sql: str, params: tuple[float, float], timeout_s: float) -> list[Any]:
    try:
        conn = await asyncpg.connect(
            dsn, timeout=timeout_s, command_timeout=timeout_s,
            server_settings={"application_name": "anyrouter-proxy usage",
                             "default_transaction_read_only": "on"})
    except Exception as exc:  # refused, unknown host, auth, no such database, bad DSN
        raise ValueError(f"cannot connect to usage database {redact_dsn(dsn)}: "
                         f"{scrub(str(exc) or type(exc).__name__, dsn)} "
                         "(check storage.dsn)") from exc
    try:
        rows: list[Any] = await conn.fetch(sql, *params)
    except asyncpg.PostgresError as exc:  # e.g. no generations table: not a usage database
        raise ValueError(f"cannot read usage database {redact_dsn(dsn)}: {exc}") from exc
    finally:
        await conn.close()
    return rows
