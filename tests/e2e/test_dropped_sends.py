"""An upstream that closes a reused keep-alive connection without answering: the request
goes out again on a new connection (the close may be an idle timeout racing it), and the
row shows both sends: the first as a `dropped` attempt whose worst case is the operator's
cost (the upstream may have worked on it), the key charged once, for the answer it got.
The upstream is written by hand on asyncio streams, to close exactly when it should."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from anyrouter_proxy.pricing import estimate_prompt_tokens
from tests.conftest import ALICE_KEY, PROVIDER_KEY, ConfigFactory, Proxy, auth, sha256

StartProxy = Callable[[Config], Awaitable[Proxy]]
PROMPT_PRICE, COMPLETION_PRICE = 1.0, 10.0  # USD per 1M tokens
MAX_TOKENS = 1000
USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


class DroppingUpstream:
    """Answers the first request of each connection (keep-alive); reads the second one
    and closes the connection `drop_after_s` later without a byte of answer."""

    def __init__(self, drop_after_s: float) -> None:
        self.drop_after_s = drop_after_s
        self.requests = 0
        self.server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        assert self.server is not None
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}/v1"

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            for nth in range(2):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                body = json.loads(await reader.readexactly(length))
                self.requests += 1
                if nth == 1:
                    await asyncio.sleep(self.drop_after_s)
                    return
                answer = json.dumps({
                    "id": "chatcmpl-raw", "object": "chat.completion", "created": 1,
                    "model": body["model"], "usage": USAGE,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": "hello"}}],
                }).encode()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%b" % (len(answer), answer))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.fixture
async def dropping() -> AsyncIterator[DroppingUpstream]:
    upstream = DroppingUpstream(drop_after_s=0.3)
    upstream.server = await asyncio.start_server(upstream.serve, "127.0.0.1", 0)
    yield upstream
    upstream.server.close()
    await upstream.server.wait_closed()


async def test_a_request_sent_twice_is_on_the_row_and_the_first_is_the_operators(
        config_factory: ConfigFactory, start_proxy: StartProxy,
        dropping: DroppingUpstream) -> None:
    proxy = await start_proxy(config_factory(
        providers={"raw": {"kind": "openai", "base_url": dropping.url,
                           "api_key": PROVIDER_KEY}},
        models={"raw/model": {"pricing": {"prompt": PROMPT_PRICE,
                                          "completion": COMPLETION_PRICE},
                              "routes": [{"provider": "raw", "model": "upstream-model"}]}},
        keys={"alice": {"key_sha256": sha256(ALICE_KEY), "credits": 10.0}}))
    body = {"model": "raw/model", "max_tokens": MAX_TOKENS,
            "messages": [{"role": "user", "content": "hi"}]}
    gen_ids = []
    async with aiohttp.ClientSession() as session:
        for _ in range(2):  # the first opens the connection, the second reuses it
            async with session.post(proxy.url("/api/v1/chat/completions"), json=body,
                                    headers=auth()) as response:
                assert response.status == 200, await response.text()
                gen_ids.append(response.headers["X-AnyRouter-Generation-Id"])
    assert dropping.requests == 3  # the second request went out twice
    first, second = [await proxy.usage_row("id", gen_id) for gen_id in gen_ids]
    assert [a["status"] for a in json.loads(first["attempts"])] == [200]
    assert first["operator_cost"] == 0
    assert [a["status"] for a in json.loads(second["attempts"])] == ["dropped", 200]
    charged = (USAGE["prompt_tokens"] * PROMPT_PRICE
               + USAGE["completion_tokens"] * COMPLETION_PRICE) / 1e6
    for row in (first, second):
        assert row["cost"] == pytest.approx(charged, abs=1e-12)
        assert row["usage_source"] == "provider"
    # The first send's worst case: its prompt estimate and every token it was allowed.
    worst = (estimate_prompt_tokens(body) * PROMPT_PRICE
             + MAX_TOKENS * COMPLETION_PRICE) / 1e6
    assert second["operator_cost"] == pytest.approx(worst, abs=1e-9)
