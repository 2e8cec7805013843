"""Shared fixtures: config files written to tmp_path, fake upstreams on real sockets,
and the proxy itself served on 127.0.0.1 (pytest-aiohttp)."""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from aiohttp import web
from aiohttp.test_utils import TestServer

from anyrouter_proxy.config.loader import load_config
from anyrouter_proxy.config.model import Config
from anyrouter_proxy.server.app import create_app
from anyrouter_proxy.server.lane import open_lane
from anyrouter_proxy.server.protocol import guard_connections
from anyrouter_proxy.server.state import GATEWAY, STORE
from tests.fakes import FakeAnthropic, FakeOpenAI

ALICE_KEY = "sk-ar-test-alice-0123456789abcdef0123456789"
BOB_KEY = "sk-ar-test-bob-0123456789abcdef0123456789abcd"
PROVIDER_KEY = "sk-upstream-secret-provider-key-DO-NOT-LEAK"


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def auth(key: str = ALICE_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@dataclass
class Proxy:
    server: TestServer
    app: web.Application
    config: Config

    @property
    def base_url(self) -> str:
        return str(self.server.make_url("/api/v1"))

    def url(self, path: str) -> str:
        return str(self.server.make_url(path))

    async def flush(self) -> None:
        await self.app[STORE].flush()

    async def usage_row(self, column: str, value: str, within_s: float = 5) -> dict[str, Any]:
        """The one usage row whose `column` (id, trace_id) is `value`, read from the SQLite
        file once written (a client that left does not wait for it)."""
        assert column in ("id", "trace_id")
        deadline = time.monotonic() + within_s
        while True:
            await self.flush()
            db = sqlite3.connect(self.config.storage.sqlite_path)
            db.row_factory = sqlite3.Row
            try:
                rows = db.execute(f"SELECT * FROM generations WHERE {column} = ?",
                                  (value,)).fetchall()
            finally:
                db.close()
            if rows:
                [row] = rows
                return dict(row)
            assert time.monotonic() < deadline, f"no usage row with {column} {value}"
            await asyncio.sleep(0.05)

    @property
    def gateway(self) -> Any:
        return self.app[GATEWAY]


ConfigFactory = Callable[..., Config]


@pytest.fixture
def config_factory(tmp_path: Path) -> ConfigFactory:
    """Writes a routes.yaml (defaults + overrides) to tmp_path and loads it."""

    def make(providers: dict[str, Any] | None = None, models: dict[str, Any] | None = None,
             keys: dict[str, Any] | None = None, **sections: Any) -> Config:
        data: dict[str, Any] = {
            "version": 1,
            "storage": {"sqlite_path": str(tmp_path / "usage.db"), "flush_interval_s": 0.02},
            "providers": providers or {"demo": {"kind": "mock"}},
            "models": models or {"demo/echo": {"routes": [{"provider": "demo",
                                                            "model": "echo"}]}},
            "keys": keys if keys is not None else {
                "alice": {"key_sha256": sha256(ALICE_KEY)},
                "bob": {"key_sha256": sha256(BOB_KEY)},
            },
        }
        for name, value in sections.items():
            data[name] = {**data.get(name, {}), **value}
        path = tmp_path / "routes.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        return load_config(path, environ={})

    return make


async def _serve_fake(aiohttp_server: Any, name: str) -> FakeOpenAI:
    fake = FakeOpenAI(name)
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


@pytest.fixture
async def fake_openai(aiohttp_server: Any) -> FakeOpenAI:
    return await _serve_fake(aiohttp_server, "openai")


@pytest.fixture
async def fake_backup(aiohttp_server: Any) -> FakeOpenAI:
    return await _serve_fake(aiohttp_server, "backup")


@pytest.fixture
async def fake_anthropic(aiohttp_server: Any) -> FakeAnthropic:
    fake = FakeAnthropic("anthropic")
    server = await aiohttp_server(fake.app())
    fake.base_url = str(server.make_url("/v1"))  # type: ignore[attr-defined]
    return fake


def anthropic_provider(fake: FakeAnthropic, **extra: Any) -> dict[str, Any]:
    return {"kind": "anthropic", "base_url": fake.base_url,  # type: ignore[attr-defined]
            "api_key": PROVIDER_KEY, **extra}


def openai_provider(fake: FakeOpenAI, **extra: Any) -> dict[str, Any]:
    return {"kind": "openai", "base_url": fake.base_url,  # type: ignore[attr-defined]
            "api_key": PROVIDER_KEY, **extra}


@pytest.fixture
def start_proxy(aiohttp_server: Any) -> Callable[[Config], Awaitable[Proxy]]:
    async def start(config: Config) -> Proxy:
        app = create_app(config)
        server = await aiohttp_server(app)
        serve_connections(server, app)
        return Proxy(server, app, config)

    return start


def serve_connections(server: Any, app: web.Application) -> None:
    """Connections served as `anyrouter-proxy serve` serves them: the lean lane for the
    proxied routes, the connection guard with the config's keep-alive and write timeouts
    (a TestServer cancels handlers, as serve does)."""
    assert server.runner is not None and server.runner.server is not None
    guard_connections(server.runner.server, lambda: app[GATEWAY].config.server)
    open_lane(server.runner.server, app)


@pytest.fixture
async def openai_proxy(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                       start_proxy: Callable[[Config], Awaitable[Proxy]]) -> Proxy:
    """The proxy with one openai-kind provider (the fake) serving chat and embeddings."""
    config = config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={
            "openai/gpt-4o-mini": {
                "pricing": {"prompt": 0.15, "completion": 0.60, "cached_prompt": 0.075},
                "context_length": 128000,
                "routes": [{"provider": "openai", "model": "gpt-4o-mini"}]},
            "openai/text-embedding-3-small": {
                "pricing": {"prompt": 0.02},
                "routes": [{"provider": "openai", "model": "text-embedding-3-small"}]},
        })
    return await start_proxy(config)
