"""Plain HTTP calls to a running proxy (aiohttp): status, headers and the decoded body."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.conftest import ALICE_KEY, Proxy, auth


async def post_json(proxy: Proxy, path: str, body: Any, key: str = ALICE_KEY,
                    headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url(path), json=body, headers={**auth(key), **(headers or {})}) as response:
        raw = await response.read()
        data = json.loads(raw) if response.content_type == "application/json" else raw
        return response.status, dict(response.headers), data


async def get_json(proxy: Proxy, path: str,
                   key: str = ALICE_KEY) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=auth(key)) as response:
        return response.status, dict(response.headers), await response.json()


async def generation(proxy: Proxy, gen_id: str, key: str = ALICE_KEY) -> dict[str, Any]:
    """The /generation data of `gen_id`, once its usage row is written."""
    await proxy.flush()
    status, _, body = await get_json(proxy, f"/api/v1/generation/{gen_id}", key)
    assert status == 200, body
    data: dict[str, Any] = body["data"]
    return data
