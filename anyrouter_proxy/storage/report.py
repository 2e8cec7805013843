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
from decimal import Decimal
from pathlib import Path
from typing import Any

from .activity import DAY_S, Filters, day_date, floor_div, where_clauses

GROUPS = ("key", "model", "provider", "day", "month")
TIME_GROUPS = ("day", "month")
FORMATS = ("table", "csv", "json")

_GROUP_SQL = {
    "key": "key_name",
    "model": "model",
    "provider": "provider",
    "day": floor_div("created_at", DAY_S),  # months are folded from days in Python
}
_SUMS = (
    "tokens_prompt", "tokens_completion", "tokens_cached", "tokens_reasoning",
)
# Table column titles, in output order after the group columns.
_TABLE_COLUMNS = (
    ("requests", "requests"), ("errors", "errors"), ("cancelled", "cancelled"),
    ("tokens_prompt", "prompt"), ("tokens_completion", "completion"),
    ("tokens_cached", "cached"), ("tokens_reasoning", "reasoning"),
    ("cost", "cost_usd"), ("avg_latency_ms", "avg_ms"),
)


def parse_groups(by: str) -> tuple[str, ...]:
    """`key`, or two groups `key,model` (at most one of day and month)."""
    groups = tuple(part.strip() for part in by.split(","))
    if not groups or len(groups) > 2 or any(g not in GROUPS for g in groups):
        raise ValueError(f"cannot group by {by!r}: choose one of {', '.join(GROUPS)}, or "
                         "two of them separated by a comma (such as key,model)")
    if len(set(groups)) < len(groups) or sum(g in TIME_GROUPS for g in groups) > 1:
        raise ValueError(f"cannot group by {by!r}: two different groups, at most one of "
                         "day and month")
    return groups


def report_sql(groups: tuple[str, ...], since: float | None, until: float | None,
               filters: Filters) -> tuple[str, tuple[Any, ...]]:
    """The report's one SQL text, for SQLite and PostgreSQL alike (`?` placeholders):
    sums per group, and per day where a time group is asked for."""
    columns = [_GROUP_SQL["day" if g == "month" else g] + f" AS g{i}"
               for i, g in enumerate(groups)]
    clauses, params = where_clauses(filters, rollup=False)
    where = "".join(f" AND {clause}" for clause in clauses)
    sums = ", ".join(f"SUM({col}) AS {col}" for col in _SUMS)
    sql = (f"SELECT {', '.join(columns)}, COUNT(*) AS requests,"
           " SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END) AS errors,"
           f" SUM(cancelled) AS cancelled, {sums}, SUM(cost) AS cost,"
           " SUM(latency_ms) AS latency_ms"
           f" FROM generations WHERE created_at >= ? AND created_at < ?{where}"
           f" GROUP BY {', '.join(f'g{i}' for i in range(len(groups)))}")
    bounds = (-1e300 if since is None else since, 1e300 if until is None else until)
    return sql, (*bounds, *params)


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
    db_path: Path, *, by: str = "model", since: float | None = None,
    until: float | None = None, filters: Filters | None = None,
) -> list[dict[str, Any]]:
    """Totals per group over `since <= created_at < until`: days and months in order,
    then the costliest first."""
    groups = parse_groups(by)
    sql, params = report_sql(groups, since, until, filters or Filters())
    with closing(_open_read_only(Path(db_path))) as db:
        try:
            rows = db.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as exc:  # not a database, or no generations table
            raise ValueError(f"cannot read usage database {db_path}: {exc}") from exc
    return fold_rows(groups, rows)


def _group_value(group: str, value: Any) -> Any:
    if group in TIME_GROUPS:
        day = day_date(int(value)).isoformat()
        return day[:7] if group == "month" else day
    return value


def fold_rows(groups: tuple[str, ...], rows: Any) -> list[dict[str, Any]]:
    """The database's rows (per group, days for months) as report rows, in order."""
    totals: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        names = tuple(_group_value(g, row[f"g{i}"]) for i, g in enumerate(groups))
        out = totals.setdefault(names, {**dict(zip(groups, names, strict=True)),
                                        **dict.fromkeys(_MEASURES, 0)})
        for name in _MEASURES:
            out[name] += row[name] or 0
    report = [_finished(out) for out in totals.values()]
    report.sort(key=lambda r: _order(groups, r))
    return report


