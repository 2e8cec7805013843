"""Mounting the dashboard on the app: GET / -> /dashboard, the pages, their JSON and the
static files (the page script, the style sheet and Chart.js, shipped in the package)."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from . import data, pages, signin
from .web import DASHBOARD, DashboardState

STATIC_MAX_AGE_S = 3600


def plain_usd(value: float | None, places: int = 8) -> str:
    """USD in plain decimal notation, trailing zeros dropped (never 8.7e-05)."""
    if value is None:
        return "-"
    text = f"{float(value):.{places}f}".rstrip("0")
    return text + "00" if text.endswith(".") else text


def setup_dashboard(app: web.Application) -> None:
    aiohttp_jinja2.setup(app, loader=jinja2.PackageLoader(__name__.rsplit(".", 1)[0]),
                         autoescape=jinja2.select_autoescape(default=True),
                         undefined=jinja2.StrictUndefined, filters={"usd": plain_usd})
    app[DASHBOARD] = DashboardState()
    router = app.router
    router.add_get("/", signin.root)
    router.add_get("/dashboard", pages.overview)
    router.add_get("/dashboard/", pages.overview)
    router.add_get("/dashboard/login", signin.login_form)
    router.add_post("/dashboard/login", signin.login)
    router.add_post("/dashboard/logout", signin.logout)
    router.add_get("/dashboard/generations", pages.generations)
    router.add_get("/dashboard/generations/{gen_id}", pages.generation)
    router.add_get("/dashboard/providers", pages.providers)
    router.add_get("/dashboard/keys", pages.keys)
    router.add_get("/dashboard/config", pages.config)
    router.add_get("/dashboard/api/chart", data.chart)
    router.add_get("/dashboard/api/providers", data.providers)
    router.add_get("/dashboard/api/keys", data.key_trends)
    router.add_get("/dashboard/static/{name}", static_file)


def _static_dir() -> Path:
    return Path(str(resources.files(__name__.rsplit(".", 1)[0]).joinpath("static")))


STATIC_FILES = {path.name: path for path in _static_dir().iterdir() if path.is_file()}
STATIC_TYPES = {".js": "text/javascript", ".css": "text/css", ".md": "text/plain"}


async def static_file(request: web.Request) -> web.StreamResponse:
    """The shipped files only, by name (nothing else on disk is reachable)."""
    path = STATIC_FILES.get(request.match_info["name"])
    if path is None:
        raise web.HTTPNotFound()
    return web.FileResponse(path, headers={
        "Content-Type": f"{STATIC_TYPES.get(path.suffix, 'application/octet-stream')}; "
                        "charset=utf-8",
        "Cache-Control": f"public, max-age={STATIC_MAX_AGE_S}",
        "X-Content-Type-Options": "nosniff"})
