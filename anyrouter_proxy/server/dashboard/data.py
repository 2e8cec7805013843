"""JSON for the dashboard's charts, read with the session cookie (same origin only)."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from ...errors import InvalidRequest
from ...storage.activity import (
    DAY_S,
    GROUP_COLUMNS,
    HOUR_S,
    Filters,
    daily_series_sql,
    day_date,
    day_number,
    hourly_sql,
    key_scope,
    parse_day,
    series,
    today,
)
from ..info_handlers import json_response, provider_statuses
from ..state import STORE
from .web import require_key, secured

RANGES = {"24h": (1, "hour"), "7d": (7, "day"), "30d": (30, "day")}
MAX_HOURLY_DAYS = 7
MAX_DAYS = 366
TREND_DAYS = 30


def window(query: Mapping[str, str], now: float | None = None) -> tuple[str, int, int]:
    """(bucket, first, end): hour or day numbers `first <= n < end` the chart shows."""
    current = now or time.time()
    chosen = query.get("range", "24h")
    if chosen == "custom":
        first_day = day_number(parse_day(query.get("since", ""), "since"))
        end_day = day_number(parse_day(query.get("until", ""), "until")) + 1
        if end_day <= first_day:
            raise InvalidRequest("'since' is after 'until'", param="since")
        days = end_day - first_day
        bucket = query.get("bucket", "day")
    elif chosen in RANGES:
        days, bucket = RANGES[chosen]
        bucket = query.get("bucket", bucket)
        end_day = int(current // DAY_S) + 1
        first_day = end_day - days
    else:
        raise InvalidRequest("'range' must be 24h, 7d, 30d or custom", param="range")
    if bucket not in ("hour", "day"):
        raise InvalidRequest("'bucket' must be hour or day", param="bucket")
    if days > MAX_DAYS or (bucket == "hour" and days > MAX_HOURLY_DAYS):
        raise InvalidRequest(f"At most {MAX_HOURLY_DAYS} days by the hour and {MAX_DAYS} by "
                             "the day", param="range")
    if bucket == "day":
        return bucket, first_day, end_day
    if chosen == "24h":
        end_hour = int(current // HOUR_S) + 1
        return bucket, end_hour - 24, end_hour
    return bucket, first_day * 24, end_day * 24


def _label(bucket: str, start: int) -> str:
    if bucket == "day":
        return day_date(start).isoformat()
    return dt.datetime.fromtimestamp(start * HOUR_S, dt.UTC).strftime("%m-%d %H:00")


async def chart(request: web.Request) -> web.Response:
    key, _ = await require_key(request)
    query = request.query
    group = query.get("group", "model")
    if group not in GROUP_COLUMNS:
        raise InvalidRequest("'group' must be model, provider or key", param="group")
    filters = Filters(key=key_scope(key.name, key.admin, query.get("key")))
    bucket, first, end = window(query)
    if bucket == "day":
        sql, params = daily_series_sql(first, end, group, filters)
    else:
        sql, params = hourly_sql(first * HOUR_S, end * HOUR_S, group, filters)
    starts = list(range(first, end))
    data = series(await request.app[STORE].report(sql, params), starts)
    return secured(json_response({"bucket": bucket, "group": group,
                                  "labels": [_label(bucket, s) for s in starts], **data}))


async def providers(request: web.Request) -> web.Response:
    await require_key(request)
    return secured(json_response({"data": list(provider_statuses(request).values())}))


async def key_trends(request: web.Request) -> web.Response:
    """Each visible key's spend per day over the last 30 days."""
    key, _ = await require_key(request)
    end = day_number(today()) + 1
    starts = list(range(end - TREND_DAYS, end))
    filters = Filters(key=None if key.admin else key.name)
    sql, params = daily_series_sql(starts[0], end, "key", filters)
    data: dict[str, Any] = series(await request.app[STORE].report(sql, params), starts)
    return secured(json_response({"labels": [_label("day", s) for s in starts],
                                  "spend": data["series"]["cost"]}))