_MEASURES = ("requests", "errors", "cancelled", *_SUMS, "cost", "latency_ms")


def _finished(out: dict[str, Any]) -> dict[str, Any]:
    for name in ("requests", "errors", "cancelled", *_SUMS):
        out[name] = int(out[name])
    # Rounded so that float sums do not print as 0.30000000000000004.
    out["cost"] = round(float(out["cost"]), 10)
    latency = float(out.pop("latency_ms"))
    out["avg_latency_ms"] = round(latency / out["requests"], 1) if out["requests"] else 0.0
    return out


def _order(groups: tuple[str, ...], row: dict[str, Any]) -> tuple[Any, ...]:
    """Time groups first (in order), then the costliest, then names (none first)."""
    times = tuple(row[g] for g in groups if g in TIME_GROUPS)
    names = tuple((row[g] is not None, row[g] or "") for g in groups if g not in TIME_GROUPS)
    return (*times, -row["cost"], *names)


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
    groups = parse_groups(by)
    if fmt == "json":
        return _json_rows(rows)
    if fmt == "csv":
        buf = io.StringIO()
        fields = [*groups, *(name for name, _ in _TABLE_COLUMNS)]
        writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
        writer.writeheader()
        writer.writerows({**row, "cost": plain_decimal(row["cost"])} for row in rows)
        return buf.getvalue()
    if fmt == "table":
        return _format_table(rows, groups)
    raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")


def plain_decimal(value: float) -> str:
    """A number in plain decimal notation, never exponent form: 8.709e-05 -> 0.00008709."""
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0")
        text += "0" if text.endswith(".") else ""  # still a float: 2.0, not 2
    return text


def _json_rows(rows: list[dict[str, Any]]) -> str:
    """JSON like json.dumps(rows, indent=2), with floats in plain decimal notation."""
    if not rows:
        return "[]\n"

    def value(item: Any) -> str:
        return plain_decimal(item) if isinstance(item, float) else json.dumps(item)

    objects = ["  {\n" + ",\n".join(f"    {json.dumps(k)}: {value(v)}" for k, v in row.items())
               + "\n  }" for row in rows]
    return "[\n" + ",\n".join(objects) + "\n]\n"


def _format_table(rows: list[dict[str, Any]], groups: tuple[str, ...]) -> str:
    total = _total(rows, groups)
    lines = [[*groups, *(title for _, title in _TABLE_COLUMNS)]]
    for row in [*rows, total]:
        lines.append([*(_cell(g, row[g]) for g in groups),
                      *(_cell(name, row[name]) for name, _ in _TABLE_COLUMNS)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    out = []
    named = len(groups)
    for line in lines:
        # Names left-aligned, numbers right-aligned so that digits line up.
        cells = [cell.ljust(width) for cell, width in zip(line[:named], widths, strict=False)]
        cells += [cell.rjust(width)
                  for cell, width in zip(line[named:], widths[named:], strict=True)]
        out.append("  ".join(cells).rstrip())
    return "\n".join(out) + "\n"


def _total(rows: list[dict[str, Any]], groups: tuple[str, ...]) -> dict[str, Any]:
    total: dict[str, Any] = {group: "" for group in groups}
    total[groups[0]] = "TOTAL"
    for name in ("requests", "errors", "cancelled", *_SUMS, "cost"):
        total[name] = sum(row[name] for row in rows)
    # The overall average is weighted by each group's request count.
    weighted = sum(row["avg_latency_ms"] * row["requests"] for row in rows)
    total["avg_latency_ms"] = round(weighted / total["requests"], 1) if total["requests"] else 0.0
    return total


def _cell(name: str, value: Any) -> str:
    if value is None:
        return "-"  # e.g. requests rejected before any provider was chosen
    if value == "":
        return ""
    if name == "cost":
        return f"{value:.6f}"
    if name == "avg_latency_ms":
        return f"{value:.1f}"
    return str(value)
