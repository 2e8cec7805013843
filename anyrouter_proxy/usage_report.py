"""`anyrouter-proxy usage`: totals from the usage log, grouped and formatted (docs/operations.md).

Synchronous and stdlib-only on purpose: it runs from the command line, possibly while the
server writes the same file, so it opens the database read-only and never migrates it.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
from contextlib import closing
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

GROUPS = ("key", "model", "provider", "day")
FORMATS = ("table", "csv", "json")

_GROUP_SQL = {
    "key": "key_name",
    "model": "model",
    "provider": "provider",
    "day": "strftime('%Y-%m-%d', created_at, 'unixepoch')",
}
_SUMS = (
    "tokens_prompt", "tokens_completion", "tokens_cached", "tokens_reasoning",
)
# Table column titles, in output order after the group column.
_TABLE_COLUMNS = (
    ("requests", "requests"), ("errors", "errors"), ("cancelled", "cancelled"),
    ("tokens_prompt", "prompt"), ("tokens_completion", "completion"),
    ("tokens_cached", "cached"), ("tokens_reasoning", "reasoning"),
    ("cost", "cost_usd"), ("avg_latency_ms", "avg_ms"),
)


def parse_time(text: str, *, end: bool = False) -> float:
    """An ISO date or date-time (UTC unless it has an offset) as Unix seconds.

    With `end=True` a bare date means the end of that day, so that
    `--since 2024-05-01 --until 2024-05-31` covers all of May.
    """
    value = text.strip()
    try:
        if len(value) == 10:  # YYYY-MM-DD; fromisoformat would read it as midnight anyway
            day = date.fromisoformat(value) + timedelta(days=1 if end else 0)
            moment = datetime(day.year, day.month, day.day, tzinfo=UTC)
        else:
            moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError(
            f"invalid time {text!r}: use an ISO date or date-time such as 2024-05-01, "
            "2024-05-01T12:00 or 2024-05-01T12:00:00+02:00 (UTC unless an offset is given)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def build_report(
    db_path: Path, *, by: str = "model", since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    """Totals per group over `since <= created_at < until`, the costliest first (days in order)."""
    if by not in GROUPS:
        raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUPS)}")
    sums = ", ".join(f"COALESCE(SUM({col}), 0) AS {col}" for col in _SUMS)
    order = "grp" if by == "day" else "cost DESC, grp"
    sql = (
        f"SELECT {_GROUP_SQL[by]} AS grp, COUNT(*) AS requests,"
        " COALESCE(SUM(status_code >= 400), 0) AS errors,"
        f" COALESCE(SUM(cancelled), 0) AS cancelled, {sums},"
        " COALESCE(SUM(cost), 0.0) AS cost, AVG(latency_ms) AS avg_latency_ms"
        " FROM generations WHERE created_at >= ? AND created_at < ?"
        f" GROUP BY grp ORDER BY {order}"
    )
    bounds = (-1e300 if since is None else since, 1e300 if until is None else until)
    with closing(_open_read_only(Path(db_path))) as db:
        try:
            rows = db.execute(sql, bounds).fetchall()
        except sqlite3.DatabaseError as exc:  # not a database, or no generations table
            raise ValueError(f"cannot read usage database {db_path}: {exc}") from exc
    return [_report_row(by, row) for row in rows]


def _report_row(by: str, row: sqlite3.Row) -> dict[str, Any]:
    out: dict[str, Any] = {by: row["grp"]}
    for name in ("requests", "errors", "cancelled", *_SUMS):
        out[name] = int(row[name])
    # Rounded so that float sums do not print as 0.30000000000000004 in JSON and CSV.
    out["cost"] = round(float(row["cost"]), 10)
    out["avg_latency_ms"] = round(float(row["avg_latency_ms"] or 0.0), 1)
    return out


def _open_read_only(db_path: Path) -> sqlite3.Connection:
    if not db_path.is_file():
        raise FileNotFoundError(
            f"usage database not found: {db_path} (check storage.sqlite_path or --db)")
    # mode=ro: never create, migrate or lock the file the running server writes to.
    uri = db_path.resolve().as_uri() + "?mode=ro"
    db = sqlite3.connect(uri, uri=True)
    db.row_factory = sqlite3.Row
    return db


def format_report(rows: list[dict[str, Any]], *, by: str, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(rows, indent=2) + "\n"
    if fmt == "csv":
        buf = io.StringIO()
        fields = [by, *(name for name, _ in _TABLE_COLUMNS)]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()
    if fmt == "table":
        return _format_table(rows, by)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def _format_table(rows: list[dict[str, Any]], by: str) -> str:
    total = _total(rows, by)
    lines = [[by, *(title for _, title in _TABLE_COLUMNS)]]
    for row in [*rows, total]:
        lines.append([_cell(by, row[by]), *(_cell(name, row[name]) for name, _ in _TABLE_COLUMNS)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    for line in lines:
        # Names left-aligned, numbers right-aligned so that digits line up.
        cells = [line[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _total(rows: list[dict[str, Any]], by: str) -> dict[str, Any]:
    total: dict[str, Any] = {by: "TOTAL"}
    for name in ("requests", "errors", "cancelled", *_SUMS, "cost"):
        total[name] = sum(row[name] for row in rows)
    # The overall average is weighted by each group's request count.
    weighted = sum(row["avg_latency_ms"] * row["requests"] for row in rows)
    total["avg_latency_ms"] = round(weighted / total["requests"], 1) if total["requests"] else 0.0
    return total


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"  # e.g. requests rejected before any provider was chosen
    if name == "cost":
        return f"{value:.6f}"
    if name == "avg_latency_ms":
        return f"{value:.1f}"
    return str(value)
