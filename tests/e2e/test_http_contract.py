"""The HTTP contract over raw HTTP: envelopes, headers, auth, read endpoints, timeouts, cancels."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from anyrouter_proxy.config.model import Config
from tests.conftest import ALICE_KEY, ConfigFactory, Proxy, auth, openai_provider
from tests.fakes import Behaviour, FakeOpenAI
from tests.served import raw_connect, read_until_closed

StartProxy = Callable[[Config], Awaitable[Proxy]]
CHAT = {"model": "openai/gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}


def assert_envelope(body: dict[str, Any], status_type: str, code: str) -> None:
    error = body["error"]
    assert set(error) >= {"message", "type", "code", "param"}
    assert (error["type"], error["code"]) == (status_type, code)
    assert isinstance(error["message"], str) and error["message"]


async def post(proxy: Proxy, path: str, body: Any = None, *, headers: dict[str, str] | None = None,
               data: bytes | None = None) -> tuple[int, dict[str, Any], Any]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url(path), json=body if data is None else None, data=data,
            headers=headers if headers is not None else auth()) as response:
        assert response.content_type == "application/json"
        return response.status, dict(response.headers), await response.json()


async def get(proxy: Proxy, path: str, headers: dict[str, str] | None = None
              ) -> tuple[int, dict[str, str], Any]:
    async with aiohttp.ClientSession() as session, session.get(
            proxy.url(path), headers=headers if headers is not None else auth()) as response:
        return response.status, dict(response.headers), await response.json()


@pytest.mark.parametrize(("path", "headers", "data", "status", "type_", "code"), [
    ("/api/v1/chat/completions", {}, b"{}", 401, "authentication_error", "missing_api_key"),
    ("/api/v1/chat/completions", {"Authorization": "Bearer nope"}, b"{}", 401,
     "authentication_error", "invalid_api_key"),
    ("/api/v1/chat/completions", None, b"{not json", 400, "invalid_request_error",
     "invalid_json"),
    ("/api/v1/chat/completions", None, b"[1, 2]", 400, "invalid_request_error",
     "invalid_json"),
    ("/api/v1/chat/completions", None, b"", 400, "invalid_request_error", "invalid_json"),
    ("/api/v1/chat/completions", None, b'{"model": 5, "messages": []}', 400,
     "invalid_request_error", "invalid_request"),
    ("/api/v1/chat/completions", None, b'{"model": "openai/gpt-4o-mini", "messages": "x"}', 400,
     "invalid_request_error", "invalid_request"),
    ("/api/v1/chat/completions", None, b'{"model": "nope", "messages": [{}]}', 404,
     "not_found_error", "model_not_found"),
    ("/api/v1/nothing-here", None, b"{}", 404, "not_found_error", "route_not_found"),
    ("/api/v2/chat/completions", None, b"{}", 404, "not_found_error", "route_not_found"),
])
async def test_error_envelopes(openai_proxy: Proxy, path: str, headers: dict[str, str] | None,
                               data: bytes, status: int, type_: str, code: str) -> None:
    base = auth() if headers is None else headers
    got, _, body = await post(openai_proxy, path, data=data,
                              headers={**base, "Content-Type": "application/json"})
    assert got == status
    assert_envelope(body, type_, code)


async def test_wrong_method_and_media_type(openai_proxy: Proxy) -> None:
    async with aiohttp.ClientSession() as session:
        async with session.get(openai_proxy.url("/api/v1/chat/completions"),
                               headers=auth()) as response:
            assert response.status == 405
            assert_envelope(await response.json(), "invalid_request_error", "method_not_allowed")
        async with session.post(openai_proxy.url("/api/v1/chat/completions"), data="a=b",
                                headers={**auth(), "Content-Type": "text/plain"}) as response:
            assert response.status == 415
            assert_envelope(await response.json(), "invalid_request_error",
                            "unsupported_media_type")


async def test_body_over_limit_is_413(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                      start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"m": {"routes": [{"provider": "openai", "model": "x"}]}},
        server={"max_body_bytes": 2048}))
    big = json.dumps({"model": "m", "messages": [{"role": "user", "content": "x" * 5000}]})
    status, headers, body = await post(proxy, "/api/v1/chat/completions", data=big.encode(),
                                       headers={**auth(), "Content-Type": "application/json"})
    assert status == 413
    assert_envelope(body, "invalid_request_error", "request_too_large")
    assert "X-RateLimit-Limit" in headers
    assert fake_openai.requests == []


async def test_x_api_key_and_trace_id(openai_proxy: Proxy) -> None:
    status, headers, _ = await post(openai_proxy, "/v1/chat/completions", CHAT,
                                    headers={"x-api-key": ALICE_KEY,
                                             "X-AnyRouter-Trace-Id": "trace-123"})
    assert status == 200
    assert headers["X-AnyRouter-Trace-Id"] == "trace-123"
    assert headers["X-RateLimit-Limit"] == "1000"
    assert int(headers["X-RateLimit-Remaining"]) == 999
    assert headers["X-AnyRouter-Generation-Id"].startswith("gen-")


async def test_trace_id_must_be_printable(openai_proxy: Proxy) -> None:
    status, _, body = await post(openai_proxy, "/api/v1/chat/completions", CHAT,
                                 headers={**auth(), "X-AnyRouter-Trace-Id": "x" * 500})
    assert status == 400
    assert body["error"]["param"] == "X-AnyRouter-Trace-Id"


async def test_models_count_and_percent_encoded_id(openai_proxy: Proxy) -> None:
    status, _, body = await get(openai_proxy, "/api/v1/models/count")
    assert (status, body) == (200, {"data": {"count": 2}})
    for path in ("/api/v1/models/openai/gpt-4o-mini", "/v1/models/openai%2Fgpt-4o-mini"):
        status, _, body = await get(openai_proxy, path)
        assert status == 200 and body["id"] == "openai/gpt-4o-mini"
    status, _, body = await get(openai_proxy, "/api/v1/models/openai/nope")
    assert status == 404 and body["error"]["code"] == "model_not_found"


async def test_providers_and_health(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                    start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai),
                   "anthropic": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1",
                                 "api_key": ""}},
        models={"m": {"routes": [{"provider": "openai", "model": "x"},
                                 {"provider": "anthropic", "model": "y"}]}}))
    status, _, body = await get(proxy, "/api/v1/providers")
    assert status == 200
    by_id = {p["id"]: p for p in body["data"]}
    assert by_id["openai"]["status"] == "ok" and by_id["openai"]["models"] == ["m"]
    assert by_id["anthropic"]["status"] == "no_credentials"
    assert "sk-upstream" not in json.dumps(body) and "api_key" not in json.dumps(body)
    status, _, body = await get(proxy, "/api/v1/health", headers={})
    assert status == 200
    assert body["providers"]["anthropic"]["status"] == "no_credentials"


async def test_upstream_server_error_is_502(openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=500), Behaviour(status=503))  # the retry fails too
    status, _, body = await post(openai_proxy, "/api/v1/chat/completions", CHAT)
    assert status == 502
    assert len(fake_openai.requests) == 2
    assert_envelope(body, "upstream_error", "upstream_error")
    assert body["error"]["metadata"]["provider_name"] == "openai"


async def test_upstream_credentials_rejected_is_502_naming_provider(
        openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=401))
    status, _, body = await post(openai_proxy, "/api/v1/chat/completions", CHAT)
    assert status == 502
    assert len(fake_openai.requests) == 1  # wrong credentials are not retried
    assert "openai" in body["error"]["message"]
    assert "sk-upstream" not in json.dumps(body)


async def test_upstream_non_json_is_invalid_response(openai_proxy: Proxy,
                                                     fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(status=200, body="<html>oops</html>"),
                     Behaviour(status=200, body="<html>oops</html>"))
    status, _, body = await post(openai_proxy, "/api/v1/chat/completions", CHAT)
    assert status == 502
    assert_envelope(body, "upstream_error", "upstream_invalid_response")


async def test_upstream_timeout_is_504(config_factory: ConfigFactory, fake_openai: FakeOpenAI,
                                       start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai,
                                             timeouts={"first_byte_s": 0.2})},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai", "model": "x"}]}}))
    fake_openai.then(Behaviour(delay_s=2), Behaviour(delay_s=2))
    status, _, body = await post(proxy, "/api/v1/chat/completions", CHAT)
    assert status == 504
    # Sent and not answered in time: not sent again (server.retry_slow_answers is off).
    assert body["error"]["metadata"]["attempts"] == ["openai"]
    assert len(fake_openai.requests) == 1
    assert_envelope(body, "timeout_error", "upstream_timeout")


async def test_client_disconnect_cancels_upstream(openai_proxy: Proxy,
                                                  fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(chunks=50, chunk_delay_s=0.1))
    async with aiohttp.ClientSession() as session:
        response = await session.post(openai_proxy.url("/api/v1/chat/completions"),
                                      json={**CHAT, "stream": True}, headers=auth())
        first = await response.content.readline()
        assert first.startswith(b"data: ")
        response.close()
    for _ in range(50):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake_openai.cancelled == 1
    assert fake_openai.completed == 0


async def test_client_disconnect_cancels_non_stream_upstream(openai_proxy: Proxy,
                                                             fake_openai: FakeOpenAI) -> None:
    fake_openai.then(Behaviour(delay_s=5))
    async with aiohttp.ClientSession() as session:
        with pytest.raises(asyncio.TimeoutError):
            async with asyncio.timeout(0.3):
                await session.post(openai_proxy.url("/api/v1/chat/completions"), json=CHAT,
                                   headers=auth())
    for _ in range(50):
        if fake_openai.cancelled:
            break
        await asyncio.sleep(0.02)
    assert fake_openai.cancelled == 1


async def read_sse(proxy: Proxy, body: dict[str, Any]) -> list[bytes]:
    async with aiohttp.ClientSession() as session, session.post(
            proxy.url("/api/v1/chat/completions"), json=body, headers=auth()) as response:
        assert response.status == 200
        raw = await response.read()
    return [block for block in raw.split(b"\n\n") if block]


async def test_keepalive_comments_before_first_event(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai", "model": "x"}]}},
        server={"sse_keepalive_interval_s": 0.05}))
    fake_openai.then(Behaviour(first_event_delay_s=0.3, chunks=3, chunk_delay_s=0.1))
    blocks = await read_sse(proxy, {**CHAT, "stream": True})
    comments = [i for i, b in enumerate(blocks) if b.startswith(b": ANYROUTER PROCESSING")]
    data = [i for i, b in enumerate(blocks) if b.startswith(b"data: ")]
    assert len(comments) >= 2
    assert max(comments) < min(data)  # never after the first event
    assert blocks[-1] == b"data: [DONE]"


async def test_keepalive_can_be_turned_off(config_factory: ConfigFactory,
                                           fake_openai: FakeOpenAI,
                                           start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai)},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai", "model": "x"}]}},
        server={"sse_keepalive": False, "sse_keepalive_interval_s": 0.05}))
    fake_openai.then(Behaviour(first_event_delay_s=0.3))
    blocks = await read_sse(proxy, {**CHAT, "stream": True})
    assert not any(b.startswith(b":") for b in blocks)


async def test_failure_after_keepalive_is_an_error_event(
        config_factory: ConfigFactory, fake_openai: FakeOpenAI, start_proxy: StartProxy) -> None:
    proxy = await start_proxy(config_factory(
        providers={"openai": openai_provider(fake_openai, timeouts={"first_byte_s": 0.3})},
        models={"openai/gpt-4o-mini": {"routes": [{"provider": "openai", "model": "x"}]}},
        server={"sse_keepalive_interval_s": 0.05}))
    fake_openai.then(Behaviour(first_event_delay_s=2), Behaviour(first_event_delay_s=2))
    blocks = await read_sse(proxy, {**CHAT, "stream": True})
    assert blocks[0].startswith(b": ANYROUTER PROCESSING")
    error = json.loads(blocks[-2].removeprefix(b"data: "))
    assert error["error"]["code"] == "upstream_timeout"
    assert blocks[-1] == b"data: [DONE]"


async def test_a_stream_to_an_http_1_0_client_is_its_events_until_the_close(
        openai_proxy: Proxy, fake_openai: FakeOpenAI) -> None:
    """No chunked framing for HTTP/1.0: the events as they are, the close ends the body;
    and an HTTP/1.1 client's chunked body decodes to the same events."""
    fake_openai.then(Behaviour(chunks=5, chunk_delay_s=0.01))
    fake_openai.then(Behaviour(chunks=5, chunk_delay_s=0.01))
    payload = json.dumps({**CHAT, "stream": True}).encode()
    bodies = {}
    for version in ("1.0", "1.1"):
        sock = await raw_connect(openai_proxy.server.port)
        try:
            await asyncio.get_running_loop().sock_sendall(sock, (
                f"POST /api/v1/chat/completions HTTP/{version}\r\nHost: proxy\r\n"
                f"Authorization: Bearer {ALICE_KEY}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
            ).encode() + payload)
            head, _, body = (await read_until_closed(sock, 10)).partition(b"\r\n\r\n")
        finally:
            sock.close()
        assert head.startswith(f"HTTP/{version} 200 ".encode())
        chunked = b"transfer-encoding: chunked" in head.lower()
        assert chunked is (version == "1.1")
        bodies[version] = dechunk(body) if chunked else body
    for body in bodies.values():
        events = [e for e in body.split(b"\n\n") if e]
        assert events[-1] == b"data: [DONE]"
        assert b"".join(json.loads(e[6:])["choices"][0]["delta"].get("content", "").encode()
                        for e in events[:-1] if b'"choices":[{' in e) == \
            b"tok0 tok1 tok2 tok3 tok4 "


def dechunk(body: bytes) -> bytes:
    out, rest = b"", body
    while True:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line, 16)
        if size == 0:
            assert rest == b"\r\n"
            return out
        out, rest = out + rest[:size], rest[size:]
        assert rest.startswith(b"\r\n")
        rest = rest[2:]
