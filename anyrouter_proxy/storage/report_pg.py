"""`anyrouter-proxy usage` over the PostgreSQL usage log (`storage.backend: postgres`).

The same SQL text, groups, ordering, time range and row shape as
usage_report.build_report (whose formatter prints both); the session is read-only, so the
report can never write to or migrate the database the running replicas use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .activity import Filters
from .postgres import redact_dsn, scrub, to_postgres
from .report import fold_rows, parse_groups, report_sql


def build_report_pg(
    dsn: str, *, by: str = "model", since: float | None = None, until: float | None = None,
    filters: Filters | None = None, timeout_s: float = 10.0,
) -> list[dict[str, Any]]:
    """The same report as usage_report.build_report, from the same SQL text."""
    groups = parse_groups(by)
    sql, params = report_sql(groups, since, until, filters or Filters())
    rows = asyncio.run(_fetch(dsn, to_postgres(sql), params, timeout_s))
    return fold_rows(groups, rows)


async def _fetch(dsn: str, sql: str, params: tuple[Any, ...], timeout_s: float) -> list[Any]:
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
