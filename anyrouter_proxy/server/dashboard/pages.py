"""The dashboard's pages, rendered on the server (Jinja2). Charts draw themselves from the
JSON endpoints in data.py; everything else is in the HTML."""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ...config.model import KeyConfig
from ...storage.activity import Filters
from ...storage.browse import (
    LAST_USE_SQL,
    STATUSES,
    Page,
    cursor_text,
    listed,
    page_sql,
    parse_cursor,
)
from ..info_handlers import provider_statuses
from ..state import GATEWAY, STORE
from .config_view import config_view
from .session import Session, expiry_text
from .web import page, redirect, signed_in

Context = dict[str, Any]
PageHandler = Callable[[web.Request, KeyConfig], Awaitable[Context]]
NAV = (("overview", "", "Overview"), ("generations", "/generations", "Generations"),
       ("providers", "/providers", "Providers"), ("keys", "/keys", "Keys"),
       ("config", "/config", "Config"))


def signed_page(name: str, template: str) -> Callable[[PageHandler],
                                                       Callable[[web.Request],
                                                                Awaitable[web.Response]]]:
    """A page for signed-in keys only (others go to the sign-in form)."""

    def wrap(handler: PageHandler) -> Callable[[web.Request], Awaitable[web.Response]]:
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.Response:
            found = await signed_in(request)
            if found is None:
                return redirect(request, "/login")
            key, session = found
            context = await handler(request, key)
            status = int(context.pop("status", 200))
            context.update(_frame(name, key, session))
            return page(request, context.pop("template", template), context, status)
        return run

    return wrap


def _frame(name: str, key: KeyConfig, session: Session) -> Context:
    return {"active": name, "nav": NAV, "key": key, "csrf": session.csrf,
            "session_ends": expiry_text(session.expires)}


@signed_page("overview", "overview.html")
async def overview(request: web.Request, key: KeyConfig) -> Context:
    keys = sorted(request.app[GATEWAY].config.keys) if key.admin else [key.name]
    return {"title": "Overview", "keys": keys}


@signed_page("generations", "generations.html")
async def generations(request: web.Request, key: KeyConfig) -> Context:
    query = request.query
    selected = _text(query, "key") if key.admin else key.name
    status = query.get("status") if query.get("status") in STATUSES else None
    since, until = _day(query, "since"), _day(query, "until")
    before = parse_cursor(query["before"]) if query.get("before") else None
    listing = Page(Filters(key=selected, model=_text(query, "model"),
                           provider=_text(query, "provider")), status=status,
                   since=_start(since), until=_start(until, 1), before=before)
    sql, params = page_sql(listing)
    rows = [listed(row) for row in await request.app[STORE].report(sql, params)]
    more = len(rows) > listing.size
    rows = rows[:listing.size]
    config = request.app[GATEWAY].config
    return {"title": "Generations", "rows": rows,
            "next": cursor_text(rows[-1]) if more and rows else None,
            "filters": {"key": selected or "", "model": query.get("model", ""),
                        "provider": query.get("provider", ""), "status": status or "",
                        "since": since.isoformat() if since else "",
                        "until": until.isoformat() if until else ""},
            "statuses": STATUSES, "keys": sorted(config.keys) if key.admin else [key.name],
            "models": sorted(config.models), "providers": sorted(config.providers)}


@signed_page("generations", "generation.html")
async def generation(request: web.Request, key: KeyConfig) -> Context:
    gen_id = request.match_info["gen_id"]
    row = await request.app[STORE].get_generation(gen_id, None if key.admin else key.name,
                                                  wait_s=0)
    if row is None:  # another key's generation does not exist, as on the API
        return {"title": "Not found", "template": "missing.html", "status": 404,
                "what": f"Generation {gen_id}"}
    return {"title": f"Generation {gen_id}", "gen": row}


@signed_page("providers", "providers.html")
async def providers(request: web.Request, key: KeyConfig) -> Context:
    return {"title": "Providers", "providers": list(provider_statuses(request).values())}


@signed_page("keys", "keys.html")
async def keys(request: web.Request, key: KeyConfig) -> Context:
    gateway = request.app[GATEWAY]
    shown = sorted(gateway.config.keys.values(), key=lambda k: k.name) if key.admin \
        else [key]
    cards = [await _key_card(request, k) for k in shown]
    return {"title": "Keys", "cards": cards}


async def _key_card(request: web.Request, key: KeyConfig) -> Context:
    quota = request.app[GATEWAY].quota
    budget = await quota.budget(key)
    rows = await request.app[STORE].report(LAST_USE_SQL, (key.name,))
    last = rows[0]["last"] if rows else None
    return {"name": key.name, "admin": key.admin, "disabled": key.disabled,
            "expires_at": key.expires_at.isoformat() if key.expires_at else None,
            "credits": key.credits, "spent": await quota.spent(key.name),
            "remaining": await quota.remaining(key),
            "budget": budget.as_json() if budget else None, "limits": key.limits,
            "models": ", ".join(key.models) if key.models is not None else "all",
            "last_used": dt.datetime.fromtimestamp(last, dt.UTC).strftime(
                "%Y-%m-%d %H:%M UTC") if last else "never"}


@signed_page("config", "config.html")
async def config(request: web.Request, key: KeyConfig) -> Context:
    return {"title": "Config", **config_view(request, admin=key.admin)}


def _text(query: Any, name: str) -> str | None:
    value = query.get(name, "").strip()
    return value[:200] or None


def _day(query: Any, name: str) -> dt.date | None:
    try:
        return dt.date.fromisoformat(query.get(name, ""))
    except ValueError:
        return None


def _start(day: dt.date | None, plus: int = 0) -> float | None:
    if day is None:
        return None
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() + plus * 86400

