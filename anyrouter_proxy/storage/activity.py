"""Usage grouped by UTC day (GET /activity, the dashboard): SQL written once for both
storage backends, and the shaping of its rows.

The usage log keeps a daily roll-up, `activity_daily`, one row per UTC day, key, model
and provider, maintained by triggers on `generations` in the same transaction as each
insert, replacement or deletion (retention), so a 30-day question reads a few thousand
rows however large the log is. Questions by the hour read `generations` itself through
its `created_at` index. The statements use `?` placeholders and only SQL that SQLite and
PostgreSQL read alike; the PostgreSQL store renumbers the placeholders.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidRequest, PermissionDenied

DAY_S = 86400
HOUR_S = 3600
EPOCH = dt.date(1970, 1, 1)
NO_PROVIDER = ""  # the roll-up's provider of requests refused before any route was tried

# The roll-up's measures: column -> what the trigger adds for one generation row (SQLite
# spelling of the row; the PostgreSQL migration spells errors with CASE).
MEASURES = ("requests", "errors", "cancelled", "tokens_prompt", "tokens_completion",
            "tokens_reasoning", "tokens_cached", "cost", "latency_ms")
_ADDED = ("1", "{row}.status_code >= 400", "{row}.cancelled", "{row}.tokens_prompt",
          "{row}.tokens_completion", "{row}.tokens_reasoning", "{row}.tokens_cached",
          "{row}.cost", "{row}.latency_ms")
_ADDED_PG = ("1", "CASE WHEN {row}.status_code >= 400 THEN 1 ELSE 0 END",
             *_ADDED[2:])
_ROLLUP_TABLE = """
    CREATE TABLE activity_daily (
        day INTEGER NOT NULL,  -- UTC days since 1970-01-01
        key_name TEXT NOT NULL, model TEXT NOT NULL,
        provider TEXT NOT NULL,  -- '' for requests refused before any route was tried
        requests BIGINT NOT NULL, errors BIGINT NOT NULL, cancelled BIGINT NOT NULL,
        tokens_prompt BIGINT NOT NULL, tokens_completion BIGINT NOT NULL,
        tokens_reasoning BIGINT NOT NULL, tokens_cached BIGINT NOT NULL,
        cost {real} NOT NULL, latency_ms {real} NOT NULL,
        PRIMARY KEY (day, key_name, model, provider)
    ){suffix};
