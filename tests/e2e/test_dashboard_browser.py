"""The dashboard in a real browser (Debian's chromium, Playwright): signing in, every
page drawing from the usage log, one key unable to see another's rows, the session
cookie's flags, no console error and no request leaving the page's origin."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from playwright.async_api import Browser, BrowserContext, Page

from anyrouter_proxy.config.model import Config
from tests.browser import Watch, ink, launched, screenshot, series_ink, watched
from tests.conftest import (
    ALICE_KEY,
    BOB_KEY,
    PROVIDER_KEY,
    ConfigFactory,
    Proxy,
    auth,
    openai_provider,
    sha256,
)
from tests.fakes import FakeOpenAI
from tests.nginx_server import running_nginx, wait_listening
from tests.usage_backends import pg_cluster, storage  # noqa: F401  (fixtures)

ROOT_KEY = "sk-ar-test-root-0123456789abcdef0123456789ab"
MODEL = "openai/gpt-4o-mini"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
StartProxy = Callable[[Config], Awaitable[Proxy]]


def dashboard_config(config_factory: ConfigFactory, fake: FakeOpenAI, **sections: Any
                     ) -> Config:
    return config_factory(
        providers={"openai": openai_provider(fake, headers={"X-Secret-Header": "hush-123"})},
        models={MODEL: {"pricing": {"prompt": 1.0, "completion": 2.0},
                        "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10},
              "bob": {"key_sha256": sha256(BOB_KEY)},
              "root": {"key_sha256": sha256(ROOT_KEY), "admin": True}},
        **sections)


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async for launched_browser in launched():
        yield launched_browser


async def chats(base: str, key: str, count: int) -> list[str]:
    """`count` chat completions as `key`; their generation ids."""
    ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.post(f"{base}/api/v1/chat/completions", json=CHAT,
                                    headers=auth(key)) as response:
                assert response.status == 200, await response.text()
                ids.append(response.headers["X-AnyRouter-Generation-Id"])
    return ids


async def sign_in(page: Page, url: str, key: str) -> None:
    await page.goto(url)
    await page.get_by_label("API key").fill(key)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_selector("#signed-in-key")


async def wait_drawn(page: Page, canvas_id: str) -> None:
    await page.wait_for_function(
        "(id) => { const c = document.getElementById(id);"
        " return c && window.Chart && Chart.getChart(c); }", arg=canvas_id)


def assert_clean(watch: Watch) -> None:
    assert watch.errors == []
    assert watch.external == []


async def new_context(browser: Browser, origin: str) -> tuple[BrowserContext, Watch]:
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    return context, await watched(context, origin)


async def test_admin_key_sees_every_page_drawn_from_the_usage_log(
        browser: Browser, config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy, storage: dict[str, Any]) -> None:  # noqa: F811
    proxy = await start_proxy(dashboard_config(config_factory, fake_openai, storage=storage))
    origin = proxy.url("/").rstrip("/")
    alice_ids = await chats(origin, ALICE_KEY, 2)
    bob_ids = await chats(origin, BOB_KEY, 1)
    await proxy.flush()
    context, watch = await new_context(browser, origin)
    page = await context.new_page()

    await page.goto(origin + "/")  # / -> /dashboard -> the sign-in form
    assert page.url == origin + "/dashboard/login"
    await sign_in(page, page.url, ROOT_KEY)
    assert page.url == origin + "/dashboard"

    cookies = {c["name"]: c for c in await context.cookies()}
    session = cookies["anyrouter_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Strict"
    assert session["secure"] is False  # plain http here; see test_dashboard_session.py
    assert session["path"] == "/dashboard"
    assert time.time() + 11 * 3600 < session["expires"] <= time.time() + 12 * 3600 + 60
    assert ROOT_KEY not in session["value"] and "login" not in str(cookies.get("x", ""))

    await wait_drawn(page, "chart-requests")
    assert await page.text_content("#total-requests") == "3"
    assert await series_ink(page, "chart-requests") > 50  # bars, not just axes
    assert await ink(page, "chart-cost") > 0
    drawn = await page.evaluate(
        "() => Chart.getChart(document.getElementById('chart-requests')).data.datasets"
        ".reduce((n, d) => n + d.data.reduce((a, b) => a + b, 0), 0)")
    assert drawn == 3
    await page.select_option("select[name=group]", "key")
    await page.get_by_role("button", name="Show").click()
    await page.wait_for_function(
        "() => Chart.getChart(document.getElementById('chart-requests')).data.datasets"
        ".map(d => d.label).join(',') === 'alice,bob'")
    overview = await screenshot(page, "dashboard-overview")
    assert overview.stat().st_size > 10000

    await page.get_by_role("link", name="Generations").click()
    table = await page.text_content("#generations")
    assert table is not None and all(gen in table for gen in alice_ids + bob_ids)
    await screenshot(page, "dashboard-generations")
    await page.get_by_role("link", name=bob_ids[0]).click()
    assert await page.text_content("#gen-key") == "bob"
    attempts = await page.text_content("#attempts")
    assert attempts is not None and "openai" in attempts and "200" in attempts
    await screenshot(page, "dashboard-generation")

    await page.get_by_role("link", name="Providers").click()
    await wait_drawn(page, "chart-latency")
    assert await series_ink(page, "chart-latency") > 0
    await screenshot(page, "dashboard-providers")

    await page.get_by_role("link", name="Keys").click()
    for name in ("alice", "bob", "root"):
        assert await page.is_visible(f"#key-{name}")
    alice = await page.text_content("#key-alice") or ""
    assert "0.000042 used of 10.00, 9.999958 left" in alice  # 2 x (11 + 5 x 2) / 1M
    await screenshot(page, "dashboard-keys")

    await page.get_by_role("link", name="Config").click()
    html = await page.content()
    assert "X-Secret-Header" in html and "hush-123" not in html and PROVIDER_KEY not in html
    await screenshot(page, "dashboard-config")

    for key in (ROOT_KEY, ALICE_KEY, BOB_KEY):
        assert key not in html and key not in page.url
    await page.get_by_role("button", name="Sign out").click()
    assert page.url == origin + "/dashboard/login"
    await page.goto(origin + "/dashboard/keys")
    assert page.url == origin + "/dashboard/login"
    assert_clean(watch)
    await context.close()


async def test_a_key_sees_only_its_own_rows_even_by_url(
        browser: Browser, config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(dashboard_config(config_factory, fake_openai))
    origin = proxy.url("/").rstrip("/")
    alice_ids = await chats(origin, ALICE_KEY, 1)
    bob_ids = await chats(origin, BOB_KEY, 2)
    await proxy.flush()
    context, watch = await new_context(browser, origin)
    page = await context.new_page()
    await sign_in(page, origin + "/dashboard/login", ALICE_KEY)
    await wait_drawn(page, "chart-requests")
    assert await page.text_content("#total-requests") == "1"
    assert await page.query_selector("select[name=key]") is None

    await page.goto(origin + "/dashboard/generations?key=bob")
    table = await page.text_content("#generations") or ""
    assert alice_ids[0] in table and not any(gen in table for gen in bob_ids)
    assert_clean(watch)  # what follows is refused on purpose: the console says so
    response = await page.goto(origin + f"/dashboard/generations/{bob_ids[0]}")
    assert response is not None and response.status == 404
    assert bob_ids[0] not in (await page.text_content("#main") or "").replace(
        f"Generation {bob_ids[0]} does not exist", "")
    answer = await page.evaluate(
        "(base) => fetch(base + '/dashboard/api/chart?key=bob').then(r => r.status)", origin)
    assert answer == 403
    await page.goto(origin + "/dashboard/keys")
    assert await page.is_visible("#key-alice")
    assert not await page.is_visible("#key-bob")
    refused = "Failed to load resource: the server responded with a status of "
    assert watch.errors == [refused + "404 (Not Found)", refused + "403 (Forbidden)"]
    assert watch.external == []
    await context.close()


async def test_behind_nginx_under_a_path_prefix(
        browser: Browser, config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy, tmp_path: Path) -> None:
    proxy = await start_proxy(dashboard_config(
        config_factory, fake_openai, server={"trusted_proxies": ["127.0.0.1"]}))
    with running_nginx(tmp_path / "nginx", f"{proxy.server.host}:{proxy.server.port}",
                       prefix=True) as nginx:
        await wait_listening(nginx)
        origin = nginx.url("")
        gen_ids = await chats(origin + "/anyrouter", ALICE_KEY, 2)
        await proxy.flush()
        context, watch = await new_context(browser, origin)
        page = await context.new_page()
        await page.goto(origin + "/anyrouter/")
        assert page.url == origin + "/anyrouter/dashboard/login"
        await sign_in(page, page.url, ALICE_KEY)
        assert page.url == origin + "/anyrouter/dashboard"
        session = {c["name"]: c for c in await context.cookies()}["anyrouter_session"]
        assert session["path"] == "/anyrouter/dashboard"
        await wait_drawn(page, "chart-requests")
        assert await page.text_content("#total-requests") == "2"
        assert await series_ink(page, "chart-requests") > 50
        await page.get_by_role("link", name="Generations").click()
        assert page.url == origin + "/anyrouter/dashboard/generations"
        await page.get_by_role("link", name=gen_ids[0]).click()
        assert page.url == origin + f"/anyrouter/dashboard/generations/{gen_ids[0]}"
        assert await page.text_content("#gen-key") == "alice"
        await screenshot(page, "dashboard-generation-prefixed")
        await page.get_by_role("button", name="Sign out").click()
        assert page.url == origin + "/anyrouter/dashboard/login"
        assert_clean(watch)
        await context.close()


async def test_on_a_phone_with_the_keyboard_alone(
        browser: Browser, config_factory: ConfigFactory, fake_openai: FakeOpenAI,
        start_proxy: StartProxy) -> None:
    proxy = await start_proxy(dashboard_config(config_factory, fake_openai))
    origin = proxy.url("/").rstrip("/")
    await chats(origin, BOB_KEY, 1)
    await proxy.flush()
    context = await browser.new_context(viewport={"width": 390, "height": 844},
                                        is_mobile=True, has_touch=True)
    watch = await watched(context, origin)
    page = await context.new_page()
    await page.goto(origin + "/dashboard/login")
    await page.keyboard.type(BOB_KEY)  # the field has the focus
    await page.keyboard.press("Enter")
    await page.wait_for_selector("#signed-in-key")
    await page.keyboard.press("Tab")  # the first stop is the skip link
    assert await page.evaluate("() => document.activeElement.textContent") == "Skip to content"
    for path in ("", "/generations", "/providers", "/keys", "/config"):
        await page.goto(origin + "/dashboard" + path)
        overflow = await page.evaluate(
            "() => document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, path  # wide tables scroll inside their own box
    await page.goto(origin + "/dashboard")
    await wait_drawn(page, "chart-requests")
    await screenshot(page, "dashboard-overview-phone")
    assert_clean(watch)
    await context.close()
