"""What every dashboard handler needs: where the dashboard lives (path prefix, https),
the signing secret, who is signed in, and pages with strict security headers."""

from __future__ import annotations

import asyncio
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

import aiohttp_jinja2
from aiohttp import web

from ...config.model import KeyConfig
from ...errors import AuthenticationFailed, ServiceUnavailable
from ..client import from_trusted_proxy
from ..state import GATEWAY, STORE
from .session import Session, open_session

SESSION_COOKIE = "anyrouter_session"
LOGIN_COOKIE = "anyrouter_login"
SECRET_SETTING = "dashboard_secret"
SECRET_WAIT_S = 5.0
_PREFIX = re.compile(r"^(/[A-Za-z0-9._~-]+)+$")
# No inline script or style anywhere: every page's script and style are static files.
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'self'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


@dataclass(slots=True)
class DashboardState:
    """The generated signing secret, read from the usage database once."""

    secret: str | None = None
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


DASHBOARD: web.AppKey[DashboardState] = web.AppKey("dashboard", DashboardState)


async def secret_of(request: web.Request) -> str:
    configured = request.app[GATEWAY].config.server.dashboard_secret
    if configured:
        return configured
    state = request.app[DASHBOARD]
    if state.secret is None:
        async with state.lock:
            if state.secret is None:
                try:
                    state.secret = await asyncio.wait_for(request.app[STORE].setting(
                        SECRET_SETTING, secrets.token_urlsafe(48)), SECRET_WAIT_S)
                except TimeoutError:
                    raise ServiceUnavailable("The usage database is not writable: the "
                                             "dashboard cannot sign sessions") from None
    return state.secret


def _trusted(request: web.Request) -> bool:
    return from_trusted_proxy(request, request.app[GATEWAY].config.server.trusted_proxies)


def prefix_of(request: web.Request) -> str:
    """The path prefix nginx serves the proxy under (X-Forwarded-Prefix, believed only
    from server.trusted_proxies), e.g. '/anyrouter'; '' at the root."""
    value = request.headers.get("X-Forwarded-Prefix", "").rstrip("/")
    if value and _trusted(request) and _PREFIX.match(value):
        return value
    return ""


def is_https(request: web.Request) -> bool:
    if request.secure:
        return True
    proto = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return proto == "https" and _trusted(request)


def base_of(request: web.Request) -> str:
    """The dashboard's own path as the browser sees it."""
    return prefix_of(request) + "/dashboard"


def set_cookie(request: web.Request, response: web.StreamResponse, name: str, value: str,
               max_age: int) -> None:
    response.set_cookie(name, value, max_age=max_age, path=base_of(request), httponly=True,
                        secure=is_https(request), samesite="Strict")


def drop_cookie(request: web.Request, response: web.StreamResponse, name: str) -> None:
    response.del_cookie(name, path=base_of(request), secure=is_https(request),
                        httponly=True, samesite="Strict")


async def signed_in(request: web.Request) -> tuple[KeyConfig, Session] | None:
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return None
    return open_session(await secret_of(request), cookie, request.app[GATEWAY].config.keys)


async def require_key(request: web.Request) -> tuple[KeyConfig, Session]:
    """The signed-in key of a JSON request (401 envelope without a session)."""
    found = await signed_in(request)
    if found is None:
        raise AuthenticationFailed("Sign in to the dashboard first", code="not_signed_in")
    return found


def redirect(request: web.Request, path: str) -> web.Response:
    """303 to a dashboard path (such as '/generations'), under the prefix."""
    response = web.Response(status=303, headers={"Location": base_of(request) + path})
    response.headers.update(SECURITY_HEADERS)
    return response


def page(request: web.Request, template: str, context: dict[str, Any],
         status: int = 200) -> web.Response:
    context.setdefault("base", base_of(request))
    response = aiohttp_jinja2.render_template(template, request, context, status=status)
    response.headers.update(SECURITY_HEADERS)
    return response


def secured(response: web.Response) -> web.Response:
    response.headers.update(SECURITY_HEADERS)
    return response
