"""Signing in with an API key (a form POST: never in a URL), and signing out."""

from __future__ import annotations

from aiohttp import web

from ...errors import ProxyError
from ..client import client_address
from ..state import GATEWAY
from .session import (
    LOGIN_TTL_S,
    SESSION_TTL_S,
    csrf_ok,
    login_token_ok,
    new_login_token,
    new_session,
)
from .web import (
    LOGIN_COOKIE,
    SESSION_COOKIE,
    drop_cookie,
    page,
    prefix_of,
    redirect,
    secret_of,
    secured,
    set_cookie,
    signed_in,
)

MAX_FORM_BYTES = 4096


async def root(request: web.Request) -> web.Response:
    """GET / -> the dashboard."""
    return secured(web.Response(status=302,
                                headers={"Location": prefix_of(request) + "/dashboard"}))


async def login_form(request: web.Request, message: str | None = None,
                     status: int = 200) -> web.Response:
    if message is None and await signed_in(request) is not None:
        return redirect(request, "")
    token, cookie = new_login_token(await secret_of(request))
    response = page(request, "login.html", {"csrf": token, "message": message,
                                            "title": "Sign in"}, status=status)
    set_cookie(request, response, LOGIN_COOKIE, cookie, LOGIN_TTL_S)
    return response


async def login(request: web.Request) -> web.Response:
    secret = await secret_of(request)
    if request.content_length is not None and request.content_length > MAX_FORM_BYTES:
        return await login_form(request, "The form is too large.", 413)
    form = await request.post()
    token, api_key = form.get("csrf"), form.get("api_key")
    if not login_token_ok(secret, request.cookies.get(LOGIN_COOKIE),
                          token if isinstance(token, str) else None):
        return await login_form(request, "The form expired: please sign in again.", 403)
    gateway = request.app[GATEWAY]
    trusted = gateway.config.server.trusted_proxies
    try:
        key = gateway.authenticate(api_key if isinstance(api_key, str) else None, None,
                                   lambda: client_address(request, trusted))
    except ProxyError as exc:
        known = exc.code in ("key_disabled", "key_expired")  # the key was right, but...
        return await login_form(request, exc.message if known
                                else "That API key is not valid.", exc.status)
    cookie, _ = new_session(secret, key)
    response = redirect(request, "")
    set_cookie(request, response, SESSION_COOKIE, cookie, SESSION_TTL_S)
    drop_cookie(request, response, LOGIN_COOKIE)
    return response


async def logout(request: web.Request) -> web.Response:
    found = await signed_in(request)
    form = await request.post()
    token = form.get("csrf")
    if found is not None and not csrf_ok(found[1], token if isinstance(token, str) else None):
        return secured(web.Response(status=403, text="Invalid form token"))
    response = redirect(request, "/login")
    drop_cookie(request, response, SESSION_COOKIE)
    return response