"""
_GROUP_OF = "{day}, {row}key_name, {row}model, COALESCE({row}provider, '')"


def _sqlite_migration() -> str:
    day = "CAST({row}.created_at / 86400 AS INTEGER)"  # created_at >= 0: truncation floors
    new = [a.format(row="NEW") for a in _ADDED]
    old = [a.format(row="OLD") for a in _ADDED]
    sums = ", ".join(f"SUM({a.format(row='g')})" for a in _ADDED)
    return f"""
    {_ROLLUP_TABLE.format(real="REAL", suffix=" WITHOUT ROWID")}
    INSERT INTO activity_daily
        SELECT {_GROUP_OF.format(day=day.format(row="g"), row="g.")}, {sums}
        FROM generations AS g GROUP BY 1, 2, 3, 4;
    -- INSERT OR REPLACE of a generation recorded twice: the old row leaves the roll-up
    -- through the delete trigger before the new one enters it.
    CREATE TRIGGER generations_activity_replace BEFORE INSERT ON generations BEGIN
        DELETE FROM generations WHERE id = NEW.id;
    END;
    CREATE TRIGGER generations_activity_insert AFTER INSERT ON generations BEGIN
        INSERT INTO activity_daily VALUES (
            {_GROUP_OF.format(day=day.format(row="NEW"), row="NEW.")}, {", ".join(new)})
        ON CONFLICT (day, key_name, model, provider) DO UPDATE SET
            {", ".join(f"{m} = {m} + excluded.{m}" for m in MEASURES)};
    END;
    CREATE TRIGGER generations_activity_delete AFTER DELETE ON generations BEGIN
        UPDATE activity_daily SET
            {", ".join(f"{m} = {m} - ({o})" for m, o in zip(MEASURES, old, strict=True))}
        WHERE day = {day.format(row="OLD")} AND key_name = OLD.key_name
            AND model = OLD.model AND provider = COALESCE(OLD.provider, '');
    END;
    """


def _postgres_migration() -> str:
    day = "floor({row}.created_at / 86400)::integer"
    new = [a.format(row="NEW") for a in _ADDED_PG]
    old = [a.format(row="OLD") for a in _ADDED_PG]
    sums = ", ".join(f"SUM({a.format(row='g')})" for a in _ADDED_PG)
    return f"""
    {_ROLLUP_TABLE.format(real="DOUBLE PRECISION", suffix="")}
    INSERT INTO activity_daily
        SELECT {_GROUP_OF.format(day=day.format(row="g"), row="g.")}, {sums}
        FROM generations AS g GROUP BY 1, 2, 3, 4;
    -- An upsert of a generation recorded twice fires UPDATE: old row out, new row in.
    CREATE FUNCTION anyrouter_activity_daily() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            UPDATE activity_daily SET
                {", ".join(f"{m} = {m} - ({o})" for m, o in zip(MEASURES, old, strict=True))}
            WHERE day = {day.format(row="OLD")} AND key_name = OLD.key_name
                AND model = OLD.model AND provider = COALESCE(OLD.provider, '');
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            INSERT INTO activity_daily VALUES (
                {_GROUP_OF.format(day=day.format(row="NEW"), row="NEW.")}, {", ".join(new)})
            ON CONFLICT (day, key_name, model, provider) DO UPDATE SET
                {", ".join(f"{m} = activity_daily.{m} + EXCLUDED.{m}" for m in MEASURES)};
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER generations_activity AFTER INSERT OR UPDATE OR DELETE ON generations
        FOR EACH ROW EXECUTE FUNCTION anyrouter_activity_daily();
    """


SQLITE_MIGRATION = _sqlite_migration()
POSTGRES_MIGRATION = _postgres_migration()


# -- days ------------------------------------------------------------------------------

def day_number(day: dt.date) -> int:
    return (day - EPOCH).days


def day_date(number: int) -> dt.date:
    return EPOCH + dt.timedelta(days=int(number))


def today() -> dt.date:
    return dt.datetime.now(dt.UTC).date()


def floor_div(column: str, size: int) -> str:
    """`floor(column / size)` as an integer, in SQL that both backends read alike (a CAST
    truncates in SQLite and rounds in PostgreSQL; the CASE makes both floor)."""
    whole = f"CAST({column} / {size} AS INTEGER)"
    return f"({whole} - CASE WHEN {whole} > {column} / {size} THEN 1 ELSE 0 END)"


# -- GET /activity ---------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Filters:
    """Which usage to look at: key, model and provider (None: any)."""

    key: str | None = None
    model: str | None = None
    provider: str | None = None


def where_clauses(filters: Filters, *, rollup: bool) -> tuple[list[str], list[Any]]:
    """`column = ?` clauses and their values; no provider is '' in the roll-up, NULL in
    the usage rows."""
    clauses: list[str] = []
    params: list[Any] = []
    for column, value in (("key_name", filters.key), ("model", filters.model)):
        if value is not None:
            clauses.append(f"{column} = ?")
            params.append(value)
    if filters.provider is not None:
        if filters.provider == NO_PROVIDER and not rollup:
            clauses.append("provider IS NULL")
        else:
            clauses.append("provider = ?")
            params.append(filters.provider)
    return clauses, params


ACTIVITY_MEASURES = ("requests", "errors", "tokens_prompt", "tokens_completion",
                     "tokens_reasoning", "tokens_cached", "cost")


def daily_sql(first_day: int, end_day: int, filters: Filters = Filters()
              ) -> tuple[str, tuple[Any, ...]]:
    """The roll-up's rows of days `first_day <= day < end_day`, in its key's order (day,
    key, model, provider: the index's, so nothing is sorted)."""
    clauses, params = where_clauses(filters, rollup=True)
    where = "".join(f" AND {clause}" for clause in clauses)
    sql = (f"SELECT day, key_name, model, provider, {', '.join(ACTIVITY_MEASURES)}"
           f" FROM activity_daily WHERE day >= ? AND day < ? AND requests > 0{where}"
           " ORDER BY day, key_name, model, provider")
    return sql, (first_day, end_day, *params)


def activity_rows(rows: Iterable[Any]) -> list[dict[str, Any]]:
    """Roll-up rows (as `daily_sql` selects and orders them) in the /activity shape
    (OpenRouter's field names plus ours)."""
    dates: dict[int, str] = {}
    out = []
    for (day, key, model, provider, requests, errors, prompt, completion, reasoning, cached,
         cost) in rows:
        date = dates.get(day)
        if date is None:
            date = dates[day] = day_date(day).isoformat()
        out.append({"date": date, "model": model, "provider_name": provider or None,
                    "key_name": key, "requests": int(requests),
                    "prompt_tokens": int(prompt), "completion_tokens": int(completion),
                    "reasoning_tokens": int(reasoning), "cached_tokens": int(cached),
                    "usage": round(cost, 10), "errors": int(errors)})
    return out


# -- time series (the dashboard's charts) ----------------------------------------------

GROUP_COLUMNS = {"model": "model", "provider": "provider", "key": "key_name"}


def hourly_sql(since: float, until: float, group: str, filters: Filters = Filters()
               ) -> tuple[str, tuple[Any, ...]]:
    """Per hour and group over `since <= created_at < until`, from the usage rows."""
    column = GROUP_COLUMNS[group]
    clauses, params = where_clauses(filters, rollup=False)
    where = "".join(f" AND {clause}" for clause in clauses)
    sql = (f"SELECT {floor_div('created_at', HOUR_S)} AS bucket, {column} AS grp,"
           " COUNT(*) AS requests,"
           " SUM(CASE WHEN status_code >= 400 THEN 1 ELSE 0 END) AS errors,"
           " SUM(tokens_prompt + tokens_completion) AS tokens, SUM(cost) AS cost"
           f" FROM generations WHERE created_at >= ? AND created_at < ?{where}"
           " GROUP BY bucket, grp")
    return sql, (since, until, *params)


def daily_series_sql(first_day: int, end_day: int, group: str, filters: Filters = Filters()
                     ) -> tuple[str, tuple[Any, ...]]:
    """Per day and group, from the roll-up."""
    column = GROUP_COLUMNS[group]
    clauses, params = where_clauses(filters, rollup=True)
    where = "".join(f" AND {clause}" for clause in clauses)
    sql = (f"SELECT day AS bucket, {column} AS grp, SUM(requests) AS requests,"
           " SUM(errors) AS errors, SUM(tokens_prompt + tokens_completion) AS tokens,"
           " SUM(cost) AS cost FROM activity_daily"
           f" WHERE day >= ? AND day < ? AND requests > 0{where} GROUP BY day, {column}")
    return sql, (first_day, end_day, *params)


SERIES_MEASURES = ("requests", "tokens", "cost", "errors")


def series(rows: Iterable[Any], starts: Sequence[int]) -> dict[str, Any]:
    """Chart data: for each measure, one list per group aligned with `starts` (bucket
    numbers), and the totals."""
    index = {start: i for i, start in enumerate(starts)}
    data: dict[str, dict[str, list[float]]] = {m: {} for m in SERIES_MEASURES}
    totals = dict.fromkeys(SERIES_MEASURES, 0.0)
    for row in rows:
        at = index.get(int(row["bucket"]))
        if at is None:
            continue
        group = row["grp"] or "(none)"
        for measure in SERIES_MEASURES:
            value = float(row[measure] or 0)
            data[measure].setdefault(group, [0.0] * len(starts))[at] += value
            totals[measure] += value
    totals["cost"] = round(totals["cost"], 10)
    for values in data["cost"].values():
        values[:] = [round(v, 10) for v in values]
    return {"series": data, "totals": totals}


# -- the request's days and key ----------------------------------------------------------

DEFAULT_DAYS = 30


def parse_day(text: str, param: str) -> dt.date:
    try:
        if len(text) != 10:
            raise ValueError(text)
        return dt.date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(f"'{param}' must be a date such as 2025-01-31 (UTC)",
                             param=param) from None


def day_range(query: Mapping[str, str], now: dt.date | None = None) -> tuple[int, int]:
    """`[first, end)` day numbers of the query's `since` and `until` (dates, both
    included; `date` for one day), by default the last 30 days including today."""
    current = now or today()
    if "date" in query:
        since = until = parse_day(query["date"], "date")
    else:
        until = parse_day(query["until"], "until") if "until" in query else current
        since = parse_day(query["since"], "since") if "since" in query \
            else until - dt.timedelta(days=DEFAULT_DAYS - 1)
    if since > until:
        raise InvalidRequest("'since' is after 'until'", param="since")
    return day_number(since), day_number(until) + 1


def key_scope(caller: str, admin: bool, wanted: str | None) -> str | None:
    """Whose rows a caller may read: an admin key any key's (None: every key's), another
    key only its own; asking for another key's is 403 admin_required."""
    if admin:
        return wanted or None
    if wanted and wanted != caller:
        raise PermissionDenied(f"Only an admin key may read another key's activity "
                               f"(this is key {caller})", code="admin_required", param="key")
    return caller
