"""The dashboard's session over plain HTTP: sign-in with CSRF protection, cookie flags
behind a trusted proxy (https, path prefix), sessions that end with their key, the
signing secret shared through the usage database, and the pages' security headers."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, BOB_KEY, ConfigFactory, Proxy, sha256

StartProxy = Callable[[Config], Awaitable[Proxy]]
CSRF = re.compile(r'name="csrf" value="([^"]+)"')
KEYS = {"alice": {"key_sha256": sha256(ALICE_KEY)}, "bob": {"key_sha256": sha256(BOB_KEY)}}


def jar() -> aiohttp.CookieJar:
    return aiohttp.CookieJar(unsafe=True)  # cookies of 127.0.0.1


async def sign_in(session: aiohttp.ClientSession, proxy: Proxy, key: str,
                  headers: dict[str, str] | None = None) -> aiohttp.ClientResponse:
    async with session.get(proxy.url("/dashboard/login"), headers=headers) as form:
        match = CSRF.search(await form.text())
        assert match is not None
        # Sent by hand: the jar keeps a Secure or prefixed cookie from plain /dashboard.
        login = form.cookies["anyrouter_login"].value
    async with session.post(proxy.url("/dashboard/login"), allow_redirects=False,
                            data={"api_key": key, "csrf": match[1]},
                            headers={**(headers or {}), "Cookie": f"anyrouter_login={login}"}
                            ) as response:
        await response.read()
        return response


async def status_of(session: aiohttp.ClientSession, proxy: Proxy, path: str) -> tuple[int, str]:
    async with session.get(proxy.url(path), allow_redirects=False) as response:
        return response.status, response.headers.get("Location", "")


@pytest.fixture
async def proxy(config_factory: ConfigFactory, start_proxy: StartProxy) -> Proxy:
    return await start_proxy(config_factory(keys=KEYS))


async def test_sign_in_then_pages_then_sign_out(proxy: Proxy) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        assert await status_of(session, proxy, "/") == (302, "/dashboard")
        assert await status_of(session, proxy, "/dashboard") == (303, "/dashboard/login")
        response = await sign_in(session, proxy, ALICE_KEY)
        assert (response.status, response.headers["Location"]) == (303, "/dashboard")
        cookie = response.cookies["anyrouter_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and not cookie["secure"]
        assert cookie["path"] == "/dashboard" and int(cookie["max-age"]) == 12 * 3600
        assert ALICE_KEY not in cookie.value
        for path in ("/dashboard", "/dashboard/generations", "/dashboard/providers",
                     "/dashboard/keys", "/dashboard/config"):
            async with session.get(proxy.url(path)) as page:
                assert page.status == 200, path
                csp = page.headers["Content-Security-Policy"]
                assert "default-src 'self'" in csp and "unsafe-inline" not in csp
                assert "script-src 'self'" in csp and "style-src 'self'" in csp
                html = await page.text()
                assert "<script>" not in html and "style=" not in html and ALICE_KEY not in html
        async with session.get(proxy.url("/dashboard/api/chart"), params={"range": "7d"}) as r:
            assert r.status == 200 and len((await r.json())["labels"]) == 7
        async with session.get(proxy.url("/dashboard")) as page:
            token = CSRF.search(await page.text())
        assert token is not None
        async with session.post(proxy.url("/dashboard/logout"), data={"csrf": "forged"},
                                allow_redirects=False) as forged:
            assert forged.status == 403
        assert (await status_of(session, proxy, "/dashboard"))[0] == 200
        async with session.post(proxy.url("/dashboard/logout"), data={"csrf": token[1]},
                                allow_redirects=False) as out:
            assert (out.status, out.headers["Location"]) == (303, "/dashboard/login")
        assert await status_of(session, proxy, "/dashboard") == (303, "/dashboard/login")


async def test_sign_in_needs_the_forms_token_and_a_valid_key(proxy: Proxy) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        async with session.post(proxy.url("/dashboard/login"), allow_redirects=False,
                                data={"api_key": ALICE_KEY, "csrf": "made-up"}) as forged:
            assert forged.status == 403 and "anyrouter_session" not in forged.cookies
        response = await sign_in(session, proxy, "sk-ar-not-a-key")
        assert response.status == 401 and "anyrouter_session" not in response.cookies
        async with session.get(proxy.url("/dashboard/api/chart")) as chart:
            assert chart.status == 401
            assert (await chart.json())["error"]["code"] == "not_signed_in"


async def test_a_session_ends_when_its_key_is_disabled_removed_or_rekeyed(
        proxy: Proxy, config_factory: ConfigFactory) -> None:
    changes: list[dict[str, Any]] = [
        {"alice": {**KEYS["alice"], "disabled": True}, "bob": KEYS["bob"]},
        {"bob": KEYS["bob"]},
        {"alice": {"key_sha256": sha256("sk-ar-another-key-for-alice")}, "bob": KEYS["bob"]},
    ]
    for keys in changes:
        proxy.gateway.reconfigure(config_factory(keys=KEYS))
        async with aiohttp.ClientSession(cookie_jar=jar()) as session:
            assert (await sign_in(session, proxy, ALICE_KEY)).status == 303
            assert (await status_of(session, proxy, "/dashboard"))[0] == 200
            proxy.gateway.reconfigure(config_factory(keys=keys))
            assert await status_of(session, proxy, "/dashboard") == (303, "/dashboard/login")


async def test_a_tampered_cookie_is_no_session(proxy: Proxy) -> None:
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        cookie = (await sign_in(session, proxy, ALICE_KEY)).cookies["anyrouter_session"].value
        body, mac = cookie.split(".")
    forged = body[:2] + ("A" if body[2] != "A" else "B") + body[3:] + "." + mac
    for value, status in ((forged, 303), (cookie, 200)):
        async with aiohttp.ClientSession() as session, session.get(
                proxy.url("/dashboard"), allow_redirects=False,
                headers={"Cookie": f"anyrouter_session={value}"}) as response:
            assert response.status == status


async def test_https_and_prefix_believed_only_from_trusted_proxies(
        config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    forwarded = {"X-Forwarded-Proto": "https", "X-Forwarded-Prefix": "/anyrouter"}
    trusted = await start_proxy(config_factory(keys=KEYS,
                                               server={"trusted_proxies": ["127.0.0.1"]}))
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        response = await sign_in(session, trusted, ALICE_KEY, headers=forwarded)
        assert response.headers["Location"] == "/anyrouter/dashboard"
        cookie = response.cookies["anyrouter_session"]
        assert cookie["secure"] and cookie["path"] == "/anyrouter/dashboard"
    untrusted = await start_proxy(config_factory(keys=KEYS))
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        response = await sign_in(session, untrusted, ALICE_KEY, headers=forwarded)
        assert response.headers["Location"] == "/dashboard"
        cookie = response.cookies["anyrouter_session"]
        assert not cookie["secure"] and cookie["path"] == "/dashboard"


async def test_replicas_on_one_database_share_the_secret(
        config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    config = config_factory(keys=KEYS)
    first, second = await start_proxy(config), await start_proxy(config)
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        cookie = (await sign_in(session, first, BOB_KEY)).cookies["anyrouter_session"].value
    async with aiohttp.ClientSession() as session, session.get(
            second.url("/dashboard"), allow_redirects=False,
            headers={"Cookie": f"anyrouter_session={cookie}"}) as response:
        assert response.status == 200


async def test_a_configured_secret_signs_the_sessions(
        config_factory: ConfigFactory, start_proxy: StartProxy) -> None:
    secret = {"dashboard_secret": "s" * 40}
    one = await start_proxy(config_factory(keys=KEYS, server=secret))
    async with aiohttp.ClientSession(cookie_jar=jar()) as session:
        cookie = (await sign_in(session, one, BOB_KEY)).cookies["anyrouter_session"].value
    one.gateway.reconfigure(config_factory(keys=KEYS, server={"dashboard_secret": "t" * 40}))
    async with aiohttp.ClientSession() as session, session.get(
            one.url("/dashboard"), allow_redirects=False,
            headers={"Cookie": f"anyrouter_session={cookie}"}) as response:
        assert response.status == 303  # another secret: signed out


async def test_static_files_are_the_shipped_ones_only(proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(proxy.url("/dashboard/static/chart.umd.min.js")) as response:
            assert response.status == 200
            assert response.content_type == "text/javascript"
            assert (await response.text()).startswith("/*!\n * Chart.js v4")
        async with session.get(proxy.url("/dashboard/static/chart.js.LICENSE.md")) as response:
            assert response.status == 200 and "MIT" in await response.text()
        for name in ("..%2Fsession.py", "routes.py", "nope.js"):
            async with session.get(proxy.url(f"/dashboard/static/{name}")) as response:
                assert response.status == 404, name
