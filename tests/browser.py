"""A real browser for the dashboard's tests: Debian's chromium (apt package `chromium`,
installed by .ci/run) driven by Playwright for Python. Playwright's own browser
download (`playwright install`) is never used.

`watched(context, origin)` records what a page must never do: console errors (CSP
violations included), uncaught exceptions, and requests to anywhere but `origin`
(aborted, so nothing leaves the machine).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.async_api import Browser, BrowserContext, Page, Route, async_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"


async def launched() -> AsyncIterator[Browser]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing: .ci/run installs it (apt-get install chromium)",
                    pytrace=False)
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield browser
        finally:
            await browser.close()


@dataclass
class Watch:
    origin: str
    errors: list[str] = field(default_factory=list)
    external: list[str] = field(default_factory=list)


async def watched(context: BrowserContext, origin: str) -> Watch:
    watch = Watch(origin)

    async def route(route: Route) -> None:
        url = route.request.url
        if url.startswith(origin + "/") or url == origin:
            await route.continue_()
        else:
            watch.external.append(url)
            await route.abort()

    await context.route("**/*", route)

    def on_page(page: Page) -> None:
        page.on("console", lambda m: watch.errors.append(m.text) if m.type == "error"
                else None)
        page.on("pageerror", lambda exc: watch.errors.append(str(exc)))

    context.on("page", on_page)
    return watch


async def screenshot(page: Page, name: str) -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


CANVAS_INK = """(id) => {
    const canvas = typeof id === 'string' ? document.getElementById(id) : id;
    if (!canvas || !canvas.width || !canvas.height) return 0;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let ink = 0;
    for (let i = 3; i < data.length; i += 4) if (data[i] > 0) ink++;
    return ink;
}"""


async def ink(page: Page, canvas_id: str) -> int:
    """How many pixels of the canvas are drawn on (0: blank)."""
    return int(await page.evaluate(CANVAS_INK, canvas_id))


COLOR_INK = """([id, rgb]) => {
    const canvas = document.getElementById(id);
    if (!canvas || !canvas.width || !canvas.height) return 0;
    const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let ink = 0;
    for (let i = 0; i < data.length; i += 4) {
        if (Math.abs(data[i] - rgb[0]) < 8 && Math.abs(data[i + 1] - rgb[1]) < 8
            && Math.abs(data[i + 2] - rgb[2]) < 8 && data[i + 3] > 200) ink++;
    }
    return ink;
}"""
FIRST_SERIES = (0x24, 0x56, 0xC7)  # dashboard.js's first colour


async def series_ink(page: Page, canvas_id: str, rgb: tuple[int, int, int] = FIRST_SERIES
                     ) -> int:
    """Pixels of the canvas in a series colour: bars or lines drawn from data (axes and
    grid lines are grey)."""
    return int(await page.evaluate(COLOR_INK, [canvas_id, list(rgb)]))
