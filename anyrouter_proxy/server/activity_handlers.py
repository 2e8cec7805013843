"""GET /activity: the calling key's usage (every key's for an admin key) per UTC day,
model and provider."""

from __future__ import annotations

from aiohttp import web

from ..storage.activity import Filters, activity_rows, daily_sql, day_range, key_scope
from .inbound import authenticate
from .info_handlers import json_response
from .state import STORE


async def activity(request: web.Request) -> web.Response:
    key = authenticate(request)
    first, end = day_range(request.query)
    name = key_scope(key.name, key.admin, request.query.get("key"))
    sql, params = daily_sql(first, end, Filters(key=name))
    rows = await request.app[STORE].report(sql, params)
    return json_response({"data": activity_rows(rows)})
