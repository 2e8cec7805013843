"""Recent usage rows for the dashboard's Generations page: filters, newest first, paged by
a cursor (SQL written once for both storage backends, `?` placeholders)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from .activity import Filters, where_clauses

PAGE_SIZE = 50
STATUSES = ("ok", "error", "cancelled")
_STATUS_SQL = {
    "ok": "status_code < 400",
    "error": "status_code >= 400 AND cancelled = 0",
    "cancelled": "cancelled = 1",
}
LIST_COLUMNS = ("id", "created_at", "key_name", "model", "provider", "status_code",
                "error_code", "streamed", "cancelled", "tokens_prompt", "tokens_completion",
                "cost", "latency_ms", "usage_source")


@dataclass(frozen=True, slots=True)
class Page:
    """Which rows: the filters, a status, a time range and where the previous page ended
    (`before`: the created_at and id of its last row)."""

    filters: Filters = field(default_factory=Filters)
    status: str | None = None
    since: float | None = None
    until: float | None = None
    before: tuple[float, str] | None = None
    size: int = PAGE_SIZE


def page_sql(page: Page) -> tuple[str, tuple[Any, ...]]:
    """One page of rows, newest first, plus one more (there is a next page if it comes)."""
    clauses, params = where_clauses(page.filters, rollup=False)
    if page.status is not None:
        clauses.append(_STATUS_SQL[page.status])
    if page.since is not None:
        clauses.append("created_at >= ?")
        params.append(page.since)
    if page.until is not None:
        clauses.append("created_at < ?")
        params.append(page.until)
    if page.before is not None:
        clauses.append("(created_at < ? OR (created_at = ? AND id < ?))")
        params.extend((page.before[0], page.before[0], page.before[1]))
    where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
    sql = (f"SELECT {', '.join(LIST_COLUMNS)} FROM generations{where}"
           " ORDER BY created_at DESC, id DESC LIMIT ?")
    return sql, (*params, page.size + 1)


def cursor_text(row: dict[str, Any]) -> str:
    return f"{row['created_at']!r}~{row['id']}"


def parse_cursor(text: str) -> tuple[float, str] | None:
    at, _, gen_id = text.partition("~")
    try:
        return float(at), gen_id
    except ValueError:
        return None


def listed(row: Any) -> dict[str, Any]:
    """A row of the page, with its time as ISO 8601 UTC."""
    out = {name: row[name] for name in LIST_COLUMNS}
    out["created"] = dt.datetime.fromtimestamp(out["created_at"], dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")
    out["status"] = ("cancelled" if out["cancelled"]
                     else "error" if out["status_code"] >= 400 else "ok")
    return out


LAST_USE_SQL = "SELECT MAX(created_at) AS last FROM generations WHERE key_name = ?"
