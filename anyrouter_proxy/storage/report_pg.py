"""`anyrouter-proxy usage` over the PostgreSQL usage log (`storage.backend: postgres`).

The same groups, ordering, time range and row shape as usage_report.build_report (whose
formatter prints both); the session is read-only, so the report can never write to or
migrate the database the running replicas use.
"""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from .postgres import redact_dsn, scrub
from .report import _SUMS, GROUPS, _report_row

_GROUP_SQL = {
    "key": "key_name",
    "model": "model",
    "provider": "provider",
    "day": "to_char(to_timestamp(created_at) AT TIME ZONE 'UTC', 'YYYY-MM-DD')",
}


def build_report_pg(
    dsn: str, *, by: str = "model", since: float | None = None, until: float | None = None,
    timeout_s: float = 10.0,
) -> list[dict[str, Any]]:
    """Totals per group over `since <= created_at < until`, the costliest first (days in order)."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUPS)}")
    sums = ", ".join(f"COALESCE(SUM({col}), 0) AS {col}" for col in _SUMS)
    # SQLite's order exactly: byte-wise text order and NULL (no provider) first.
    group_order = f'({_GROUP_SQL[by]}) COLLATE "C" ASC NULLS FIRST'
    order = group_order if by == "day" else f"cost DESC, {group_order}"
    sql = (
        f"SELECT {_GROUP_SQL[by]} AS grp, COUNT(*) AS requests,"
        " COUNT(*) FILTER (WHERE status_code >= 400) AS errors,"
        f" COALESCE(SUM(cancelled), 0) AS cancelled, {sums},"
        " COALESCE(SUM(cost), 0.0) AS cost, AVG(latency_ms) AS avg_latency_ms"
        " FROM generations WHERE created_at >= $1 AND created_at < $2"
        f" GROUP BY grp ORDER BY {order}"
    )
    bounds = (-1e300 if since is None else since, 1e300 if until is None else until)
    rows = asyncio.run(_fetch(dsn, sql, bounds, timeout_s))
    return [_report_row(by, row) for row in rows]


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
